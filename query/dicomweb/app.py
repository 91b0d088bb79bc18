"""The DICOMweb aiohttp application: the handler classes put together (``DicomWeb``), the
routes under the DICOMweb root, the middlewares (auth, CORS, errors) and a runner thread.
STOW-RS is an ingest interface (ingest/stow.py), routed here when the caller passes it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from aiohttp import web

from strata.query.dicomweb.base import WebDeps, _cors, _error, _errors
from strata.query.dicomweb.qido import Qido
from strata.query.dicomweb.rendered import Rendered


class DicomWeb(Qido, Rendered):
    """Every DICOMweb read handler: QIDO-RS (qido.py), WADO-RS (wado.py), rendered
    (rendered.py)."""


async def _read_only(request: web.Request) -> web.Response:
    return _error(503, "this node does not accept STOW-RS")


def create_app(
    deps: WebDeps,
    prefix: str = "/dicom-web",
    auth: Any = None,
    stow: Any = None,
) -> web.Application:
    """``auth``: a common.auth.Authorizer (bearer tokens required under the prefix), or None.
    ``stow``: the STOW-RS handler (ingest/stow.py ``Stow``, built by the process wiring);
    None: POST answers 503 (this node does not accept STOW-RS)."""
    from strata.common.auth import dicomweb_middleware, no_store

    dw = DicomWeb(deps)
    stow_handler = stow.stow if stow is not None else _read_only
    from strata.query.audit import web_middleware

    middlewares = [_errors, web_middleware(deps.index, prefix)]  # audit: inside auth
    if auth is not None:
        middlewares.insert(0, dicomweb_middleware(auth, prefix))
    if deps.cors_origins:
        middlewares.insert(0, _cors(deps.cors_origins))
    app = web.Application(middlewares=middlewares, client_max_size=4 * 1024**3)
    app.on_response_prepare.append(no_store(prefix))  # PHI: never in a shared or disk cache
    p = prefix.rstrip("/")
    s, se, i = "{study}", "{series}", "{instance}"
    r = app.router
    r.add_get(f"{p}/studies", dw.qido)
    r.add_get(f"{p}/series", dw.qido)
    r.add_get(f"{p}/instances", dw.qido)
    r.add_get(f"{p}/studies/{s}/series", dw.qido)
    r.add_get(f"{p}/studies/{s}/instances", dw.qido)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances", dw.qido)
    r.add_get(f"{p}/studies/{s}", dw.retrieve)
    r.add_get(f"{p}/studies/{s}/series/{se}", dw.retrieve)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}", dw.retrieve)
    r.add_get(f"{p}/studies/{s}/metadata", dw.metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/metadata", dw.metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/metadata", dw.metadata)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frames}}", dw.frames)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/bulkdata/{{tag}}", dw.bulkdata)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/rendered", dw.rendered)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frame}}/rendered", dw.rendered)
    r.add_post(f"{p}/studies", stow_handler)
    r.add_post(f"{p}/studies/{s}", stow_handler)

    async def unknown(request: web.Request) -> web.Response:
        return _error(404, "no such DICOMweb resource")

    # before the viewer's catch-all route (added later): an unknown DICOMweb path is a 404
    if p:
        r.add_route("*", p, unknown)
        r.add_route("*", f"{p}/{{tail:.*}}", unknown)
    return app


def serve_in_thread(app: web.Application, host: str, port: int) -> threading.Thread:
    """Run the aiohttp app on its own event loop in a daemon thread."""
    ready = threading.Event()

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, host, port).start())
        ready.set()
        loop.run_forever()

    t = threading.Thread(target=run, name="dicomweb", daemon=True)
    t.start()
    ready.wait(10)
    return t
