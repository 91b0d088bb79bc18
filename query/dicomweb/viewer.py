"""Viewer hosting: the OHIF web viewer's static files (fetched by stack/viewer.py) served by
the DICOMweb application at "/" with an app-config.js pointing at this archive."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aiohttp import web


def add_viewer(app: web.Application, dist: Path, prefix: str, oidc: Any = None) -> None:
    """Serve the OHIF viewer's static files at "/" with our app-config.js; unknown paths
    (the viewer's client-side routes, e.g. /viewer?StudyInstanceUIDs=...) get index.html."""
    from strata.stack.viewer import app_config

    config = app_config(prefix.rstrip("/"), oidc).encode()  # oidc: the viewer's login
    index = (dist / "index.html").read_bytes()

    async def config_js(request: web.Request) -> web.Response:
        return web.Response(body=config, content_type="application/javascript")

    async def spa(request: web.Request) -> web.StreamResponse:
        rel = request.match_info.get("path", "")
        f = (dist / rel).resolve()
        if rel and f.is_file() and dist.resolve() in f.parents:
            return web.FileResponse(f)
        return web.Response(body=index, content_type="text/html")

    app.router.add_get("/app-config.js", config_js)
    app.router.add_get("/{path:.*}", spa)
