"""The gRPC query service (proto/strata/v1/query.proto) over the index and the object tiers.

Thin adapter: matching and SQL come from the find feature, object access from the retrieve
feature. Errors are mapped to gRPC codes here and only here: Invalid -> INVALID_ARGUMENT,
NotFound -> NOT_FOUND, Unavailable -> UNAVAILABLE; a query that would outlive the caller's
deadline is cut by ClickHouse (max_execution_time) and answers DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from confluent_kafka import KafkaException, TopicPartition
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from strata.archive.keys import UnsafeKey, key_path
from strata.common import kafka
from strata.common.auth import grpc_interceptor
from strata.common.errors import DeadlineExceeded, Invalid, NotFound, StrataError, Unavailable
from strata.common.events import decode
from strata.common.kafka import record
from strata.processors.index.matching import ATTRIBUTES
from strata.processors.index.port import Index
from strata.processors.index.search import columns
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from strata.query.audit import grpc_interceptor as audit_interceptor
from strata.query.find import FindQuery, to_json
from strata.query.retrieve import ObjectSource, local_paths, locate

log = logging.getLogger(__name__)

DEFAULT_KEYS = {
    "STUDY": [
        "StudyInstanceUID",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ModalitiesInStudy",
        "ReferringPhysicianName",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyID",
        "StudyDescription",
        "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ],
    "SERIES": [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "Modality",
        "SeriesNumber",
        "SeriesDescription",
        "BodyPartExamined",
        "NumberOfSeriesRelatedInstances",
    ],
    "IMAGE": [
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "SOPInstanceUID",
        "SOPClassUID",
        "InstanceNumber",
    ],
}
UID_COLUMN = {"STUDY": "study_uid", "SERIES": "series_uid", "IMAGE": "sop_uid"}
DEFAULT_ORDER = {"STUDY": "-StudyDate", "SERIES": "SeriesNumber", "IMAGE": "InstanceNumber"}
NUMERIC = {"IS"}


MAX_SOP_UIDS = 10_000  # sop_instance_uids of one RetrieveInstances request
MAX_FETCH_OBJECTS = 1000  # objects of one FetchObjects request


@dataclass
class Deps:
    index: Index  # the index port (processors/index/port.py)
    source: ObjectSource
    bootstrap: kafka.Cluster
    topics: list[str]
    query_timeout: float = 0.0  # s, the server's limit on one search (0 = none)
    max_chunk_bytes: int = 4 * 1024**2  # largest RetrieveInstances chunk
    max_watch_streams: int = 8  # concurrent WatchEvents streams
    max_retrieve_streams: int = 8  # concurrent RetrieveInstances (and FetchObjects) streams
    hot_root: Path | None = None  # the hot tier FetchObjects reads (None: not served)


class _Slots:
    """A bound on concurrent streams of one kind: a stream beyond it is refused at once
    (RESOURCE_EXHAUSTED), so streams never take the worker threads searches need."""

    def __init__(self, n: int, what: str) -> None:
        self.n = n
        self.what = what
        self._sem = threading.BoundedSemaphore(max(0, n)) if n > 0 else None

    def acquire(self, context: grpc.ServicerContext) -> None:
        if self._sem is None or not self._sem.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"at most {self.n} concurrent {self.what} streams: retry later",
            )

    def release(self) -> None:
        if self._sem is not None:
            self._sem.release()


def _encode_token(obj: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj, separators=(",", ":")).encode()).decode()


def _decode_token(token: str) -> Any:
    try:
        return json.loads(base64.urlsafe_b64decode(token.encode()))
    except (ValueError, TypeError) as exc:
        raise Invalid("malformed page or resume token") from exc


def _deadline(context: grpc.ServicerContext, server_limit: float = 0.0) -> float:
    """The query's time limit in seconds (0 = none): min(the caller's deadline, the server's
    limit)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 3600:  # no deadline (grpc reports a huge value)
        remaining = None
    elif remaining <= 0:
        raise _Deadline()
    limits = [t for t in (remaining, server_limit) if t is not None and t > 0]
    return max(0.01, min(limits)) if limits else 0.0


class _Deadline(Exception):
    pass


def _abort(context: grpc.ServicerContext, exc: BaseException) -> None:
    if isinstance(exc, _Deadline):
        context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
    if isinstance(exc, DeadlineExceeded):
        context.abort(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "the search exceeded its time limit (the call's deadline or the server's)",
        )
    if isinstance(exc, Invalid):
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, NotFound):
        context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, Unavailable):
        if "TIMEOUT_EXCEEDED" in str(exc) or "Timeout exceeded" in str(exc):
            context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, "deadline exceeded")
        context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
    log.exception("unexpected error in gRPC call", exc_info=exc)
    context.abort(grpc.StatusCode.INTERNAL, "internal error")


