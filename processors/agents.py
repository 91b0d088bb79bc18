"""The stream agents of the index node's faust app: one index agent per source-of-truth topic
(the study topic, the quarantine topic). Each reads its topic in batches, derives rows from
each event and its log position (processors/index/projection.py, the projection) and writes
them idempotently through the index adapter; offsets are acknowledged only after the batch is
written, so a crash redelivers, never skips."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from google.protobuf.message import DecodeError
from prometheus_client import Gauge

from strata.common.events import decode
from strata.common.settings import Settings
from strata.processors.index.projection import Batch
from strata.processors.index.store import IndexStore

log = logging.getLogger(__name__)

APPLIED = Gauge("strata_index_events_applied", "Events applied to the index (this process)")

BUSY_BATCH = 8  # events in a batch that mean "under load" (see index_busy_gap)


def add_index_agents(app: faust.App, settings: Settings, index: IndexStore) -> dict[str, int]:
    """The index agents on ``app``; returns the live count of events applied (``{"n": ...}``,
    read by the health page)."""
    applied = {"n": 0}

    def index_agent_for(topic_name: str, name: str) -> None:
        topic = app.topic(
            topic_name,
            key_type=bytes,
            value_type=bytes,
            key_serializer="raw",
            value_serializer="raw",
        )

        @app.agent(topic, name=name)
        async def agent(stream: Any) -> None:
            async for events in stream.take_events(
                settings.index_batch_size, within=settings.index_batch_window
            ):
                batch = Batch()  # the rows replay writes too (processors/replay.py)
                for ev in events:
                    msg = ev.message
                    try:
                        env = decode(ev.value)
                    except DecodeError:
                        # Never indexable: skip loudly rather than wedge the projection (it
                        # stays in the log for inspection).
                        log.error(
                            "undecodable record at %s[%d]@%d skipped",
                            msg.topic,
                            msg.partition,
                            msg.offset,
                        )
                        continue
                    batch.add(env, msg.partition, msg.offset, msg.topic)
                # chDB calls block: keep the event loop (heartbeats, fetches) responsive.
                t0 = time.monotonic()
                await asyncio.to_thread(index.write, batch)
                applied["n"] += len(batch)
                APPLIED.set(applied["n"])
                # Every write makes a part per table that ClickHouse then merges: under load
                # (a full-ish batch), let the next batch gather in the consumer's buffer
                # instead of writing many small ones. A trickle (a modality sending one
                # image at a time) never waits here, so its latency stays the batch window.
                if len(events) >= BUSY_BATCH:
                    spent = time.monotonic() - t0
                    await asyncio.sleep(max(0.0, settings.index_busy_gap - spent))

    index_agent_for(settings.study_topic, "index")
    index_agent_for(settings.quarantine_topic, "index-quarantine")
    return applied
