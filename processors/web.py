"""The HTTP pages of the index node's faust app: /healthz, /metrics, /positions, /checksums,
/routes, /replay (point-in-time rebuilds), /holds and /storage/locations. Admin pages are
guarded by the app's middleware (common/auth.py ``admin_middleware``, processors/app.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from strata.common import audit
from strata.common.settings import Settings
from strata.processors.index import checksum, routing
from strata.processors.index.port import Index
from strata.processors.index.store import IndexStore


def add_pages(
    app: faust.App,
    settings: Settings,
    index: IndexStore,
    applied: dict[str, int],
    caught_up_once: threading.Event,
) -> None:
    """The index node's pages on ``app``; ``applied`` and ``caught_up_once`` (from
    processors/agents.py and processors/timers.py) answer /healthz."""

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        if settings.node_dir and not caught_up_once.is_set():
            return web.json({"status": "catching-up", "applied": applied["n"]}, status=503)
        spooled = audit.spool_files(settings)  # audit events not yet in Kafka (common/audit.py)
        body: dict[str, Any] = {"status": "ok", "applied": applied["n"],
                                "audit_spool_files": spooled}  # fmt: skip
        if settings.dr_site and settings.dr_mode == "sync":
            # STOW-RS instances this node answered A730 (the second site did not confirm in
            # time): the same counter as the ingest node's, counted in this process
            body["dr_unconfirmed_stow"] = (
                REGISTRY.get_sample_value("strata_ingest_dr_unconfirmed_total") or 0.0
            )
        return web.json(body)

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


def add_pit_page(app: faust.App, settings: Settings, index: IndexStore) -> None:
    """POST /replay?until=TIME|OFFSET&database=asof_x: the index as of then, rebuilt into a
    database of this engine that the SQL endpoint reads (processors/pit.py)."""
    from strata.processors import pit

    class Replay(faust.web.View):
        async def post(self, request: Any) -> Any:
            from strata.common.errors import Invalid, StrataError

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
