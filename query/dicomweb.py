"""DICOMweb (PS3.18) for web viewers: QIDO-RS, WADO-RS and STOW-RS, on aiohttp.

- QIDO-RS answers from the index with the same matching as C-FIND and gRPC.
- WADO-RS serves the objects (multipart/related; type="application/dicom") in Explicit VR
  Little Endian unless the Accept header's transfer-syntax parameter asks for another one
  (PS3.18 8.7.3.5.2; ``*``: as stored, unchanged), transcoded by ``archive.transcode``;
  metadata from the index (no object opened), frames (uncompressed application/octet-stream
  unless a compressed media type is asked for) and rendered images. An unknown path under the
  DICOMweb root answers 404 with a JSON body.
- STOW-RS goes through the very same store feature as C-STORE: same validation, same
  durability contract (object fsync'd + event in the fsync'd outbox before 200), same events,
  same quarantine.
Instance resources carry an ETag (the object's sha256) and answer If-None-Match with 304.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import threading
import uuid
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from archive import transcode
from archive.keys import UnsafeKey, check_key
from common import audit
from common.dicom import BULK_MARK
from common.errors import DeadlineExceeded, Invalid, NotFound, StrataError, Unavailable
from processors.index.matching import ATTRIBUTES
from processors.index.port import Index
from query.find import FindQuery, to_identifier
from query.grpc_service import DEFAULT_KEYS
from query.retrieve import Located, ObjectSource, locate

log = logging.getLogger(__name__)

DICOM_JSON = "application/dicom+json"
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
    store: Any  # ingest.store.StoreService for STOW (None: read-only)
    incoming: Path | None
    cors_origins: str = ""
    limit: int = 10000
    query_timeout: float = 0.0  # s, the server's limit on one search (0 = none)
    max_part_bytes: int = 4 * 1024**3  # STOW-RS: largest part
    max_parts: int = 1000  # STOW-RS: most parts in one request
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


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _timed_out(seconds: float) -> web.Response:
    """503 with a JSON body: the search outlived the server's time limit (retry narrower)."""
    resp = _error(503, f"the search exceeded the server's time limit ({seconds:g} s)")
    resp.headers["Retry-After"] = "1"
    return resp


