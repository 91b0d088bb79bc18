"""The timers of the index node's faust app: the per-second lag check and stability
announcements (processors/stability.py), and the lifecycle loop (processors/lifecycle/), both
deciding only on an index that has applied the log (``Barrier``, ``caught_up``)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import faust
from confluent_kafka import Consumer
from prometheus_client import Gauge

from strata.common.kafka import Tails
from strata.common.settings import Settings
from strata.processors.index import checksum
from strata.processors.index.store import IndexStore
from strata.processors.lifecycle import LifecycleProcessor
from strata.processors.stability import StabilityEmitter

log = logging.getLogger(__name__)

LAG = Gauge("strata_index_lag_events", "Events in the log not yet applied to the index", ["topic"])
_LAG_NOW: dict[str, int] = {}  # per topic, as of the last lag check (every second)


def index_lag() -> int:
    """Events in the log not yet applied to the index, as of the last check (the SQL
    endpoint's analysts yield while it is high: query/sql_http.py)."""
    return sum(_LAG_NOW.values())


def caught_up(done: dict[str, dict[int, int]], ends: dict[str, dict[int, int]]) -> bool:
    """Has the index applied every record before ``ends`` (per topic and partition)?"""
    return all(
        done.get(t, {}).get(p, 0) >= end for t, parts in ends.items() for p, end in parts.items()
    )


class Barrier:
    """Log positions read at a time T; passed once the index has applied up to them.

    ``passed(done, ends, now)`` returns T when the index caught up with the ends recorded at T
    (and records the new ends for the next time), else None."""

    def __init__(self) -> None:
        self._ends: dict[str, dict[int, int]] | None = None
        self._at: datetime | None = None

    def passed(
        self, done: dict[str, dict[int, int]], ends: dict[str, dict[int, int]], now: datetime
    ) -> datetime | None:
        at = None
        if self._ends is None or caught_up(done, self._ends):
            at = self._at
            self._ends, self._at = ends, now
        return at


@dataclass
class TimerClients:
    """The timers' own clients, built by the process wiring (cli/serve.py): one Kafka consumer
    per loop asking the log's end offsets (one client for the per-second check, not one per
    tick), and the emitter of stability announcements. Geo-redundancy (docs/dr.md):
    ``decides()`` false while this site follows (cli/dr.py Role: no StudyStable, no lifecycle
    pass), and the ``*_tails`` that see past the transaction markers of a mirrored log."""

    lag_probe: Consumer
    lifecycle_probe: Consumer | None  # None: no lifecycle loop
    stability: StabilityEmitter
    decides: Callable[[], bool] = field(default=lambda: True)
    lag_tails: Tails | None = None  # None: not a DR site (no markers to see past)
    lifecycle_tails: Tails | None = None


def add_timers(
    app: faust.App,
    settings: Settings,
    index: IndexStore,
    clients: TimerClients,
    lifecycle: LifecycleProcessor | None = None,
) -> threading.Event:
    """The lag/stability timer and the lifecycle loop on ``app``; returns the event set once
    the index has caught up with the log (read by the health page)."""
    from strata.processors.replay import end_positions

    probe, emitter = clients.lag_probe, clients.stability
    decide, tails = clients.decides, clients.lag_tails
    topics = [settings.study_topic, settings.quarantine_topic]

    barrier = Barrier()
    # A replica behind a balancer reports ready only once it has applied the log up to an end
    # read after it started: a restarted replica must not answer searches from a stale index.
    caught_up_once = threading.Event()

    def lag_and_stability() -> None:
        now = datetime.now(UTC)
        ends = end_positions(settings, topics, probe)
        done = checksum.positions(index)
        if tails is not None:
            ends = tails.lowered(ends, done)
        for t, parts in ends.items():
            lag = sum(o - min(done.get(t, {}).get(p, 0), o) for p, o in parts.items())
            LAG.labels(t).set(lag)
            _LAG_NOW[t] = lag
        # Decide only on an index that has applied the whole log as it was at some time T (a
        # study that looks quiet may have newer instances, or its announcement, still in the
        # log), and judge quietness as of T. Requiring lag == 0 *now* instead would starve the
        # announcements under continuous ingest, where the log end keeps moving.
        as_of = barrier.passed(done, ends, now)
        if as_of is not None:
            caught_up_once.set()
        if as_of is not None and settings.index_decisions and decide():
            n = emitter.run_once(index, as_of)
            if n:
                log.info("announced %d stable studies", n)

    @app.timer(interval=1.0)
    async def stability_and_lag() -> None:
        try:
            await asyncio.to_thread(lag_and_stability)
        except Exception as exc:  # keep the timer alive; the next tick retries
            log.error("stability/lag check failed: %s", exc)

    if lifecycle is not None and clients.lifecycle_probe is not None and settings.index_decisions:
        lc_probe, lc_tails = clients.lifecycle_probe, clients.lifecycle_tails

        def lc_caught_up(ends: dict[str, dict[int, int]]) -> bool:
            done = checksum.positions(index)
            return caught_up(done, lc_tails.lowered(ends, done) if lc_tails else ends)

        def lifecycle_pass() -> None:
            # Only on a caught-up index, measured now: every event of the previous pass (and
            # every arrival so far) is applied, so the index is the record of what moved.
            # Waits (a bounded time) until the index has applied the log up to its end as read
            # now, rather than for a moment with no lag at all (rare under continuous ingest).
            if not decide():
                return
            ends = end_positions(settings, [settings.study_topic], lc_probe)
            deadline = time.monotonic() + 60
            while not lc_caught_up(ends):
                if time.monotonic() > deadline:
                    log.warning("lifecycle pass skipped: the index is more than 60 s behind")
                    return
                time.sleep(0.2)
            res = lifecycle.run_once(index)
            if res.moved or res.deleted or res.failed or res.settled or res.dropped:
                (log.warning if res.failed else log.info)(
                    "lifecycle pass: %d moved (%.1f MB), %d deleted, %d settled, %d dropped, "
                    "%d failed%s",
                    res.moved,
                    res.moved_bytes / 1e6,
                    res.deleted,
                    res.settled,
                    res.dropped,
                    res.failed,
                    f" (first: {res.errors[0]})" if res.errors else "",
                )

        @app.task
        async def lifecycle_loop() -> None:
            # A pause between passes (not a fixed-rate timer): a pass copying a large batch may
            # take longer than the interval, and passes never overlap.
            while True:
                await asyncio.sleep(lifecycle.policy.interval_seconds)
                try:
                    await asyncio.to_thread(lifecycle_pass)
                except Exception as exc:  # a tier or Kafka down: the next pass retries
                    log.error("lifecycle pass failed: %s", exc)

    return caught_up_once
