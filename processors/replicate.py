"""The object copier of a following site: objects follow the log (docs/dr.md).

Reads this site's study topic (read_committed), where MirrorMaker 2 writes the peer's events.
For each InstanceStored whose object is in the hot tier and not yet here, it fetches the bytes
from the peer's gRPC RetrieveInstances, checks the SHA-256 recorded at ingest, writes them into
this site's hot tier under the same key (fsync'd, never overwriting) and records an
InstanceReplicated event at this site. The consumer offset is committed only after the copy (or
a decision not to copy) is durable: a crash re-copies, and a copy is idempotent (same key, same
bytes: the hot tier's link() keeps the first).
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strata.archive.hot import HotTier
from strata.common import kafka
from strata.common.errors import NotFound, Unavailable
from strata.common.events import decode, envelope
from strata.common.settings import Settings
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class CopyResult:
    copied: int = 0
    present: int = 0
    skipped: int = 0


NOT_FOUND_PATIENCE = 120.0  # seconds a peer may answer NOT_FOUND (its index lags its log)
FETCH_GROUP = 50  # objects of one FetchObjects request at most


class Unsupported(Exception):
    """The peer does not serve FetchObjects (an older version): fetch through the index."""


def _refused(exc: Any) -> Unavailable:
    """A failed call as the copier reports it: the code, and why when the peer refused us."""
    import grpc

    code = exc.code()
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return Unavailable(
            f"peer: {code.name}: {exc.details()} (the copier's token: STRATA_DR_PEER_TOKEN_FILE)"
        )
    return Unavailable(f"peer: {code.name}")


def _spool(
    chunks: Iterable[Any], spool: Path, name_of: Callable[[Any], str | None]
) -> dict[str, tuple[Path, str]]:
    """Write a stream of chunks into one spool file per object (``name_of(chunk)``; None: a
    chunk without bytes) and return name -> (file, sha256). If the call fails, every file of
    it is removed and the error raised again."""
    files: dict[str, tuple[Any, Any, Path]] = {}
    try:
        for chunk in chunks:
            name = name_of(chunk)
            if name is None:
                continue
            if name not in files:
                path = spool / f"{uuid.uuid4().hex}.part"
                files[name] = (open(path, "wb"), hashlib.sha256(), path)  # noqa: SIM115
            f, h, _ = files[name]
            f.write(chunk.data)
            h.update(chunk.data)
    except BaseException:
        for f, _h, path in files.values():
            f.close()
            path.unlink(missing_ok=True)
        raise
    out = {}
    for name, (f, h, path) in files.items():
        f.close()
        out[name] = (path, h.hexdigest())
    return out


def fetch_objects(
    stub: Any,
    envs: list[pb.Envelope],
    spool: Path,
    timeout: float = 120.0,
    metadata: list[tuple[str, str]] | None = None,
) -> tuple[dict[str, tuple[Path, str]], set[str]]:
    """Stream the objects of these InstanceStored events from the peer's hot tier by storage
    key (FetchObjects: one request, no index lookup at the peer) into files under ``spool``.
    Returns key -> (file, sha256) of those sent, and the keys the peer's hot tier lacks."""
    import grpc

    from strata.proto.strata.v1 import query_pb2 as q

    refs: dict[str, Any] = {}
    for env in envs:
        st = env.instance_stored
        refs.setdefault(
            st.location.key,
            q.ObjectRef(
                key=st.location.key,
                study_instance_uid=st.study_instance_uid,
                sop_instance_uid=st.sop_instance_uid,
            ),
        )
    missing: set[str] = set()

    def name_of(chunk: Any) -> str | None:
        if chunk.missing:
            missing.add(chunk.key)
            return None
        return str(chunk.key)

    req = q.FetchObjectsRequest(objects=list(refs.values()))
    try:
        got = _spool(stub.FetchObjects(req, timeout=timeout, metadata=metadata), spool, name_of)
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
            raise Unsupported(str(exc.details())) from exc  # type: ignore[attr-defined]
        raise _refused(exc) from exc
    return got, missing