class DicomWeb:
    def __init__(self, deps: WebDeps) -> None:
        self.d = deps
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="dicomweb")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

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
            await resp.write(
                f"--{boundary}\r\nContent-Type: application/dicom; "
                f"transfer-syntax={_header_safe(ts)}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
            )
            await resp.write(data)
            await resp.write(b"\r\n")
        await resp.write(f"--{boundary}--\r\n".encode())
        await resp.write_eof()
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
        # need to decode frames, as (0002,0010). Values left out of the event's header at
        # ingest (too large, common/dicom.py BULK_MARK) point at the instance's retrieve URL,
        # which serves the object holding them.
        url = str(request.url.with_query(None))
        root = url[: url.rindex("/studies/")]
        parts = []
        for header, ts, series, sop in rows:
            inner = header.strip()[1:-1]
            if BULK_MARK in inner:
                where_uri = f"{root}/studies/{mi['study']}/series/{series}/instances/{sop}"
                inner = inner.replace(BULK_MARK, f'"BulkDataURI":{json.dumps(where_uri)}')
            ts_elem = f'"00020010":{{"vr":"UI","Value":[{json.dumps(ts)}]}}'
            parts.append("{" + ts_elem + ("," + inner if inner else "") + "}")
        return web.Response(
            body=("[" + ",".join(parts) + "]").encode(),
            content_type=DICOM_JSON,
            headers={"Cache-Control": "private, max-age=60"},
        )

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
            await resp.write(
                f"--{boundary}\r\nContent-Type: {_header_safe(media)}\r\n"
                f"Content-Length: {len(data)}\r\n\r\n".encode()
            )
            await resp.write(data)
            await resp.write(b"\r\n")
        await resp.write(f"--{boundary}--\r\n".encode())
        await resp.write_eof()
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

    async def rendered(self, request: web.Request) -> web.Response:
        accept = request.headers.get("Accept", "image/jpeg")
        fmt = "PNG" if "image/png" in accept else "JPEG"
        try:
            (frame,) = parse_frames(request.match_info.get("frame", "1"), 1)
        except Invalid as exc:
            return _error(400, str(exc))
        try:
            [loc] = await self._run(self._locate, request)
            data = await self._run(self._render, loc, frame, fmt)
        except NotFound as exc:
            return _error(404, str(exc))
        return web.Response(
            body=data,
            content_type=f"image/{fmt.lower()}",
            headers={
                "ETag": f'"{_header_safe(loc.sha256)}-r{frame}{fmt}"',
                "Cache-Control": "private, max-age=3600",
            },
        )

    def _render(self, loc: Located, frame: int, fmt: str) -> bytes:
        import numpy as np
        import pydicom
        from PIL import Image

        ds = pydicom.dcmread(str(self.d.source.local_path(loc)))
        if "PixelData" not in ds:
            raise NotFound("the instance has no pixel data")
        arr = ds.pixel_array
        n = int(ds.get("NumberOfFrames", 1) or 1)
        if frame > n:
            raise NotFound(f"the instance has {n} frames")
        if n > 1:
            arr = arr[frame - 1]
        if ds.get("PhotometricInterpretation", "") in ("RGB", "YBR_FULL", "YBR_FULL_422"):
            from pydicom.pixels import convert_color_space

            if ds.PhotometricInterpretation != "RGB":
                arr = convert_color_space(arr, ds.PhotometricInterpretation, "RGB")
            img = Image.fromarray(arr.astype(np.uint8), "RGB")
        else:
            from pydicom.pixels import apply_modality_lut, apply_voi_lut

            a = apply_modality_lut(arr, ds).astype(np.float64)
            if "WindowCenter" in ds:
                a = apply_voi_lut(a, ds).astype(np.float64)
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
            if ds.get("PhotometricInterpretation") == "MONOCHROME1":
                a = 255.0 - a
            img = Image.fromarray(a.astype(np.uint8), "L")
        buf = io.BytesIO()
        img.save(buf, format=fmt)
        return buf.getvalue()

    # ------------------------------------------------------------------ STOW-RS
    async def stow(self, request: web.Request) -> web.Response:
        if self.d.store is None or self.d.incoming is None:
            return _error(503, "this node does not accept STOW-RS")
        ctype = request.headers.get("Content-Type", "")
        if not ctype.startswith("multipart/related") or "application/dicom" not in ctype:
            return _error(415, 'expected multipart/related; type="application/dicom"')
        study = request.match_info.get("study")
        try:
            reader = await request.multipart()
        except (ValueError, AssertionError):  # the parser's text may quote the request
            return _error(400, "malformed multipart request")
        referenced: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        peer = f"{request.remote}:0"
        parts = 0
        while True:
            try:
                part = await reader.next()
            except (ValueError, BadHttpMessage) as exc:  # a malformed boundary or part header
                return self._stow_response(referenced, failed, 400, f"malformed part: {exc}")
            if part is None:
                break
            parts += 1
            if parts > self.d.max_parts:
                return self._stow_response(
                    referenced, failed, 413, f"more than {self.d.max_parts} parts in one request"
                )
            if not isinstance(part, BodyPartReader):  # a nested multipart: not an object
                failed.append(_stow_item("", "", 0xC000, "a nested multipart is not an object"))
                continue
            tmp = self.d.incoming / f"stow-{uuid.uuid4().hex}.dcm"
            try:
                size = 0
                with open(tmp, "wb") as f:
                    while chunk := await part.read_chunk(1 << 20):
                        size += len(chunk)
                        if size > self.d.max_part_bytes:
                            break
                        f.write(chunk)
            except (ValueError, BadHttpMessage) as exc:  # a malformed body
                tmp.unlink(missing_ok=True)
                return self._stow_response(referenced, failed, 400, f"malformed part: {exc}")
            except BaseException:  # the client gone mid-upload, a cancelled handler
                tmp.unlink(missing_ok=True)
                raise
            if size > self.d.max_part_bytes:
                tmp.unlink(missing_ok=True)
                return self._stow_response(
                    referenced, failed, 413, f"a part is larger than {self.d.max_part_bytes} bytes"
                )
            res = await self._run(audit.in_context(self._store_one), tmp, study, peer)
            (referenced if res[0] else failed).append(res[1])
        if not referenced and not failed:
            return _error(400, "no DICOM part in the request")
        status = 200 if not failed else (202 if referenced else 409)
        return self._stow_response(referenced, failed, status)

    @staticmethod
    def _stow_response(
        referenced: list[dict], failed: list[dict], status: int, refusal: str = ""
    ) -> web.Response:
        """The STOW-RS response dataset; a ``refusal`` (413/400: the rest of the request was
        not read) is one more failed item (A700 for a limit) and closes the connection, so
        the unread rest of a huge body is not drained into this node for long."""
        body: dict[str, Any] = {}
        if referenced:
            body["00081199"] = {"vr": "SQ", "Value": referenced}
        if refusal:
            failed = [*failed, _stow_item("", "", 0xA700 if status == 413 else 0xC000, refusal)]
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        resp = web.Response(body=json.dumps(body).encode(), status=status, content_type=DICOM_JSON)
        if refusal:
            resp.force_close()
        return resp

    def _store_one(self, path: Path, study: str | None, peer: str) -> tuple[bool, dict]:
        try:
            return self._store_part(path, study, peer)
        finally:
            path.unlink(missing_ok=True)  # moved into the tier or quarantine when kept

    def _store_part(self, path: Path, study: str | None, peer: str) -> tuple[bool, dict]:
        from pydicom.filereader import read_file_meta_info

        from ingest.store import Received

        item = _stow_item
        try:
            meta = read_file_meta_info(str(path))
            cls = str(meta.get("MediaStorageSOPClassUID", ""))
            sop = str(meta.get("MediaStorageSOPInstanceUID", ""))
            ts = str(meta.get("TransferSyntaxUID", ""))
        except Exception:
            return False, item("", "", 0xC000, "not a DICOM Part 10 object")
        # Every UID of the meta header is written back later into JSON and HTTP headers
        # (metadata, multipart parts): only UID syntax is accepted (PS3.5 9.1).
        for name, uid in (("TransferSyntaxUID", ts), ("SOPClassUID", cls), ("SOPInstanceUID", sop)):
            if not is_uid(uid):
                return False, item(
                    cls if is_uid(cls) else "",
                    sop if is_uid(sop) else "",
                    0xC000,
                    f"{name} of the meta header is not a valid UID",
                )
        if study is not None:
            import pydicom

            try:
                got = str(
                    pydicom.dcmread(
                        str(path), stop_before_pixels=True, specific_tags=["StudyInstanceUID"]
                    ).get("StudyInstanceUID", "")
                )
            except Exception:
                got = ""
            if got != study:
                return False, item(cls, sop, 0xA900, "StudyInstanceUID differs from the URL")
        out = self.d.store.store(
            Received(
                path=path,
                sop_class_uid=cls,
                sop_instance_uid=sop,
                transfer_syntax_uid=ts,
                calling_ae="STOW-RS",
                called_ae="DICOMWEB",
                peer_address=peer,
                via="stow",
            )
        )
        audit.note_stored(out)  # into the request's audit record (per study)
        if out.ok:
            return True, item(cls, sop)
        return False, item(cls, sop, out.status, out.comment)


