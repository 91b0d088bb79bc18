"""QIDO-RS: searches answered from the index with the same matching as C-FIND and gRPC
(processors/index/matching.py, query/find.py)."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from strata.common.errors import DeadlineExceeded, Invalid, Unavailable
from strata.common.web import DICOM_JSON
from strata.processors.index.matching import ATTRIBUTES
from strata.query.dicomweb.base import Handlers, _error, _keyword, _timed_out
from strata.query.find import FindQuery, to_identifier
from strata.query.grpc_service import DEFAULT_KEYS


class Qido(Handlers):
    # ------------------------------------------------------------------ QIDO-RS
    async def qido(self, request: web.Request) -> web.Response:
        path = request.path.rstrip("/")
        level = (
            "IMAGE"
            if path.endswith("/instances")
            else "SERIES"
            if path.endswith("/series")
            else "STUDY"
        )
        match: dict[str, str] = {}
        include: list[str] = []
        limit, offset = self.d.limit, 0
        k: str | None
        try:
            for k, v in request.query.items():
                if k == "includefield":
                    include += [x.strip() for x in v.split(",") if x.strip()]
                elif k == "limit":
                    limit = max(0, min(int(v), self.d.limit))
                elif k == "offset":
                    offset = max(0, int(v))
                elif k == "fuzzymatching":
                    continue
                else:
                    kw = _keyword(k)
                    if kw is None:
                        raise Invalid(f"unknown attribute {k!r}")
                    match[kw] = v
        except ValueError:
            return _error(400, "limit and offset must be integers")
        except Invalid as exc:
            return _error(400, str(exc))
        for key, kw in (("study", "StudyInstanceUID"), ("series", "SeriesInstanceUID")):
            if key in request.match_info:
                match[kw] = request.match_info[key]
        if "all" in include:
            include = [k for k in ATTRIBUTES if ATTRIBUTES[k].level != "PATIENT" or True]
        wanted: list[str] = []
        for kw in DEFAULT_KEYS[level] + include + list(match):
            k = _keyword(kw)
            if k is None:
                return _error(400, f"unknown includefield {kw!r}")
            if k not in wanted:
                wanted.append(k)
        fq = FindQuery(level, [(kw, match.get(kw, "")) for kw in wanted], limit=offset + limit)

        def run() -> list[dict[str, Any]]:
            rows = self.d.index.search(fq, self.d.query_timeout, offset=offset, limit=limit)
            out = []
            for row in rows:
                ds = to_identifier(fq, row)
                del ds.QueryRetrieveLevel
                out.append(ds.to_json_dict())
            return out

        try:
            results = await self._run(run)
        except Invalid as exc:
            return _error(400, str(exc))
        except DeadlineExceeded:
            return _timed_out(self.d.query_timeout)
        except Unavailable as exc:
            return _error(503, str(exc))
        return web.Response(body=json.dumps(results).encode(), content_type=DICOM_JSON)