class QueryService(q_grpc.QueryServiceServicer):
    def __init__(self, deps: Deps) -> None:
        self.d = deps
        self._watches = _Slots(deps.max_watch_streams, "WatchEvents")
        self._retrieves = _Slots(deps.max_retrieve_streams, "RetrieveInstances")

    # ------------------------------------------------------------------ search
    def SearchStudies(self, request: q.SearchRequest, context: Any) -> q.SearchResponse:  # noqa: N802
        return self._search("STUDY", request, context)

    def SearchSeries(self, request: q.SearchRequest, context: Any) -> q.SearchResponse:  # noqa: N802
        return self._search("SERIES", request, context)

    def SearchInstances(self, request: q.SearchRequest, context: Any) -> q.SearchResponse:  # noqa: N802
        return self._search("IMAGE", request, context)

    def _search(self, level: str, request: q.SearchRequest, context: Any) -> q.SearchResponse:
        try:
            return self._search_inner(level, request, context)
        except (StrataError, _Deadline) as exc:
            _abort(context, exc)
            raise  # unreachable: abort raises

    def _search_inner(self, level: str, request: q.SearchRequest, context: Any) -> q.SearchResponse:
        for kw in list(request.match) + list(request.include):
            if kw not in ATTRIBUTES and not _is_keyword(kw):
                raise Invalid(f"unknown DICOM keyword {kw!r}")
        wanted = list(
            dict.fromkeys(DEFAULT_KEYS[level] + list(request.include) + list(request.match))
        )
        keys = [(kw, request.match.get(kw, "")) for kw in wanted]
        page_size = min(request.page_size or 100, 1000)
        fq = FindQuery(level, keys, limit=10_000_000)
        order = request.order_by or DEFAULT_ORDER[level]
        desc = order.startswith("-")
        attr = ATTRIBUTES.get(order.lstrip("-"))
        if attr is None or attr.column not in columns(level) or attr.vr.endswith("[]"):
            raise Invalid(f"cannot order by {order!r}")
        uid = UID_COLUMN[level]
        numeric = attr.vr in NUMERIC
        after = None
        tok: dict[str, Any] = {}
        if request.page_token:
            tok = _decode_token(request.page_token)
            if not isinstance(tok, dict) or not {"o", "l", "v", "u", "t"} <= set(tok):
                raise Invalid("malformed page token")
            if tok.get("o") != order or tok.get("l") != level:
                raise Invalid("page token belongs to another query")
            after = (tok["v"], tok["u"])
        timeout = _deadline(context, self.d.query_timeout)
        # One query per page: the first page counts all matches in the same scan; later pages
        # carry the total in the token (it is the total of the search as first run).
        total = int(tok["t"]) if request.page_token else None
        page = self.d.index.search_page(
            fq,
            attr.column,
            uid,
            descending=desc,
            numeric=numeric,
            after=after,
            page_size=page_size,
            count=total is None,
            timeout=timeout,
        )
        rows = page.rows
        if total is None:
            total = page.total or 0
        more = len(rows) > page_size
        rows = rows[:page_size]
        matches = []
        last: dict[str, Any] = {}
        for last in rows:
            matches.append(to_json(fq, last))
        token = ""
        if more:
            v = last[attr.column]
            v = (-1 if v is None else int(v)) if numeric else str(v)
            token = _encode_token(
                {"l": level, "o": order, "v": v, "u": str(last[uid]), "t": int(total)}
            )
        return q.SearchResponse(matches=matches, next_page_token=token, total=int(total))

    # ------------------------------------------------------------------ metadata
    def GetStudyMetadata(self, request: q.GetStudyMetadataRequest, context: Any) -> q.StudyMetadata:  # noqa: N802
        try:
            study = request.study_instance_uid.strip()
            if not study:
                raise Invalid("study_instance_uid is required")
            headers = self.d.index.study_headers(study, _deadline(context, self.d.query_timeout))
            if not headers:
                raise NotFound(f"no study {study}")
            return q.StudyMetadata(study_instance_uid=study, instances=headers)
        except (StrataError, _Deadline) as exc:
            _abort(context, exc)
            raise

    # ------------------------------------------------------------------ retrieve
    def RetrieveInstances(
        self, request: q.RetrieveRequest, context: Any
    ) -> Iterator[q.InstanceChunk]:  # noqa: N802
        self._retrieves.acquire(context)
        try:
            yield from self._retrieve(request, context)
        finally:
            self._retrieves.release()

    def _retrieve(self, request: q.RetrieveRequest, context: Any) -> Iterator[q.InstanceChunk]:
        try:
            if len(request.sop_instance_uids) > MAX_SOP_UIDS:
                raise Invalid(f"at most {MAX_SOP_UIDS} sop_instance_uids in one request")
            keys = {"StudyInstanceUID": request.study_instance_uid}
            level = "STUDY"
            if request.series_instance_uid:
                keys["SeriesInstanceUID"] = request.series_instance_uid
                level = "SERIES"
            if request.sop_instance_uids:
                keys["SOPInstanceUID"] = "\\".join(request.sop_instance_uids)
                level = "IMAGE"
            if not request.study_instance_uid:
                raise Invalid("study_instance_uid is required")
            locs = locate(self.d.index, level, keys)
            if not locs:
                raise NotFound("no matching instance")
            # chunk_size is the caller's wish, bounded by the server's (offsets tell where each
            # chunk goes, so a smaller chunk than asked is still a correct answer).
            size = min(request.chunk_size or (1 << 20), self.d.max_chunk_bytes)
            for loc, path in local_paths(self.d.source, locs):
                if isinstance(path, StrataError):
                    raise path
                if isinstance(path, Exception):
                    raise Unavailable(f"object of {loc.sop_uid} not readable: {path}")
                offset = 0
                first = True
                for data in _file_chunks(path, size):
                    if not context.is_active():
                        return
                    msg = q.InstanceChunk(sop_instance_uid=loc.sop_uid, offset=offset, data=data)
                    if first:
                        msg.size_bytes = loc.size_bytes
                        msg.sha256 = loc.sha256
                        msg.transfer_syntax_uid = loc.transfer_syntax_uid
                        msg.sop_class_uid = loc.sop_class_uid
                        first = False
                    offset += len(data)
                    msg.last = offset >= loc.size_bytes
                    yield msg
        except (StrataError, _Deadline) as exc:
            _abort(context, exc)

    # ------------------------------------------------------------------ objects by key
    def FetchObjects(  # noqa: N802
        self, request: q.FetchObjectsRequest, context: Any
    ) -> Iterator[q.ObjectChunk]:
        """The second site's copier (docs/dr.md): objects by storage key from the hot tier,
        no index lookup (the event that names the key is the reference; the copier verifies
        the SHA-256 it recorded). Shares the retrieve streams' slots."""
        self._retrieves.acquire(context)
        try:
            yield from self._fetch(request, context)
        finally:
            self._retrieves.release()

    def _fetch(self, request: q.FetchObjectsRequest, context: Any) -> Iterator[q.ObjectChunk]:
        try:
            if self.d.hot_root is None:
                raise Unavailable("this node serves no hot tier")
            if len(request.objects) > MAX_FETCH_OBJECTS:
                raise Invalid(f"at most {MAX_FETCH_OBJECTS} objects in one request")
            # every key is checked before any byte is sent: an unsafe one fails the request
            try:
                paths = [key_path(self.d.hot_root, o.key) for o in request.objects]
            except UnsafeKey as exc:
                raise Invalid(f"unsafe storage key: {exc}") from exc
            size = min(request.chunk_size or (1 << 20), self.d.max_chunk_bytes)
            for ref, path in zip(request.objects, paths, strict=True):
                for msg in _object_chunks(ref, path, size):
                    if not context.is_active():
                        return
                    yield msg
        except StrataError as exc:
            _abort(context, exc)

    # ------------------------------------------------------------------ history
    def GetStudyHistory(self, request: q.GetStudyHistoryRequest, context: Any) -> q.StudyHistory:  # noqa: N802
        try:
            study = request.study_instance_uid.strip()
            rows = self.d.index.study_history(study, _deadline(context, self.d.query_timeout))
            if not rows:
                raise NotFound(f"no study {study}")
            out = q.StudyHistory(study_instance_uid=study)
            for eid, etype, at, topic, part, off, payload, producer in rows:
                ts = Timestamp()
                ts.FromDatetime(at)
                out.events.add(
                    event_id=eid,
                    event_type=etype,
                    occurred_at=ts,
                    topic=topic,
                    partition=part,
                    offset=off,
                    payload_json=payload,
                    producer=producer,
                )
            return out
        except (StrataError, _Deadline) as exc:
            _abort(context, exc)
            raise

    # ------------------------------------------------------------------ watch
    def WatchEvents(self, request: q.WatchRequest, context: Any) -> Iterator[q.WatchedEvent]:  # noqa: N802
        self._watches.acquire(context)
        try:
            yield from self._watch(request, context)
        finally:
            self._watches.release()

    def _watch(self, request: q.WatchRequest, context: Any) -> Iterator[q.WatchedEvent]:
        try:
            start = _decode_token(request.resume_token) if request.resume_token else None
        except Invalid as exc:
            _abort(context, exc)
            return
        types = set(request.event_types)
        c = kafka.consumer(
            self.d.bootstrap, "strata-watch", "watch", {"enable.partition.eof": False}
        )
        try:
            md = c.list_topics(timeout=10)
            pos: dict[str, dict[str, int]] = {}
            assign = []
            for t in self.d.topics:
                for p in md.topics[t].partitions if t in md.topics else []:
                    lo, hi = kafka.watermarks(c, TopicPartition(t, p), timeout=10)
                    if start is not None:
                        off = int(start.get(t, {}).get(str(p), lo))
                    else:
                        off = lo if request.from_beginning else hi
                    pos.setdefault(t, {})[str(p)] = off
                    assign.append(TopicPartition(t, p, off))
            c.assign(assign)
            while context.is_active():
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                r = record(m)
                pos[r.topic][str(r.partition)] = r.offset + 1
                try:
                    env = decode(r.value)
                except Exception:
                    continue
                if types and env.event_type not in types:
                    continue
                if request.study_instance_uid and (
                    env.study_instance_uid != request.study_instance_uid
                ):
                    continue
                yield q.WatchedEvent(
                    resume_token=_encode_token(pos),
                    topic=m.topic(),
                    partition=m.partition(),
                    offset=m.offset(),
                    event=env,
                )
        except KafkaException as exc:
            _abort(context, Unavailable(f"event log unavailable: {exc}"))
        finally:
            c.close()


