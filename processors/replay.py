"""Replay: rebuild index state from the log, from offset 0, into a fresh store.

Used by ``strata replay`` (into a new database) and by ``strata verify`` (which compares the
rebuilt index with the live one by checksums). The code path that writes rows is the live one
(projection.Batch, i.e. the rows of rows_for, + IndexStore.write): a replay exercises exactly
what the agent does.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaException, TopicPartition
from google.protobuf.message import DecodeError

from common.errors import Unavailable
from common.events import decode
from processors.index.projection import Batch
from processors.index.store import IndexStore

Positions = dict[str, dict[int, int]]


@dataclass
class ReplayResult:
    events: int
    seconds: float
    positions: Positions

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def end_positions(bootstrap: str, topics: list[str], probe: Consumer | None = None) -> Positions:
    """Log end offsets per topic partition. A long-lived caller passes its own ``probe``
    consumer (the index node asks every second: a new client per tick is wasted work)."""
    c = probe or Consumer({"bootstrap.servers": bootstrap, "group.id": "strata-replay-probe"})
    try:
        md = c.list_topics(timeout=30)
        out: Positions = {}
        for t in topics:
            if t not in md.topics:
                continue
            for p in md.topics[t].partitions:
                _, hi = c.get_watermark_offsets(TopicPartition(t, p), timeout=30)
                out.setdefault(t, {})[p] = hi
        return out
    except KafkaException as exc:
        raise Unavailable(f"Kafka unreachable at {bootstrap}: {exc}") from exc
    finally:
        if probe is None:
            c.close()


def replay(
    bootstrap: str,
    index: IndexStore,
    until: Positions,
    start: Positions | None = None,
    batch: int = 20000,
    on_progress: Callable[[int], None] | None = None,
) -> ReplayResult:
    """Apply every event in [start, until) of each topic partition to ``index``."""
    start = start or {}
    todo = {
        (t, p): (start.get(t, {}).get(p, 0), end)
        for t, parts in until.items()
        for p, end in parts.items()
        if start.get(t, {}).get(p, 0) < end
    }
    t0 = time.monotonic()
    if not todo:
        return ReplayResult(0, 0.0, until)
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"strata-replay-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
        }
    )
    n = 0
    # One writer thread: batch k is inserted (chDB releases the GIL) while batch k+1 is
    # consumed and projected. At most one write is in flight and writes stay in log order.
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="replay-writer")
    inflight: tuple[Future[int], int] | None = None

    def settle() -> None:
        nonlocal inflight, n
        if inflight is not None:
            fut, count = inflight
            inflight = None
            fut.result()  # a failed write raises here
            n += count
            if on_progress:
                on_progress(count)

    try:
        c.assign([TopicPartition(t, p, lo) for (t, p), (lo, _hi) in todo.items()])
        remaining = {k for k in todo}
        pending = Batch()
        while remaining:
            msgs = c.consume(num_messages=batch, timeout=1.0)
            for m in msgs:
                if m.error():
                    continue
                topic, part, offset = m.topic(), m.partition(), m.offset()
                key = (topic, part)
                if key not in remaining:
                    continue
                hi = todo[key][1]
                if offset >= hi:
                    remaining.discard(key)
                    continue
                try:
                    env = decode(m.value())
                except DecodeError:
                    continue  # the live agent skips such records too
                pending.add(env, part, offset, topic)
                if offset + 1 >= hi:
                    remaining.discard(key)
            if pending:
                settle()
                inflight = (writer.submit(index.write, pending), len(pending))
                pending = Batch()
        settle()
    finally:
        writer.shutdown(wait=True)
        c.close()
    return ReplayResult(n, time.monotonic() - t0, until)
