"""What every DICOMweb handler shares: the dependencies (``WebDeps``), the handlers' base
class (``Handlers``: the deps and a worker pool for blocking index and tier reads), media
type constants, argument parsing (``parse_frames``, ``_accept_param``) and the
error and CORS middlewares. The handlers: qido.py, wado.py, rendered.py; STOW-RS is
ingest/stow.py; the application and its routes: app.py."""

from __future__ import annotations

import asyncio
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from strata.archive.keys import UnsafeKey, check_key
from strata.common.errors import Invalid, StrataError
from strata.common.web import error as _error
from strata.processors.index.port import Index
from strata.query.retrieve import Located, ObjectSource

log = logging.getLogger(__name__)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
NATIVE = {"1.2.840.10008.1.2", EXPLICIT_LE, "1.2.840.10008.1.2.2"}
# Media types of compressed frames (PS3.18 Table 8.7.3-5)
FRAME_MEDIA = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.5": "image/x-dicom-rle",
}


@dataclass
class WebDeps:
    index: Index  # the index port (processors/index/port.py)
    source: ObjectSource
    cors_origins: str = ""
    limit: int = 10000
    query_timeout: float = 0.0  # s, the server's limit on one search (0 = none)
    max_frames: int = 1000  # WADO-RS: most frame numbers in one request


def _keyword(name: str) -> str | None:
    from pydicom.datadict import keyword_for_tag, tag_for_keyword

    if tag_for_keyword(name) is not None:
        return name
    try:
        kw = keyword_for_tag(int(name, 16))
        return kw or None
    except ValueError:
        return None


def _timed_out(seconds: float) -> web.Response:
    """503 with a JSON body: the search outlived the server's time limit (retry narrower)."""
    resp = _error(503, f"the search exceeded the server's time limit ({seconds:g} s)")
    resp.headers["Retry-After"] = "1"
    return resp


class Handlers:
    """The base of the DICOMweb handler classes: the deps and the pool running their blocking
    work (index queries, tier reads) off the event loop."""

    def __init__(self, deps: WebDeps) -> None:
        self.d = deps
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dicomweb")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class _NotAcceptable(Exception):
    pass



_FRAME_NUMBER = re.compile(r"[1-9][0-9]{0,9}")


def parse_frames(text: str, most: int) -> list[int]:
    """The frame numbers of a WADO-RS frame list ('1,3,5'): at most ``most`` of them, each a
    1-based decimal number (ASCII digits, no sign, space or '_'). Invalid otherwise (400);
    a number past the instance's last frame is the caller's 404."""
    pieces = text.split(",")
    if len(pieces) > most:
        raise Invalid(f"at most {most} frame numbers in one request")
    if not all(_FRAME_NUMBER.fullmatch(p) for p in pieces):
        raise Invalid("frame numbers are 1-based decimal integers, comma-separated")
    return [int(p) for p in pieces]


def _servable(locs: list[Located]) -> list[Located]:
    """The located objects whose recorded storage key is safe to resolve (archive.keys)."""
    out = []
    for loc in locs:
        try:
            check_key(loc.storage_key)
        except UnsafeKey:
            log.error("WADO-RS: object of %s has an unsafe storage key: not served", loc.sop_uid)
            continue
        out.append(loc)
    return out


def _header_safe(value: str) -> str:
    """``value`` for an HTTP header: printable ASCII only (no CR/LF: no header injection)."""
    return "".join(c for c in value if " " <= c <= "~")


def _accept_param(accept: str, name: str) -> str | None:
    for piece in accept.replace(",", ";").split(";"):
        k, _, v = piece.strip().partition("=")
        if k.strip().lower() == name:
            return v.strip().strip('"')
    return None


@web.middleware
async def _errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except StrataError as exc:
        return _error(400 if isinstance(exc, Invalid) else 503, str(exc))


def _cors(origins: str) -> Any:
    allowed = {o.strip() for o in origins.split(",") if o.strip()}

    @web.middleware
    async def cors(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin", "")
        ok = bool(allowed) and ("*" in allowed or origin in allowed)
        if request.method == "OPTIONS" and ok:
            resp: web.StreamResponse = web.Response(status=204)
        else:
            resp = await handler(request)
        if ok and not resp.prepared:
            resp.headers["Access-Control-Allow-Origin"] = "*" if "*" in allowed else origin
            resp.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
            resp.headers["Access-Control-Allow-Headers"] = (
                "Accept, Authorization, Content-Type, If-None-Match"
            )
            resp.headers["Access-Control-Expose-Headers"] = "ETag, Content-Type, WWW-Authenticate"
        return resp

    return cors
