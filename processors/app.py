"""The faust application of the processors: the index agents, the stability timer, the
lifecycle timer, and the index node's HTTP endpoints (/healthz, /metrics, /positions,
/checksums, /holds, /storage/locations).

One agent per projection. The index agents read the source-of-truth topics in batches, derive
rows from each event and its log position (processors.index.projection) and write them
idempotently; offsets are acknowledged only after the batch is written, so a crash redelivers,
never skips.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

import faust
from google.protobuf.message import DecodeError
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest

from common import audit, kafka
from common.auth import Authorizer, admin_middleware
from common.events import decode
from common.settings import Settings
from processors.index import audit as audit_index
from processors.index import checksum, routing
from processors.index.port import Index
from processors.index.projection import Batch
from processors.index.store import IndexStore
from processors.lifecycle import LifecycleProcessor

log = logging.getLogger(__name__)

LAG = Gauge("strata_index_lag_events", "Events in the log not yet applied to the index", ["topic"])
APPLIED = Gauge("strata_index_events_applied", "Events applied to the index (this process)")
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


BUSY_BATCH = 8  # events in a batch that mean "under load" (see index_busy_gap)


def create_app(
    settings: Settings,
    index: IndexStore,
    lifecycle: LifecycleProcessor | None = None,
    authz: Authorizer | None = None,
) -> faust.App:
    app = faust.App(
        settings.index_group,
        datadir=str(settings.node_home / "faust"),
        store="memory://",
        web_enabled=True,
        web_bind=settings.bind_host,
        web_port=settings.index_http_port,
        web_host=settings.bind_host,
        **kafka.faust_settings(settings),  # the broker, commits, session, acks (common/kafka.py)
        # Admin endpoints: loopback clients only with auth off, the admin scope with auth on
        # (common.auth); the health and metrics probes stay open.
        web_application_options={
            "middlewares": [admin_middleware(authz, open_paths=("/healthz", "/metrics"))]
        },
    )
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
    audit_index.attach(app, settings, index)  # the audit topic -> its table, /audit

    from processors.replay import end_positions

    # one client for the per-second lag check, not one per tick
    probe = kafka.consumer(settings, "strata-index-probe", "index-lag")
    from processors.stability import StabilityEmitter

    emitter = StabilityEmitter(
        settings,
        settings.study_topic,
        settings.node_name,
        settings.study_quiet_seconds,
    )
    topics = [settings.study_topic, settings.quarantine_topic]

    barrier = Barrier()
    # A replica behind a balancer reports ready only once it has applied the log up to an end
    # read after it started: a restarted replica must not answer searches from a stale index.
    caught_up_once = threading.Event()

    def lag_and_stability() -> None:
        now = datetime.now(UTC)
        ends = end_positions(settings, topics, probe)
        done = checksum.positions(index)
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
        if as_of is not None and settings.index_decisions:
            n = emitter.run_once(index, as_of)
            if n:
                log.info("announced %d stable studies", n)

    @app.timer(interval=1.0)
    async def stability_and_lag() -> None:
        try:
            await asyncio.to_thread(lag_and_stability)
        except Exception as exc:  # keep the timer alive; the next tick retries
            log.error("stability/lag check failed: %s", exc)

    if lifecycle is not None and settings.index_decisions:
        lc_probe = kafka.consumer(settings, "strata-lifecycle-probe", "lifecycle-lag")

        def lifecycle_pass() -> None:
            # Only on a caught-up index, measured now: every event of the previous pass (and
            # every arrival so far) is applied, so the index is the record of what moved.
            # Waits (a bounded time) until the index has applied the log up to its end as read
            # now, rather than for a moment with no lag at all (rare under continuous ingest).
            ends = end_positions(settings, [settings.study_topic], lc_probe)
            deadline = time.monotonic() + 60
            while not caught_up(checksum.positions(index), ends):
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

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        if settings.node_dir and not caught_up_once.is_set():
            return web.json({"status": "catching-up", "applied": applied["n"]}, status=503)
        spooled = audit.spool_files(settings)  # audit events not yet in Kafka (common/audit.py)
        return web.json({"status": "ok", "applied": applied["n"], "audit_spool_files": spooled})

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; Prometheus reads plain text as 0.0.4
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    @app.page("/positions")
    async def positions(web: Any, request: Any) -> Any:
        return web.json(await asyncio.to_thread(checksum.positions, index))

    @app.page("/checksums")
    async def checksums(web: Any, request: Any) -> Any:
        def snapshot() -> dict[str, Any]:
            with index.write_lock:  # one consistent log position: never half a batch
                return checksum.snapshot(index)

        return web.json(await asyncio.to_thread(snapshot))

    @app.page("/routes")
    async def routes(web: Any, request: Any) -> Any:
        q = request.query
        state = q.get("state", "")
        if state and state not in routing.STATES:
            return web.json({"error": f"state must be one of {routing.STATES}"}, status=400)
        rows = await asyncio.to_thread(
            routing.list_routes, index, state, q.get("study", ""), int(q.get("limit", "100"))
        )
        return web.json({"routes": rows})

    @app.page("/routes/{route_id}")
    async def route(web: Any, request: Any, route_id: str) -> Any:
        detail = await asyncio.to_thread(routing.route_detail, index, route_id)
        if detail is None:
            return web.json({"error": f"no route {route_id}"}, status=404)
        return web.json(detail)

    add_pit_page(app, settings, index)

    @app.page("/holds")
    async def holds(web: Any, request: Any) -> Any:
        """Active legal holds: [{study_uid, hold_id, reason, placed_by, placed_at}]."""
        study = request.query.get("study", "")
        return web.json(await asyncio.to_thread(active_holds, index, study))

    @app.page("/storage/locations")
    async def locations(web: Any, request: Any) -> Any:
        """Where each indexed instance's bytes are, for ``strata storage verify``: pages in
        key order (``after`` = last "study/series/sop" seen), or a random ``sample``."""
        q = request.query
        rows = await asyncio.to_thread(
            storage_locations,
            index,
            q.get("after", ""),
            min(int(q.get("limit", "5000")), 50000),
            int(q.get("sample", "0")),
        )
        return web.json(rows)

    return app


def add_pit_page(app: faust.App, settings: Settings, index: IndexStore) -> None:
    """POST /replay?until=TIME|OFFSET&database=asof_x: the index as of then, rebuilt into a
    database of this engine that the SQL endpoint reads (processors/pit.py)."""
    from processors import pit

    class Replay(faust.web.View):
        async def post(self, request: Any) -> Any:
            from common.errors import Invalid, StrataError

            q = request.query
            try:
                done = await asyncio.to_thread(
                    pit.rebuild,
                    settings.index_dsn,
                    index.database,
                    settings,
                    [settings.study_topic, settings.quarantine_topic],
                    q.get("database", ""),
                    q.get("until", ""),
                )
            except Invalid as exc:
                return self.json({"error": str(exc)}, status=400)
            except StrataError as exc:
                return self.json({"error": str(exc)}, status=503)
            return self.json(done)

    app.page("/replay")(Replay)


def active_holds(index: Index, study: str = "") -> list[dict[str, Any]]:
    keys = ("study_uid", "hold_id", "reason", "placed_by", "placed_at")
    return [dict(zip(keys, r, strict=True)) for r in index.active_holds(study)]


def storage_locations(index: Index, after: str, limit: int, sample: int) -> list[list[Any]]:
    """[study, series, sop, sha256, size, tier, key] of current instances."""
    st, se, sop = (after.split("/") + ["", "", ""])[:3]
    rows = index.storage_locations((st, se, sop), limit, sample)
    return [[str(v) if not isinstance(v, int) else v for v in r] for r in rows]


def run_worker(app: faust.App, on_started: Any = None) -> None:
    """Run the faust worker in this process until SIGTERM/SIGINT."""
    if on_started is not None:

        @app.task
        async def _started() -> None:
            on_started()

    make_worker(app).execute_from_commandline()


def make_worker(app: faust.App) -> faust.Worker:
    worker = faust.Worker(app, loglevel="WARN", quiet=True, redirect_stdouts=False)
    # No terminal spinner: faust would hang it on the root logger at DEBUG, and every debug
    # call of aiokafka/faust/mode (several per fetch) would then build a log record that no
    # handler prints: ~9% of the index node's CPU under ingest load (py-spy).
    worker.spinner = None
    return worker
