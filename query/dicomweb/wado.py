"""WADO-RS: the objects (multipart/related; type="application/dicom") in Explicit VR Little
Endian unless the Accept header's transfer-syntax parameter asks for another one (PS3.18
8.7.3.5.2; ``*``: as stored, unchanged), transcoded by ``archive.transcode``; metadata from the
index (no object opened) and frames (uncompressed application/octet-stream unless a compressed
media type is asked for). Instance resources carry an ETag (the object's sha256) and answer
If-None-Match with 304. Rendered images: rendered.py."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import uuid
from collections import deque
from collections.abc import AsyncIterator
from itertools import islice

from aiohttp import web

from strata.archive import transcode
from strata.common.dicom import BULK_MARK
from strata.common.errors import DeadlineExceeded, Invalid, NotFound, Unavailable
from strata.common.web import DICOM_JSON
from strata.query.dicomweb.base import (
    EXPLICIT_LE,
    FRAME_MEDIA,
    NATIVE,
    Handlers,
    _accept_param,
    _error,
    _header_safe,
    _NotAcceptable,
    _servable,
    _timed_out,
    parse_frames,
)
from strata.query.retrieve import Located, locate

log = logging.getLogger(__name__)


# An element marked as bulk data in a stored header (common/dicom.py BULK_MARK): its tag and VR.
_BULK_ELEMENT = re.compile(r'"([0-9A-F]{8})":\{"vr":"([A-Z]{2})",' + re.escape(BULK_MARK) + r"\}")
_TAG = re.compile(r"[0-9A-F]{8}")


async def _write_part(resp: web.StreamResponse, boundary: str, ctype: str, data: bytes) -> None:
    """One part of a multipart/related response (``ctype`` already header-safe)."""
    await resp.write(
        f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
    )
    await resp.write(data)
    await resp.write(b"\r\n")


async def _end_parts(resp: web.StreamResponse, boundary: str) -> None:
    await resp.write(f"--{boundary}--\r\n".encode())
    await resp.write_eof()


def _bulk_uri(instance_url: str, m: re.Match[str]) -> str:
    """A marked element with the URI of its bulk data resource."""
    uri = json.dumps(f"{instance_url}/bulkdata/{m[1]}")
    return '"' + m[1] + '":{"vr":"' + m[2] + '","BulkDataURI":' + uri + "}"

class Wado(Handlers):
    # ------------------------------------------------------------------ WADO-RS
    def _locate(self, request: web.Request) -> list[Located]:
        mi = request.match_info
        keys = {"StudyInstanceUID": mi["study"]}
        level = "STUDY"
        if "series" in mi:
            keys["SeriesInstanceUID"] = mi["series"]
            level = "SERIES"
        if "instance" in mi:
            keys["SOPInstanceUID"] = mi["instance"]
            level = "IMAGE"
        locs = locate(self.d.index, level, keys)
        if not locs:
            raise NotFound("no such " + level.lower())
        return locs

    async def retrieve(self, request: web.Request) -> web.StreamResponse:
        accept = request.headers.get("Accept", "")
        if accept and not any(
            a in accept for a in ("application/dicom", "multipart/related", "*/*")
        ):
            return _error(
                406, 'this resource is served as multipart/related; type="application/dicom"'
            )
        wanted_ts = _accept_param(accept, "transfer-syntax") or EXPLICIT_LE
        try:
            locs = await self._run(self._locate, request)
        except NotFound as exc:
            return _error(404, str(exc))
        except (Invalid, Unavailable) as exc:
            return _error(400 if isinstance(exc, Invalid) else 503, str(exc))
        locs = _servable(locs)
        if not locs:
            return _error(404, "no retrievable object")
        if wanted_ts != "*" and not all(
            transcode.can_produce(loc.transfer_syntax_uid, wanted_ts) for loc in locs
        ):
            return _error(406, f"not every object can be served in transfer syntax {wanted_ts}")
        if "instance" in request.match_info:
            etag = f'"{_header_safe(locs[0].sha256)}"'
            if request.headers.get("If-None-Match") == etag:
                return web.Response(status=304, headers={"ETag": etag})
        boundary = uuid.uuid4().hex
        resp = web.StreamResponse(
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            }
        )
        if "instance" in request.match_info:
            resp.headers["ETag"] = f'"{_header_safe(locs[0].sha256)}"'
            resp.headers["Cache-Control"] = "private, max-age=3600"
        await resp.prepare(request)
        async for loc, part in self._parts(locs, wanted_ts):
            try:
                data, ts = await part
            except (NotFound, Unavailable, transcode.TranscodeError) as exc:
                log.error("WADO-RS: %s: %s", loc.sop_uid, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a codec failure: this part is left out
                log.error("WADO-RS: %s cannot be transcoded: %s", loc.sop_uid, exc)
                continue
            ctype = f"application/dicom; transfer-syntax={_header_safe(ts)}"
            await _write_part(resp, boundary, ctype, data)
        await _end_parts(resp, boundary)
        return resp

    async def _object_bytes(self, loc: Located, wanted_ts: str) -> tuple[bytes, str]:
        """The object as a Part 10 file in ``wanted_ts`` (``*``: as stored, unchanged); a
        transcoded one is produced in the transcoding process pool, off the event loop and
        this process's threads."""
        path = await self._run(self.d.source.local_path, loc)
        if wanted_ts in ("*", loc.transfer_syntax_uid):
            return await self._run(path.read_bytes), loc.transfer_syntax_uid
        job = transcode.pool().submit(transcode.part10_bytes, str(path), wanted_ts)
        return await asyncio.wrap_future(job), wanted_ts

    async def _parts(
        self, locs: list[Located], wanted_ts: str
    ) -> AsyncIterator[tuple[Located, asyncio.Task[tuple[bytes, str]]]]:
        """Each object with the task producing its part, in order; up to twice the transcoding
        pool's workers are produced ahead of the one being written, so a study's objects
        transcode in parallel (as stored: the next file is read while one is written)."""
        ahead = 1 if wanted_ts == "*" else 2 * transcode.workers()
        todo = iter(locs)
        window: deque[tuple[Located, asyncio.Task[tuple[bytes, str]]]] = deque()
        try:
            for loc in islice(todo, ahead):
                window.append((loc, asyncio.ensure_future(self._object_bytes(loc, wanted_ts))))
            while window:
                loc, task = window.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    task_n = asyncio.ensure_future(self._object_bytes(nxt, wanted_ts))
                    window.append((nxt, task_n))
                yield loc, task
        finally:
            for _, task in window:  # the client went away: nothing more is produced
                task.cancel()

    async def metadata(self, request: web.Request) -> web.Response:
        mi = request.match_info

        def run() -> list[tuple[str, str, str, str]]:
            return self.d.index.instance_headers(
                mi["study"], mi.get("series", ""), mi.get("instance", ""), self.d.query_timeout
            )

        try:
            rows = await self._run(run)
        except DeadlineExceeded:
            return _timed_out(self.d.query_timeout)
        except Unavailable as exc:
            return _error(503, str(exc))
        if not rows:
            return _error(404, "not found")
        # Splice the stored JSON text (no re-encoding): add the transfer syntax, which viewers
        # need to decode frames, as (0002,0010). A value left out of the event's header at
        # ingest (too large: a top-level element marked with common/dicom.py BULK_MARK) gets
        # the URI of its bulk data resource (``bulkdata`` below).
        url = str(request.url.with_query(None))
        root = url[: url.rindex("/studies/")]
        parts = []
        for header, ts, series, sop in rows:
            inner = header.strip()[1:-1]
            if BULK_MARK in inner:
                where_uri = f"{root}/studies/{mi['study']}/series/{series}/instances/{sop}"
                inner = _BULK_ELEMENT.sub(functools.partial(_bulk_uri, where_uri), inner)
            ts_elem = f'"00020010":{{"vr":"UI","Value":[{json.dumps(ts)}]}}'
            parts.append("{" + ts_elem + ("," + inner if inner else "") + "}")
        return web.Response(
            body=("[" + ",".join(parts) + "]").encode(),
            content_type=DICOM_JSON,
            headers={"Cache-Control": "private, max-age=60"},
        )

    async def bulkdata(self, request: web.Request) -> web.StreamResponse:
        """The value of one top-level element of an instance (the BulkDataURI that metadata
        gives an element too large for the stored header), as ``multipart/related;
        type="application/octet-stream"`` with one part: the value's bytes as stored."""
        tag = request.match_info["tag"].upper()
        if not _TAG.fullmatch(tag):
            return _error(400, "a bulk data tag is 8 hexadecimal digits")
        if tag == "7FE00010":
            return _error(404, "pixel data is served by the frames resource")
        accept = request.headers.get("Accept", "")
        if accept and not any(
            m in accept for m in ("multipart/related", "application/octet-stream", "*/*")
        ):
            return _error(406, 'bulk data is multipart/related; type="application/octet-stream"')
        try:
            [loc] = await self._run(self._locate, request)
            data = await self._run(self._element_value, loc, int(tag, 16))
        except NotFound as exc:
            return _error(404, str(exc))
        boundary = uuid.uuid4().hex
        resp = web.StreamResponse(
            headers={
                "Content-Type": 'multipart/related; type="application/octet-stream"; '
                f"boundary={boundary}",
                "ETag": f'"{_header_safe(loc.sha256)}-{tag}"',
                "Cache-Control": "private, max-age=3600",
            },
        )
        await resp.prepare(request)
        await _write_part(resp, boundary, "application/octet-stream", data)
        await _end_parts(resp, boundary)
        return resp

    def _element_value(self, loc: Located, tag: int) -> bytes:
        import pydicom

        path = self.d.source.local_path(loc)
        ds = pydicom.dcmread(str(path), specific_tags=[tag], defer_size=None)
        if tag not in ds._dict:
            raise NotFound(f"the instance has no element {tag:08X}")
        raw = ds.get_item(tag)
        value = getattr(raw, "value", None)
        if isinstance(value, bytes | bytearray):
            return bytes(value)
        raise NotFound(f"element {tag:08X} has no value served as bulk data")

    async def frames(self, request: web.Request) -> web.StreamResponse:
        try:
            numbers = parse_frames(request.match_info["frames"], self.d.max_frames)
        except Invalid as exc:
            return _error(400, str(exc))
        accept = request.headers.get("Accept", "")
        wanted_ts = _accept_param(accept, "transfer-syntax")
        try:
            [loc] = await self._run(self._locate, request)
            parts, media = await self._run(self._frames, loc, numbers, wanted_ts, accept)
        except NotFound as exc:
            return _error(404, str(exc))
        except Invalid as exc:
            return _error(400, str(exc))
        except _NotAcceptable as exc:
            return _error(406, str(exc))
        boundary = uuid.uuid4().hex
        resp = web.StreamResponse(
            headers={
                "Content-Type": f'multipart/related; type="{media.split(";")[0]}"; '
                f"boundary={boundary}",
                "ETag": f'"{_header_safe(loc.sha256)}-{request.match_info["frames"]}"',
                "Cache-Control": "private, max-age=3600",
            }
        )
        await resp.prepare(request)
        for data in parts:
            await _write_part(resp, boundary, _header_safe(media), data)
        await _end_parts(resp, boundary)
        return resp

    def _frames(
        self, loc: Located, numbers: list[int], wanted_ts: str | None, accept: str
    ) -> tuple[list[bytes], str]:
        import pydicom
        from pydicom.encaps import generate_frames

        ds: pydicom.Dataset = pydicom.dcmread(str(self.d.source.local_path(loc)))
        if "PixelData" not in ds:
            raise NotFound("the instance has no pixel data")
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if max(numbers) > n:
            raise NotFound(f"the instance has {n} frames")
        ts = loc.transfer_syntax_uid
        compressed = ts not in NATIVE
        stored_ok = wanted_ts in ("*", ts) or (
            compressed and FRAME_MEDIA.get(ts, "") in accept and wanted_ts is None
        )
        if wanted_ts in transcode.encodable() and not stored_ok:
            # a compressed media type in another (lossless) syntax than the stored one
            ds = transcode.decoded(self.d.source.local_path(loc), wanted_ts)
            frames = list(generate_frames(ds.PixelData, number_of_frames=n))
            return [
                frames[i - 1] for i in numbers
            ], f"{FRAME_MEDIA[wanted_ts]}; transfer-syntax={wanted_ts}"
        if compressed and stored_ok:
            frames = list(generate_frames(ds.PixelData, number_of_frames=n))
            return [
                frames[i - 1] for i in numbers
            ], f"{FRAME_MEDIA.get(ts, 'application/octet-stream')}; transfer-syntax={ts}"
        if (
            accept
            and "application/octet-stream" not in accept
            and "*/*" not in accept
            and (
                "multipart/related" in accept
                and "octet-stream" not in accept
                and not compressed
                and wanted_ts not in (None, "*", EXPLICIT_LE)
            )
        ):
            raise _NotAcceptable("frames are available as application/octet-stream")
        # native (uncompressed) little endian frames
        if compressed:
            ds = transcode.decoded(self.d.source.local_path(loc), EXPLICIT_LE)
        arr_bytes = ds.PixelData
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
        size = rows * cols * spp * bits // 8
        out = [bytes(arr_bytes[(i - 1) * size : i * size]) for i in numbers]
        return out, f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