def _is_keyword(kw: str) -> bool:
    from pydicom.datadict import tag_for_keyword

    return tag_for_keyword(kw) is not None


def serve(deps: Deps, host: str, port: int, workers: int = 16, auth: Any = None) -> grpc.Server:
    """The gRPC server: ``workers`` threads for unary calls (searches) plus one per allowed
    stream (WatchEvents, RetrieveInstances hold a thread for their whole life), so streams
    up to their caps never leave a search waiting for a thread."""
    threads = max(1, workers) + max(0, deps.max_watch_streams) + max(0, deps.max_retrieve_streams)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc"),
        options=[
            ("grpc.max_send_message_length", 256 * 1024 * 1024),
            ("grpc.max_receive_message_length", 16 * 1024 * 1024),
        ],
        # bearer tokens (common.auth): health checking stays open
        # and the audit record of each call (query/audit.py), inside the auth check
        interceptors=[
            *([grpc_interceptor(auth)] if auth is not None else []),
            audit_interceptor(deps.index),
        ],
    )
    q_grpc.add_QueryServiceServicer_to_server(QueryService(deps), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    name = q.DESCRIPTOR.services_by_name["QueryService"].full_name
    for svc in ("", name):
        health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (name, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    server.add_insecure_port(f"{host}:{port}")
    server.start()
    return server


def _object_chunks(ref: q.ObjectRef, path: Path, size: int) -> Iterator[q.ObjectChunk]:
    """One object of FetchObjects in chunks of ``size`` (the first with its size, the last
    marked; one chunk for an empty file), or one ``missing`` chunk when the hot tier has no
    file under its key."""
    try:
        f = open(path, "rb")  # noqa: SIM115
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        yield q.ObjectChunk(key=ref.key, sop_instance_uid=ref.sop_instance_uid, missing=True,
                            last=True)  # fmt: skip
        return
    with f:
        total = os.fstat(f.fileno()).st_size
        offset = 0
        while True:
            data = f.read(size)
            msg = q.ObjectChunk(key=ref.key, sop_instance_uid=ref.sop_instance_uid, offset=offset,
                                data=data, last=offset + len(data) >= total)  # fmt: skip
            if offset == 0:
                msg.size_bytes = total
            offset += len(data)
            yield msg
            if msg.last:
                return


def _file_chunks(path: Any, size: int) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk
