"""Study stability: announce StudyStable when a study has had no new instance for a quiet period.

A decision, not a projection: it reads the index (when did the last instance of each study
arrive, which burst was already announced) and emits an event. Its state is in the log itself:
every StudyStable names the offset of the last instance it covers and is projected into
``study_stability``, so a study is announced once per burst of arrivals, a restart does not
announce it again, and a replay (a pure projection) never emits anything.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from strata.common import kafka
from strata.common.events import envelope, timestamp
from strata.processors.index.port import Index
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


def due(
    index: Index, quiet_seconds: float, now: datetime
) -> list[tuple[str, int, int, datetime, str]]:
    """Studies quiet for ``quiet_seconds`` whose latest burst was not announced yet."""
    return index.unannounced_quiet_studies(now - timedelta(seconds=quiet_seconds))


class StabilityEmitter:
    def __init__(
        self, bootstrap: kafka.Cluster, topic: str, node: str, quiet_seconds: float
    ) -> None:
        self.topic = topic
        self.node = node
        self.quiet = quiet_seconds
        self._producer = kafka.producer(bootstrap, "decisions", "stability")

    def run_once(self, index: Index, now: datetime | None = None) -> int:
        """Announce every due study; returns how many were announced (acknowledged by Kafka)."""
        now = now or datetime.now(UTC)
        studies = due(index, self.quiet, now)
        failures: list[str] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                failures.append(str(err))

        for study, partition, offset, last, event_id in studies:
            ev = pb.StudyStable(
                study_instance_uid=study,
                through_partition=partition,
                through_offset=offset,
                through_event_id=event_id,
                quiet_seconds=int(self.quiet),
                last_arrival_at=timestamp(last if last.tzinfo else last.replace(tzinfo=UTC)),
            )
            env = envelope(
                ev, study_uid=study, service="processors", node=self.node, occurred_at=now
            )
            self._producer.produce(
                self.topic,
                key=study.encode(),
                value=env.SerializeToString(),
                on_delivery=on_delivery,
            )
        if studies:
            self._producer.flush(30)
            if failures:
                log.error("StudyStable not delivered: %s", failures[:3])
        return len(studies) - len(failures)
