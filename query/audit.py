"""Audit records of the readers: DIMSE Q/R (C-FIND, C-MOVE, C-GET), DICOMweb (QIDO, WADO,
STOW) and gRPC. The events are built and emitted by common/audit.py; this module only knows
what each interface's operation is, who asked, and which patient and studies it touched.

One event per operation: per C-FIND/C-MOVE/C-GET request (its final status), per DICOMweb
request (frames and rendered images of one study coalesce: one "view" per requestor and study
per ``VIEW_WINDOW`` seconds, not one per frame a viewer fetches), per gRPC call.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from strata.common import audit
from strata.proto.strata.v1 import events_pb2 as pb

VIEW_WINDOW = 300.0
_QR_FIND, _QR_MOVE, _QR_GET = 0x0020, 0x0021, 0x0010  # C-FIND-RQ, C-MOVE-RQ, C-GET-RQ


def _patients(index: Any, studies: list[str]) -> list[str]:
    from strata.processors.index.audit import patients_of

    try:
        return patients_of(index, studies)
    except Exception:  # noqa: BLE001 - the event still names the studies
        return []


def _uids(value: str) -> list[str]:
    return [u.strip() for u in value.split("\\") if u.strip() and "*" not in u and "?" not in u]


# ------------------------------------------------------------------------------ DIMSE Q/R


@dataclass
class QrOperation:
    action: str
    who: pb.AuditWho
    peer: str
    what: pb.AuditWhat
    status: int | None = None
    ended: bool = False


def qr_begin(
    assoc: Any, cmd: dict[int, bytes], sop_class: str, identifier: Any
) -> QrOperation | None:
    """A C-FIND/C-MOVE/C-GET request with its identifier (query keys as asked)."""
    if not audit.enabled() or assoc.rq is None:
        return None
    from strata.dicomnet import dul

    field_ = dul.us(cmd, dul.COMMAND_FIELD)
    keys: dict[str, str] = {}
    for elem in identifier:
        if elem.keyword and elem.VR != "SQ":
            v = elem.value
            keys[elem.keyword] = "" if v is None else str(v)
    level = keys.pop("QueryRetrieveLevel", "")
    what = pb.AuditWhat(
        query_level=level,
        sop_class_uid=sop_class,
        patient_ids=_uids(keys.get("PatientID", "")),
        study_instance_uids=_uids(keys.get("StudyInstanceUID", "")),
    )
    if field_ == _QR_FIND:
        action = audit.QUERY
        what.query_keys.update(keys)
        what.method = "C-FIND"
    else:
        action = audit.RETRIEVE
        what.method = "C-MOVE" if field_ == _QR_MOVE else "C-GET"
        if field_ == _QR_MOVE:
            what.detail = f"move destination {dul.text(cmd, dul.MOVE_DESTINATION)}"
    who = audit.who_dicom(assoc.rq.calling_ae, assoc.rq.called_ae, assoc.sock)
    return QrOperation(action, who, assoc.peer, what)


def qr_located(op: QrOperation | None, locs: list[Any], index: Any) -> None:
    """The instances a retrieve sends: their studies and patients."""
    if op is None:
        return
    studies = sorted({loc.study_uid for loc in locs})
    del op.what.study_instance_uids[:]
    op.what.study_instance_uids.extend(studies)
    op.what.instances = len(locs)
    patients = _patients(index, studies)
    if patients:
        del op.what.patient_ids[:]
        op.what.patient_ids.extend(patients)


def qr_final(op: QrOperation | None, status: int) -> None:
    """The status of the operation's final response."""
    if op is not None and op.status is None and not op.ended:
        op.status = status


def qr_end(op: QrOperation | None) -> None:
    """The operation is over (answered, or its association gone): its one event."""
    if op is None or op.ended:
        return
    op.ended = True
    status = op.status if op.status is not None else 0xA700  # never answered (aborted)
    audit.record(
        op.action,
        audit.dicom_outcome(status) if op.status is not None else audit.SERIOUS,
        interface="dicom",
        peer=op.peer,
        who=op.who,
        what=op.what,
        dicom_status=status,
    )


# ------------------------------------------------------------------------------ DICOMweb

_ACTIONS = {
    "qido": audit.QUERY,
    "retrieve": audit.RETRIEVE,
    "metadata": audit.VIEW,
    "frames": audit.VIEW,
    "bulkdata": audit.VIEW,
    "rendered": audit.VIEW,
    "stow": audit.STORE,
}
_COALESCED = ("frames", "rendered", "bulkdata")