class _NotAcceptable(Exception):
    pass


_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")  # leading zeros tolerated, as archive.keys does


def is_uid(value: str) -> bool:
    """Whether ``value`` has UID syntax: dot-separated numbers of at most 64 characters
    (PS3.5 9.1)."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


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


def _stow_item(cls: str, sop: str, reason: int | None = None, comment: str = "") -> dict:
    d: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [cls]} if cls else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop]} if sop else {"vr": "UI"},
    }
    if reason is not None:
        d["00081197"] = {"vr": "US", "Value": [reason]}
        if comment:
            d["00741048"] = {"vr": "LO", "Value": [comment[:64]]}  # failure detail
    return d


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


def add_viewer(app: web.Application, dist: Path, prefix: str, oidc: Any = None) -> None:
    """Serve the OHIF viewer's static files at "/" with our app-config.js; unknown paths
    (the viewer's client-side routes, e.g. /viewer?StudyInstanceUIDs=...) get index.html."""
    from stack.viewer import app_config

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


def create_app(deps: WebDeps, prefix: str = "/dicom-web", auth: Any = None) -> web.Application:
    """``auth``: a common.auth.Authorizer (bearer tokens required under the prefix), or None."""
    from common.auth import dicomweb_middleware, no_store

    dw = DicomWeb(deps)
    from query.audit import web_middleware

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
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/rendered", dw.rendered)
    r.add_get(f"{p}/studies/{s}/series/{se}/instances/{i}/frames/{{frame}}/rendered", dw.rendered)
    r.add_post(f"{p}/studies", dw.stow)
    r.add_post(f"{p}/studies/{s}", dw.stow)

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
