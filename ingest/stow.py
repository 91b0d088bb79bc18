"""STOW-RS (PS3.18 10.5): an ingest interface over HTTP. It goes through the very same store
feature as C-STORE (ingest/store.py): same validation, same durability contract (object
fsync'd + event in the fsync'd outbox before 200), same events, same quarantine. The DICOMweb
application (query/dicomweb/app.py) routes POST .../studies to ``Stow.stow`` when the process
wiring (cli/serve.py) passes one; without it the archive's DICOMweb is read-only."""

from __future__ import annotations

import asyncio
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import BadHttpMessage

from strata.common import audit
from strata.common.dicom import is_valid_uid as is_uid
from strata.common.web import DICOM_JSON
from strata.common.web import error as _error

if TYPE_CHECKING:
    from strata.ingest.store import StoreService


class Stow:
    """The STOW-RS handler over the store feature ``store`` (ingest/store.py): parts are
    spooled into ``incoming`` (the hot tier's spool, so that keeping one is a rename), at most
    ``max_parts`` per request and ``max_part_bytes`` each; stores run on ``pool``."""

    def __init__(
        self,
        store: StoreService,
        incoming: Path,
        max_part_bytes: int = 4 * 1024**3,
        max_parts: int = 1000,
        pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.store = store
        self.incoming = incoming
        self.max_part_bytes = max_part_bytes
        self.max_parts = max_parts
        self.pool = pool or ThreadPoolExecutor(max_workers=4, thread_name_prefix="stow")

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    # ------------------------------------------------------------------ STOW-RS
    async def stow(self, request: web.Request) -> web.Response:
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
            if parts > self.max_parts:
                return self._stow_response(
                    referenced, failed, 413, f"more than {self.max_parts} parts in one request"
                )
            if not isinstance(part, BodyPartReader):  # a nested multipart: not an object
                failed.append(_stow_item("", "", 0xC000, "a nested multipart is not an object"))
                continue
            tmp = self.incoming / f"stow-{uuid.uuid4().hex}.dcm"
            try:
                size = 0
                with open(tmp, "wb") as f:
                    while chunk := await part.read_chunk(1 << 20):
                        size += len(chunk)
                        if size > self.max_part_bytes:
                            break
                        f.write(chunk)
            except (ValueError, BadHttpMessage) as exc:  # a malformed body
                tmp.unlink(missing_ok=True)
                return self._stow_response(referenced, failed, 400, f"malformed part: {exc}")
            except BaseException:  # the client gone mid-upload, a cancelled handler
                tmp.unlink(missing_ok=True)
                raise
            if size > self.max_part_bytes:
                tmp.unlink(missing_ok=True)
                return self._stow_response(
                    referenced, failed, 413, f"a part is larger than {self.max_part_bytes} bytes"
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

        from strata.ingest.store import Received

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
        out = self.store.store(
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
