"""Index rows for tests: a projection.Batch of some events (what the live index agent and a
replay write, processors/agents.py and processors/replay.py), and the rows expected of a log,
derived the plain way: every event's ``rows_for``, concatenated per table in log order, with
``series`` and ``studies`` reduced to the row ReplacingMergeTree keeps per key (FINAL)."""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter
from typing import Any

from strata.processors.index.projection import Batch, Rows, rows_for
from strata.processors.index.schema import KEYS, VERSIONS
from strata.proto.strata.v1 import events_pb2 as pb


def batch_of(env: pb.Envelope, partition: int, offset: int, topic: str = "") -> Batch:
    """A Batch of one event."""
    return batch([(env, partition, offset, topic)])


def batch(events: Iterable[tuple[pb.Envelope, int, int, str]]) -> Batch:
    """A Batch of (event, partition, offset, topic), in that order."""
    b = Batch()
    for env, partition, offset, topic in events:
        b.add(env, partition, offset, topic)
    return b


def latest_per_key(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``table`` that ReplacingMergeTree keeps: per key (ORDER BY), the row with
    the highest version, the last one among equal versions."""
    key = itemgetter(*KEYS[table])
    version = VERSIONS[table]
    best: dict[Any, dict[str, Any]] = {}
    for r in rows:
        k = key(r)
        cur = best.get(k)
        if cur is None or r[version] >= cur[version]:
            best[k] = r
    return list(best.values())


def expected_rows(events: Iterable[tuple[pb.Envelope, int, int, str]]) -> Rows:
    """The rows a write of these events must insert: rows_for of each, per table in log order,
    series and studies reduced by latest_per_key."""
    out: Rows = {}
    for env, partition, offset, topic in events:
        for table, rs in rows_for(env, partition, offset, topic).items():
            out.setdefault(table, []).extend(rs)
    return {t: latest_per_key(t, rs) if t in ("series", "studies") else rs for t, rs in out.items()}