class _Recent:
    """(who, peer host, study) -> when last recorded: frames of one viewing, one event."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], float] = {}
        self._lock = threading.Lock()

    def fresh(self, key: tuple[str, str, str]) -> bool:
        now = time.monotonic()
        with self._lock:
            if len(self._seen) > 10000:
                self._seen = {k: t for k, t in self._seen.items() if now - t < VIEW_WINDOW}
            last = self._seen.get(key)
            if last is not None and now - last < VIEW_WINDOW:
                return False
            self._seen[key] = now
            return True


def web_middleware(index: Any, prefix: str) -> Any:
    """aiohttp middleware: one audit event per DICOMweb request that reached its handler
    (placed inside the auth middleware: refused requests are recorded by common/auth.py)."""
    from aiohttp import web

    root = prefix.rstrip("/") + "/"
    recent = _Recent()

    @web.middleware
    async def audit_mw(request: web.Request, handler: Any) -> web.StreamResponse:
        route = getattr(request.match_info.route, "handler", None)
        name = getattr(route, "__name__", "")
        if (
            not audit.enabled()
            or request.method == "OPTIONS"
            or not (request.path + "/").startswith(root)
            or name not in _ACTIONS
        ):
            out: web.StreamResponse = await handler(request)
            return out
        authz = request.headers.get("Authorization")
        who = audit.who_bearer(authz)
        peer = request.remote or ""
        action = _ACTIONS[name]
        transfers = audit.begin_transfers("dicomweb", peer, who) if action == audit.STORE else None
        status = 500
        try:
            resp: web.StreamResponse = await handler(request)
            status = resp.status
            return resp
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            if transfers is not None:
                audit.end_transfers(transfers, http_status=status)
            else:
                await _record_web(index, request, name, action, who, peer, status, recent)

    return audit_mw


async def _record_web(
    index: Any,
    request: Any,
    name: str,
    action: str,
    who: pb.AuditWho,
    peer: str,
    status: int,
    recent: _Recent,
) -> None:
    mi = request.match_info
    study = mi.get("study", "")
    if name in _COALESCED and status < 400 and not recent.fresh((who.user, peer, study)):
        return
    what = pb.AuditWhat(method=f"{request.method} {name}")
    if study:
        what.study_instance_uids.append(study)
        what.patient_ids.extend(await asyncio.to_thread(_patients, index, [study]))
    if action == audit.QUERY:
        path = request.path.rstrip("/")
        what.query_level = (
            "IMAGE"
            if path.endswith("/instances")
            else "SERIES"
            if path.endswith("/series")
            else "STUDY"
        )
        what.query_keys.update({k: v for k, v in request.query.items()})
        if not study:
            what.patient_ids.extend(_uids(request.query.get("PatientID", "")))
    audit.record(
        action,
        audit.http_outcome(status),
        interface="dicomweb",
        peer=peer,
        who=who,
        what=what,
        http_status=status,
    )


# ------------------------------------------------------------------------------ gRPC

_GRPC_SERVICE = "/strata.v1.QueryService/"
_GRPC_ACTIONS = {
    "SearchStudies": (audit.QUERY, "STUDY"),
    "SearchSeries": (audit.QUERY, "SERIES"),
    "SearchInstances": (audit.QUERY, "IMAGE"),
    "GetStudyMetadata": (audit.VIEW, ""),
    "GetStudyHistory": (audit.VIEW, ""),
    "RetrieveInstances": (audit.RETRIEVE, ""),
    "FetchObjects": (audit.RETRIEVE, ""),  # the second site's copier: one event per request
    "WatchEvents": (audit.QUERY, ""),
}


@dataclass
class _Call:
    method: str
    authorization: str | None
    sops: set[str] = field(default_factory=set)


def grpc_interceptor(index: Any) -> Any:
    """A grpc.ServerInterceptor recording each QueryService call when it ends (after the auth
    interceptor: a refused call never reaches it, common/auth.py records those)."""
    import grpc

    def record(call: _Call, request: Any, context: Any, code: str) -> None:
        name = call.method.rsplit("/", 1)[-1]
        action, level = _GRPC_ACTIONS.get(name, (audit.QUERY, ""))
        what = pb.AuditWhat(method=name, query_level=level)
        match = getattr(request, "match", None)
        if match is not None:
            what.query_keys.update(dict(match))
            what.patient_ids.extend(_uids(match.get("PatientID", "")))
            what.study_instance_uids.extend(_uids(match.get("StudyInstanceUID", "")))
        study = getattr(request, "study_instance_uid", "")
        studies = [study] if study else []
        for ref in getattr(request, "objects", ()):  # FetchObjects
            if ref.study_instance_uid and ref.study_instance_uid not in studies:
                studies.append(ref.study_instance_uid)
        if studies:
            what.study_instance_uids.extend(studies)
            what.patient_ids.extend(_patients(index, studies))
        what.instances = len(call.sops)
        audit.record(
            action,
            audit.SUCCESS if code == "OK" else audit.SERIOUS,
            interface="grpc",
            peer=context.peer() or "",
            who=audit.who_bearer(call.authorization),
            what=what,
            grpc_code=code,
        )

    def code_of(context: Any) -> str:
        try:
            c = context.code()
        except Exception:  # noqa: BLE001
            c = None
        return c.name if c is not None and hasattr(c, "name") else "UNKNOWN"

    class _Audit(grpc.ServerInterceptor):  # type: ignore[misc]
        def intercept_service(self, continuation: Any, details: Any) -> Any:
            handler = continuation(details)
            method = details.method or ""
            if handler is None or not method.startswith(_GRPC_SERVICE) or not audit.enabled():
                return handler
            md = {k.lower(): v for k, v in (details.invocation_metadata or ())}
            kw = {
                "request_deserializer": handler.request_deserializer,
                "response_serializer": handler.response_serializer,
            }
            if handler.unary_unary is not None:
                inner = handler.unary_unary

                def unary(request: Any, context: Any) -> Any:
                    call, code = _Call(method, md.get("authorization")), "UNKNOWN"
                    try:
                        out = inner(request, context)
                        code = "OK"
                        return out
                    except BaseException:
                        code = code_of(context)
                        raise
                    finally:
                        record(call, request, context, code)

                return grpc.unary_unary_rpc_method_handler(unary, **kw)
            if handler.unary_stream is not None:
                inner_s = handler.unary_stream

                def stream(request: Any, context: Any) -> Any:
                    call, code = _Call(method, md.get("authorization")), "CANCELLED"
                    try:
                        for item in inner_s(request, context):
                            sop = getattr(item, "sop_instance_uid", "")
                            if sop and not getattr(item, "missing", False):
                                call.sops.add(sop)
                            yield item
                        code = "OK"
                    except BaseException:
                        code = code_of(context)
                        raise
                    finally:
                        record(call, request, context, code)

                return grpc.unary_stream_rpc_method_handler(stream, **kw)
            return handler

    return _Audit()