def fetch_many(
    stub: Any,
    study: str,
    series: str,
    sops: list[str],
    spool: Path,
    timeout: float = 120.0,
    metadata: list[tuple[str, str]] | None = None,
) -> dict[str, tuple[Path, str]]:
    """Stream the objects ``sops`` of one series from the peer into files under ``spool``;
    returns sop -> (file, sha256) for those the peer sent (NOT_FOUND: none of them yet)."""
    import grpc

    from strata.proto.strata.v1 import query_pb2 as q

    req = q.RetrieveRequest(
        study_instance_uid=study, series_instance_uid=series, sop_instance_uids=sops
    )
    try:
        return _spool(
            stub.RetrieveInstances(req, timeout=timeout, metadata=metadata),
            spool,
            lambda chunk: str(chunk.sop_instance_uid),
        )
    except grpc.RpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
            raise NotFound(f"peer has none of {len(sops)} objects of series {series}") from exc
        raise _refused(exc) from exc


class Copier:
    def __init__(self, settings: Settings) -> None:
        import grpc

        from strata.proto.strata.v1 import query_pb2_grpc as q_grpc

        self.settings = settings
        self.hot = HotTier(settings.hot_dir, "dr-copier")
        self.stop_event = threading.Event()
        self.result = CopyResult()
        self.channel = grpc.insecure_channel(settings.dr_peer_grpc)
        self.stub = q_grpc.QueryServiceStub(self.channel)
        self._lock = threading.Lock()
        # event ids whose InstanceReplicated Kafka confirmed since the last offset commit: a
        # batch retried after a failure (the peer gone mid-batch) does not record them again
        self._recorded: set[str] = set()
        self._unconfirmed: list[str] = []  # delivery errors of the batch's records
        self._by_key = True  # the peer serves FetchObjects (False: an older peer)
        self.pool = ThreadPoolExecutor(
            max(1, settings.dr_copy_workers), thread_name_prefix="dr-copy"
        )

    def copy_batch(self, envs: list[pb.Envelope]) -> None:
        """Copy the objects of these InstanceStored events that are not here; returns when each
        is here and its InstanceReplicated confirmed by Kafka, or was given up (NOT_FOUND for
        longer than NOT_FOUND_PATIENCE). Raises Unavailable (the caller retries the batch:
        what is done stays done).

        The batch is split into up to STRATA_DR_COPY_WORKERS groups of at most FETCH_GROUP
        objects, each fetched by one FetchObjects request (by storage key, from the peer's hot
        tier: no index lookup or audit record per object at the peer) by a thread of the pool,
        verified, stored and its records produced; the records are flushed once for the batch.
        An object the peer's hot tier lacks (moved to cold since) is fetched alone through
        RetrieveInstances, which finds it in any tier. The caller commits the batch's offsets
        only once this returns."""
        todo = []
        for env in envs:
            if env.instance_stored.location.tier != "hot":
                self._count("skipped")  # cold objects are shared through S3 (docs/dr.md)
                continue
            with self._lock:
                if env.event_id in self._recorded:
                    continue
            todo.append(env)
        workers = max(1, self.settings.dr_copy_workers)
        size = min(FETCH_GROUP, max(1, -(-len(todo) // workers)))
        jobs = [
            self.pool.submit(self._copy_group, todo[i : i + size])
            for i in range(0, len(todo), size)
        ]
        errors = []
        for job in jobs:  # every job ends (done, given up, stopped or failed) before we return
            try:
                job.result()
            except Unavailable as exc:
                errors.append(exc)
        self._confirm()
        if errors:
            raise errors[0]

    def _metadata(self) -> list[tuple[str, str]] | None:
        """The bearer token of STRATA_DR_PEER_TOKEN_FILE, read now (it may have been renewed).
        A file that cannot be read fails the request (the batch is retried)."""
        path = self.settings.dr_peer_token_file
        if not path:
            return None
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise Unavailable(f"the copier's token file cannot be read: {exc}") from exc
        return [("authorization", f"Bearer {token}")]

    def _count(self, what: str, n: int = 1) -> None:
        with self._lock:
            setattr(self.result, what, getattr(self.result, what) + n)

    def _copy_group(self, envs: list[pb.Envelope]) -> None:
        """Objects here already are recorded; the others fetched by key in one request,
        verified, stored and recorded; what that does not bring is copied one by one."""
        want = []
        for env in envs:
            if self.hot.exists(env.instance_stored.location.key):
                # Here already (a re-copy after a crash between the copy and its record, a
                # rebuilt log): recorded all the same, else the fact is never in the log
                # (sync mode waits for it; fail-back would list the instance as missing).
                self._count("present")
                self._record(env, env.instance_stored)
            else:
                want.append(env)
        if not want:
            return
        got: dict[str, tuple[Path, str]] = {}
        if self._by_key:
            try:
                got, missing = fetch_objects(
                    self.stub, want, self.hot.incoming, metadata=self._metadata()
                )
                if missing:
                    log.info("%d objects not in the peer's hot tier: via its index", len(missing))
            except Unsupported as exc:
                log.warning("peer has no FetchObjects (%s): fetching through its index", exc)
                self._by_key = False
        try:
            for env in want:
                path, digest = got.pop(env.instance_stored.location.key, (None, ""))
                if path is None or not self._store(env, path, digest):
                    self._copy_one(env)
        finally:
            for path, _d in got.values():  # not used (a stop, an error): no spool file left
                path.unlink(missing_ok=True)

    def _copy_one(self, env: pb.Envelope) -> None:
        """One object through the peer's index (RetrieveInstances, any tier): fetched,
        verified, stored and recorded; or given up after NOT_FOUND_PATIENCE; or left as it is
        when the copier stops."""
        st = env.instance_stored
        if self.hot.exists(st.location.key):
            self._count("present")
            self._record(env, st)
            return
        study, series, sop = st.study_instance_uid, st.series_instance_uid, st.sop_instance_uid
        since = time.monotonic()
        while not self.stop_event.is_set():
            # One request per object: this is the rare path (an object gone from the peer's hot
            # tier, an older peer), and a request naming several instances answers only those
            # the peer's index has already projected, without saying which it lacks.
            got: dict[str, tuple[Path, str]] = {}
            try:
                got = fetch_many(
                    self.stub, study, series, [sop], self.hot.incoming, metadata=self._metadata()
                )
            except NotFound:
                log.info("peer has not indexed %s yet", sop)
            path, digest = got.pop(sop, (None, ""))
            for other, _d in got.values():  # other versions the peer sent: not ours
                other.unlink(missing_ok=True)
            if path is not None and self._store(env, path, digest):
                return
            if time.monotonic() - since > NOT_FOUND_PATIENCE:
                log.warning(
                    "not copied (the peer has no bytes after %.0fs): %s of series %s",
                    NOT_FOUND_PATIENCE, sop, series,
                )  # fmt: skip
                self._count("skipped")
                return
            self.stop_event.wait(0.1)

    def _store(self, env: pb.Envelope, path: Path, digest: str) -> bool:
        """A fetched spool file: stored under the event's key and recorded when its SHA-256 is
        the one recorded at ingest (True), else not stored (False); removed either way."""
        st = env.instance_stored
        try:
            if digest != st.sha256:
                log.error(
                    "copy of %s has sha256 %s, not the recorded %s: not stored",
                    st.sop_instance_uid, digest[:12], st.sha256[:12],
                )  # fmt: skip
                return False
            self.hot.put_file(st.location.key, path)
        finally:
            path.unlink(missing_ok=True)
        self._count("copied")
        self._record(env, st)
        return True

    def _record(self, env: pb.Envelope, st: pb.InstanceStored) -> None:
        """Produce the InstanceReplicated of a copy that is here (not flushed: ``_confirm``
        waits for the batch's records at once); Kafka's confirmation marks it recorded."""
        rep = pb.InstanceReplicated(
            sop_instance_uid=st.sop_instance_uid,
            series_instance_uid=st.series_instance_uid,
            sha256=st.sha256,
            size_bytes=st.size_bytes,
            location=pb.StorageLocation(tier="hot", key=st.location.key),
            source_site=self.settings.dr_peer_site,
            source_event_id=env.event_id,
            site=self.settings.dr_site,
        )
        out = envelope(
            rep,
            study_uid=st.study_instance_uid,
            service="dr-copier",
            node=self.settings.node_name,
            occurred_at=datetime.now(UTC),
        )
        source = env.event_id

        def delivered(err: Any, _msg: Any) -> None:
            with self._lock:
                if err:
                    self._unconfirmed.append(str(err))
                else:
                    self._recorded.add(source)

        with self._lock:
            if self._producer is None:
                self._producer = kafka.producer(self.settings, "durable", "dr-copier")
            p = self._producer
        p.produce(
            self.settings.study_topic,
            key=st.study_instance_uid.encode(),
            value=out.SerializeToString(),
            on_delivery=delivered,
        )

    def _confirm(self) -> None:
        """Wait until Kafka confirmed every record produced; raises Unavailable otherwise (the
        batch is retried: a record not confirmed is produced again)."""
        if self._producer is None:
            return
        left = self._producer.flush(30)
        with self._lock:
            errors, self._unconfirmed = self._unconfirmed, []
        if left or errors:
            raise Unavailable(f"InstanceReplicated not confirmed: {errors[:1] or 'timeout'}")

    def committed(self) -> None:
        """The batch's offsets are committed: a redelivery from now on (a restart, a rebuilt
        log) records an object already here again, as the contract says."""
        with self._lock:
            self._recorded.clear()

    _producer: Any = None

    def run(self) -> None:
        c = kafka.consumer(
            self.settings,
            self.settings.dr_copy_group,
            "dr-copier",
            {"auto.offset.reset": "earliest"},
        )
        c.subscribe([self.settings.study_topic])
        try:
            while not self.stop_event.is_set():
                # poll() returns with the first record; consume(200, 0.5) would wait for 200 or
                # the whole 0.5 s, in every acknowledgement of sync mode (docs/dr.md)
                first = c.poll(0.5)
                batch = [first, *c.consume(199, 0)] if first is not None else []
                msgs = [m for m in batch if not m.error()]
                if not msgs:
                    continue
                envs = []
                for m in msgs:
                    try:
                        env = decode(m.value() or b"")
                    except Exception:
                        continue  # not ours to judge: the index sets malformed events aside
                    if env.WhichOneof("payload") == "instance_stored":
                        envs.append(env)
                backoff = 0.5
                while not self.stop_event.is_set():
                    try:
                        self.copy_batch(envs)
                        break
                    except Unavailable as exc:
                        log.warning("copy failed, retrying: %s", exc)
                        self.stop_event.wait(backoff)
                        backoff = min(backoff * 2, 10.0)
                if self.stop_event.is_set():
                    break  # offsets not committed: the next run copies (idempotently) again
                c.commit(asynchronous=False)
                self.committed()
        finally:
            self.pool.shutdown(wait=True)  # stop_event set: the workers return within 0.1 s
            c.close()
            self.channel.close()


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not settings.dr_peer_grpc:
        raise Unavailable("STRATA_DR_PEER_GRPC is not set: nowhere to copy objects from")
    copier = Copier(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: copier.stop_event.set())
    log.info("copying objects from %s (%s)", settings.dr_peer_site, settings.dr_peer_grpc)
    t0 = time.monotonic()
    copier.run()
    log.info("stopped after %.0fs: %s", time.monotonic() - t0, copier.result)
