"""Point-in-time state: the index as it was at a log offset or a time, rebuilt by the live
index node into a database of its own engine, next to the live one, where the SQL endpoint
(query/sql_http.py) reads it (``strata replay --until TIME|OFFSET``, docs/analytics.md).

The rebuild runs in the index node because only one process can open the chDB data path: a
rebuild elsewhere (``strata replay`` without --until writes a separate chDB directory) could
not be read by the node's SQL endpoint. It reads the log with processors.replay, bounded:
- OFFSET (an integer N): every partition of every source-of-truth topic up to offset N
  (exclusive), or its end if shorter;
- TIME (ISO 8601, UTC if no zone): every record whose Kafka timestamp is before TIME (the
  first offset at or after TIME, found with offsets_for_times, bounds each partition).
"""

from __future__ import annotations

import re
import threading
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException, TopicPartition

from strata.common import kafka
from strata.common.errors import Invalid, Unavailable
from strata.processors.index.store import IndexStore
from strata.processors.replay import Positions, ReplayResult, end_positions, replay

DATABASE = re.compile(r"^asof_[a-z0-9_]{1,60}$")
_lock = threading.Lock()  # one rebuild at a time


def parse_until(until: str) -> int | datetime:
    text = until.strip()
    if text.isdigit():
        return int(text)
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(f"--until {until!r}: an offset (integer) or an ISO 8601 time") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def bound(bootstrap: kafka.Cluster, topics: list[str], until: int | datetime) -> Positions:
    """Per topic partition, the offset before which records belong to the state at ``until``."""
    ends = end_positions(bootstrap, topics)
    if isinstance(until, int):
        return {t: {p: min(until, end) for p, end in parts.items()} for t, parts in ends.items()}
    ms = int(until.timestamp() * 1000)
    c = kafka.consumer(bootstrap, "strata-pit-probe", "pit")
    try:
        asked = [TopicPartition(t, p, ms) for t, parts in ends.items() for p in parts]
        found = c.offsets_for_times(asked, timeout=30) if asked else []
    except KafkaException as exc:
        raise Unavailable(f"Kafka unreachable at {kafka.bootstrap_of(bootstrap)}: {exc}") from exc
    finally:
        c.close()
    out: Positions = {}
    for tp in found:
        end = ends[tp.topic][tp.partition]
        out.setdefault(tp.topic, {})[tp.partition] = end if tp.offset < 0 else min(tp.offset, end)
    return out


def rebuild(
    dsn: str,
    live_database: str,
    bootstrap: kafka.Cluster,
    topics: list[str],
    database: str,
    until: str,
) -> dict[str, Any]:
    """Rebuild the index as of ``until`` into ``database`` (dropped first) of the live
    index's engine (``dsn``: the same chDB path, opened again by this process, so a handle of
    its own: the live index's writes and queries do not wait for the rebuild's inserts)."""
    if not DATABASE.match(database) or database == live_database:
        raise Invalid(f"database {database!r}: 'asof_' then lower-case letters, digits, _")
    at = parse_until(until)
    if not _lock.acquire(blocking=False):
        raise Unavailable("a point-in-time rebuild is already running")
    try:
        positions = bound(bootstrap, topics, at)
        target = IndexStore(dsn, database)
        try:
            target.drop_database()
            target.migrate()
            res: ReplayResult = replay(
                bootstrap, target, positions, batch=5000, in_process=True, arrow=False
            )
        finally:
            target.close()
        return {
            "database": database,
            "until": until,
            "positions": {t: {str(p): o for p, o in ps.items()} for t, ps in positions.items()},
            "events": res.events,
            "seconds": round(res.seconds, 3),
        }
    finally:
        _lock.release()
