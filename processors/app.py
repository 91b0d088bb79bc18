"""The faust application of the processors, and the index agent.

One agent per projection. The index agent reads the study-events topic in batches, derives rows
from each event and its log position (processors.index.projection) and writes them idempotently;
offsets are acknowledged only after the batch is written, so a crash redelivers, never skips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import faust
from google.protobuf.message import DecodeError

from common.events import decode
from common.settings import Settings
from processors.index.projection import merge, rows_for
from processors.index.store import IndexStore

log = logging.getLogger(__name__)


def create_app(settings: Settings, index: IndexStore) -> faust.App:
    app = faust.App(
        "strata-processors",
        broker=f"kafka://{settings.kafka_bootstrap}",
        datadir=str(settings.home / "faust"),
        store="memory://",
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_replication_factor=settings.replication_factor,
        broker_commit_interval=1.0,
        producer_acks=-1,
    )
    study_events = app.topic(
        settings.study_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(study_events, name="index")
    async def index_agent(stream: Any) -> None:
        async for events in stream.take_events(
            settings.index_batch_size, within=settings.index_batch_window
        ):
            batch = []
            for ev in events:
                try:
                    env = decode(ev.value)
                except DecodeError:
                    # A record that is not an Envelope cannot be indexed, ever: skip it loudly
                    # rather than wedge the projection (it stays in the log for inspection).
                    log.error(
                        "undecodable record at %s[%d]@%d skipped",
                        ev.message.topic,
                        ev.message.partition,
                        ev.message.offset,
                    )
                    continue
                batch.append(rows_for(env, ev.message.partition, ev.message.offset))
            rows = merge(batch)
            # chDB calls block: keep the event loop (heartbeats, fetches) responsive.
            await asyncio.to_thread(index.write, rows)

    return app


def run_worker(app: faust.App, on_started: Callable[[], None] | None = None) -> None:
    """Run the faust worker in this process until SIGTERM/SIGINT."""
    if on_started is not None:

        @app.task
        async def _started() -> None:
            on_started()

    worker = faust.Worker(app, loglevel="WARN", quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()
