"""Reading the archive's event log directly (a plain Kafka consumer, as an auditor would)."""

from __future__ import annotations

from strata.common.events import decode
from strata.common.kafka import read_log
from strata.common.settings import Settings
from strata.proto.strata.v1 import events_pb2


def read_all(settings: Settings, topic: str | None = None) -> list[events_pb2.Envelope]:
    """Every event of the study topic up to its current end, in per-partition order."""
    return [decode(v) for v in read_log(settings.kafka_bootstrap, topic or settings.study_topic)]


def of_type(events: list[events_pb2.Envelope], kind: str) -> list[object]:
    """Payloads of one kind, e.g. of_type(evs, "route_attempted")."""
    return [getattr(e, kind) for e in events if e.WhichOneof("payload") == kind]
