"""The audit trail's emitting side: building AuditEvent envelopes and publishing them without
slowing the operation they record (docs/security.md, "Audit trail").

Every process that serves PHI or access control calls ``configure(settings, service)`` once at
start; hooks then call ``record(...)`` (or, for stores, ``Transfers``: one event per study per
association). ``record`` never blocks and never raises: the event is serialized on the
caller's thread and put on a bounded in-memory queue; a background thread produces it to the
audit topic with an idempotent producer (acks=all).

No silent loss:
- Kafka unreachable: a record not acknowledged within ``_DELIVERY_TIMEOUT_MS`` is appended to
  a local spool file (``<node home>/audit-spool/<service>-<pid>.spool``, length-prefixed
  envelopes, fsync'd) and replayed when Kafka acknowledges again; a spool left by a process that
  died is replayed by the next process of the node that starts (a file is claimed with flock).
- queue full (a burst beyond ``STRATA_AUDIT_QUEUE``): the caller appends to the spool itself.
- clean shutdown (``close``): what is still queued or unacknowledged goes to the spool.
- only if the spool itself cannot be written (disk full) is an event lost: counted in
  ``strata_audit_events_total{result="lost"}`` and logged as an error (without its contents).
The window that remains is a process killed (SIGKILL, power) with events still in memory:
at most the last ``_DELIVERY_TIMEOUT_MS`` of them while Kafka was down, milliseconds when up.

A replayed record keeps its event id, so the audit index (ReplacingMergeTree on event_id)
holds it once however often it was delivered.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import fcntl
import json
import logging
import os
import queue
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from strata.common.events import envelope
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


class _Events:
    """strata_audit_events_total{result}, made on first use: prometheus_client must not be
    imported before the ingest node sets its multiprocess directory (ingest/node.py)."""

    _counter: Any = None

    def labels(self, result: str) -> Any:
        if self._counter is None:
            from prometheus_client import Counter

            _Events._counter = Counter(
                "strata_audit_events",
                "Audit events by result: published (acknowledged by Kafka), spooled (kept on "
                "local disk for a later publish), lost (the spool could not be written either)",
                ["result"],
            )
        return self._counter.labels(result)


EVENTS = _Events()

# actions
STORE, QUERY, RETRIEVE, VIEW, DELETE = "store", "query", "retrieve", "view", "delete"
HOLD_PLACE, HOLD_RELEASE, REDRIVE = "hold-place", "hold-release", "outbox-redrive"
AUTH_FAILURE, ASSOCIATION_REJECTED = "auth-failure", "association-rejected"
AUDIT_READ = "audit-read"  # the audit trail itself was read (strata audit, /audit)
# outcomes
SUCCESS, MINOR, SERIOUS = "success", "minor-failure", "serious-failure"

_DELIVERY_TIMEOUT_MS = 10_000
_REPLAY_EVERY = 5.0


# ------------------------------------------------------------------------------ the spool


class Spool:
    """Length-prefixed serialized envelopes in files of one directory. Each process appends to
    its own file (held with flock while it lives); any file nobody holds is replayable."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name
        self._lock = threading.Lock()
        self._f: Any = None

    def append(self, values: Iterable[bytes]) -> int:
        data = b"".join(struct.pack(">I", len(v)) + v for v in values)
        if not data:
            return 0
        with self._lock:
            if self._f is None:
                self.dir.mkdir(parents=True, exist_ok=True)
                self._f = open(self.dir / f"{self.name}.spool", "ab")  # noqa: SIM115
                fcntl.flock(self._f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._f.write(data)
            self._f.flush()
            os.fsync(self._f.fileno())
        return len(data)

    def rotate(self) -> None:
        """Close this process's file (renamed aside) so that it becomes replayable."""
        with self._lock:
            if self._f is None:
                return
            path = Path(self._f.name)
            path.rename(path.with_suffix(f".{time.time_ns()}.spool"))
            self._f.close()  # releases the flock
            self._f = None

    def claim(self) -> list[tuple[Path, Any]]:
        """Spool files no process holds, each opened and locked (replay, then ``done``)."""
        out: list[tuple[Path, Any]] = []
        if not self.dir.is_dir():
            return out
        for p in sorted(self.dir.glob("*.spool")):
            f = open(p, "rb")  # noqa: SIM115 - closed by done()
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.close()
                continue
            if not p.exists():  # replayed and removed by another process meanwhile
                f.close()
                continue
            out.append((p, f))
        return out

    @staticmethod
    def read(f: Any) -> list[bytes]:
        data = f.read()
        out, i = [], 0
        while i + 4 <= len(data):
            (n,) = struct.unpack(">I", data[i : i + 4])
            if i + 4 + n > len(data):
                break  # a torn last record (crash mid-append): it was never counted spooled
            out.append(data[i + 4 : i + 4 + n])
            i += 4 + n
        return out

    @staticmethod
    def done(path: Path, f: Any, remove: bool) -> None:
        if remove:
            path.unlink(missing_ok=True)
        f.close()

    def depth(self) -> int:
        return sum(1 for _ in self.dir.glob("*.spool")) if self.dir.is_dir() else 0


# ------------------------------------------------------------------------------ the emitter


class Emitter:
    """A bounded queue and one background producer thread (see the module's docstring)."""

    def __init__(
        self,
        cluster: Any,
        topic: str,
        spool: Spool,
        maxsize: int = 10000,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        from strata.common import kafka

        self.topic = topic
        self.spool = spool
        self._q: queue.Queue[bytes] = queue.Queue(maxsize=maxsize)
        # the "audit" profile of the Kafka adapter: idempotent, acks=all, a delivery timeout
        # after which a record is spooled (_DELIVERY_TIMEOUT_MS)
        factory = producer_factory or kafka.new_producer
        self._producer = factory(kafka.producer_config(cluster, "audit"))
        self._inflight: dict[int, bytes] = {}
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.kafka_ok = False
        self._thread = threading.Thread(target=self._run, name="audit-emitter", daemon=True)
        self._thread.start()

    def put(self, value: bytes) -> None:
        try:
            self._q.put_nowait(value)
        except queue.Full:
            self._to_spool([value])

    def _to_spool(self, values: list[bytes]) -> None:
        if not values:
            return
        try:
            self.spool.append(values)
            EVENTS.labels("spooled").inc(len(values))
        except OSError as exc:
            EVENTS.labels("lost").inc(len(values))
            log.error("audit: %d events LOST: the spool cannot be written: %s", len(values), exc)

    def _produce(self, value: bytes) -> None:
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._inflight[seq] = value

        def done(err: Any, _msg: Any) -> None:
            with self._lock:
                v = self._inflight.pop(seq, None)
            if err is None:
                self.kafka_ok = True
                EVENTS.labels("published").inc()
            else:
                self.kafka_ok = False
                if v is not None:
                    self._to_spool([v])

        try:
            self._producer.produce(self.topic, value=value, on_delivery=done)
        except BufferError:  # the client's own queue is full: keep it on disk instead
            with self._lock:
                self._inflight.pop(seq, None)
            self._to_spool([value])

    def _run(self) -> None:
        next_replay = time.monotonic()
        while not self._stop.is_set():
            try:
                try:
                    v = self._q.get(timeout=0.05)
                    self._produce(v)
                    while True:  # whatever else is queued, in one go
                        self._produce(self._q.get_nowait())
                except queue.Empty:
                    pass
                self._producer.poll(0)
                if time.monotonic() >= next_replay:
                    next_replay = time.monotonic() + _REPLAY_EVERY
                    self._replay()
            except Exception as exc:  # never die: the next turn retries
                log.error("audit emitter: %s", exc)
                self._stop.wait(1.0)

    def _replay(self) -> None:
        """Publish spooled records (this process's own file once Kafka answers again, and any
        file left by a process that ended); a file is removed once all of it is acknowledged."""
        if not self.spool.depth():
            return
        if not self.kafka_ok:
            # probe: nothing acknowledged lately; metadata tells whether Kafka is back
            try:
                self._producer.list_topics(self.topic, timeout=2)
                self.kafka_ok = True
            except Exception:  # noqa: BLE001 - still down
                return
        self.spool.rotate()
        for path, f in self.spool.claim():
            values = Spool.read(f)
            failed: list[int] = []

            def done(err: Any, _msg: Any, failed: list[int] = failed) -> None:
                if err is not None:
                    failed.append(1)

            for v in values:
                while True:
                    try:
                        self._producer.produce(self.topic, value=v, on_delivery=done)
                        break
                    except BufferError:
                        self._producer.poll(0.1)
            left = self._producer.flush(_DELIVERY_TIMEOUT_MS / 1000 + 5)
            ok = not failed and left == 0
            Spool.done(path, f, remove=ok)
            if ok:
                EVENTS.labels("published").inc(len(values))
                if values:
                    log.info("audit: %d spooled events published from %s", len(values), path.name)
            else:
                self.kafka_ok = False
                return

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is acknowledged (tests, the CLI)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                idle = not self._inflight
            if idle and self._q.empty():
                return True
            self._producer.poll(0.05)
        return False

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._thread.join(timeout=5)
        rest = []
        while True:
            try:
                rest.append(self._q.get_nowait())
            except queue.Empty:
                break
        with self._lock:
            rest += list(self._inflight.values())
            self._inflight.clear()
        self._to_spool(rest)
        self.spool.rotate()


# ------------------------------------------------------------------------------ process state


@dataclass
class _Process:
    emitter: Emitter
    service: str
    node: str


_CURRENT: _Process | None = None
_PID = 0


def configure(
    settings: Any, service: str, producer_factory: Callable[[dict[str, Any]], Any] | None = None
) -> None:
    """Start this process's emitter (one per process; after a fork, call again)."""
    global _CURRENT, _PID
    spool = Spool(settings.node_home / "audit-spool", f"{service}-{os.getpid()}")
    _CURRENT = _Process(
        Emitter(
            settings,
            settings.audit_topic,
            spool,
            settings.audit_queue,
            producer_factory,
        ),
        service,
        settings.node_name,
    )
    _PID = os.getpid()


def close(timeout: float = 10.0) -> None:
    global _CURRENT
    cur, _CURRENT = _CURRENT, None
    if cur is not None and os.getpid() == _PID:
        cur.emitter.close(timeout)


def flush(timeout: float = 10.0) -> bool:
    cur = _CURRENT
    return cur.emitter.flush(timeout) if cur is not None else True


def enabled() -> bool:
    return _CURRENT is not None and os.getpid() == _PID


def record(
    action: str,
    outcome: str = SUCCESS,
    *,
    interface: str,
    peer: str = "",
    who: pb.AuditWho | None = None,
    what: pb.AuditWhat | None = None,
    dicom_status: int = 0,
    http_status: int = 0,
    grpc_code: str = "",
) -> str:
    """Emit one audit event; returns its id ("" when this process has no emitter). Never
    raises: an audit failure must not fail the operation (it is counted and logged)."""
    cur = _CURRENT
    if cur is None or os.getpid() != _PID:
        return ""
    try:
        ev = pb.AuditEvent(
            action=action,
            outcome=outcome,
            dicom_status=dicom_status,
            http_status=http_status,
            grpc_code=grpc_code,
            who=who or pb.AuditWho(),
            where=pb.AuditWhere(peer_address=peer, node=cur.node, interface=interface),
            what=what or pb.AuditWhat(),
        )
        studies = list(ev.what.study_instance_uids)
        env = envelope(
            ev,
            study_uid=studies[0] if len(studies) == 1 else "",
            service=cur.service,
            node=cur.node,
        )
        cur.emitter.put(env.SerializeToString())
        return env.event_id
    except Exception as exc:  # noqa: BLE001 - never fail the audited operation
        EVENTS.labels("lost").inc()
        log.error("audit: an event could not be built: %s", type(exc).__name__)
        return ""


# ------------------------------------------------------------------------------ who / outcome


def dicom_outcome(status: int) -> str:
    if status == 0x0000:
        return SUCCESS
    if status == 0x0001 or 0xB000 <= status <= 0xBFFF or status == 0xFE00:  # warning, cancel
        return MINOR
    return SERIOUS


def http_outcome(status: int) -> str:
    return SUCCESS if status < 400 else (MINOR if status == 404 else SERIOUS)


def who_dicom(calling_ae: str, called_ae: str, sock: Any = None) -> pb.AuditWho:
    who = pb.AuditWho(calling_ae_title=calling_ae, called_ae_title=called_ae)
    if sock is not None:
        from strata.common.pki import peer_cert

        with contextlib.suppress(Exception):
            cert = peer_cert(sock)
            if cert is not None:
                who.cert_subject, who.cert_fingerprint = cert.subject, cert.fingerprint
    return who


def token_claims(authorization: str | None) -> dict[str, Any]:
    """The claims of a bearer token, NOT verified: only for naming who made a request that the
    auth layer (common/auth.py) has already accepted, or who presented a refused token (then
    the names are what the token claims, and marked so by the auth-failure action)."""
    if not authorization:
        return {}
    try:
        token = authorization.strip().split(" ", 1)[1].strip()
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return claims if isinstance(claims, dict) else {}
    except Exception:  # noqa: BLE001 - not a JWT: nobody can be named
        return {}


def who_bearer(authorization: str | None) -> pb.AuditWho:
    c = token_claims(authorization)
    return pb.AuditWho(
        user=str(c.get("sub", "")),
        client_id=str(c.get("azp") or c.get("client_id") or ""),
    )


def who_operator() -> pb.AuditWho:
    import getpass

    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001
        user = str(os.getuid())
    return pb.AuditWho(user=user)


# ------------------------------------------------------------------------------ stores


@dataclass
class _Study:
    patient_ids: set[str] = field(default_factory=set)
    stored: int = 0
    failed: int = 0
    last_failure: int = 0


class Transfers:
    """The instances of one association (or STOW-RS request), per study: one "store" event per
    study when it ends (PS3.15 A.5.3.2, DICOM Instances Transferred)."""

    def __init__(self, interface: str, peer: str, who: pb.AuditWho, sop_class: str = "") -> None:
        self.interface, self.peer, self.who = interface, peer, who
        self._studies: dict[str, _Study] = {}
        self._lock = threading.Lock()
        self._emitted = False

    def add(self, outcome: Any) -> None:
        """An ingest Outcome (ingest/store.py): its event names the study and patient."""
        env = outcome.event
        study, patient = "", ""
        if env is not None and env.WhichOneof("payload") == "instance_stored":
            st = env.instance_stored
            study, patient = st.study_instance_uid, st.patient.patient_id
        elif env is not None:
            study = env.study_instance_uid
        with self._lock:
            s = self._studies.setdefault(study, _Study())
            if patient:
                s.patient_ids.add(patient)
            if outcome.ok:
                s.stored += 1
            else:
                s.failed += 1
                s.last_failure = outcome.status

    def emit(self, http_status: int = 0) -> None:
        with self._lock:
            if self._emitted:
                return
            self._emitted = True
            studies = dict(self._studies)
        if not studies and http_status >= 400:  # a STOW-RS refused before any object
            record(
                STORE,
                SERIOUS,
                interface=self.interface,
                peer=self.peer,
                who=self.who,
                http_status=http_status,
            )
        for study, s in studies.items():
            outcome = SUCCESS if not s.failed else (MINOR if s.stored else SERIOUS)
            record(
                STORE,
                outcome,
                interface=self.interface,
                peer=self.peer,
                who=self.who,
                what=pb.AuditWhat(
                    patient_ids=sorted(s.patient_ids),
                    study_instance_uids=[study] if study else [],
                    instances=s.stored + s.failed,
                    detail=f"{s.stored} stored, {s.failed} refused" if s.failed else "",
                ),
                dicom_status=s.last_failure if self.interface == "dicom" else 0,
                http_status=http_status,
            )


_TRANSFERS: contextvars.ContextVar[Transfers | None] = contextvars.ContextVar(
    "audit_transfers", default=None
)


def begin_transfers(interface: str, peer: str, who: pb.AuditWho) -> Transfers | None:
    """Collect this thread's (context's) stores until ``end_transfers``; None without emitter."""
    if not enabled():
        return None
    t = Transfers(interface, peer, who)
    _TRANSFERS.set(t)
    return t


def note_stored(outcome: Any) -> None:
    """One stored or refused instance, into the current Transfers (no-op outside one)."""
    t = _TRANSFERS.get()
    if t is not None:
        try:
            t.add(outcome)
        except Exception as exc:  # noqa: BLE001 - never fail the store
            log.error("audit: a store could not be noted: %s", type(exc).__name__)


def end_transfers(t: Transfers | None, http_status: int = 0) -> None:
    if t is not None:
        _TRANSFERS.set(None)
        t.emit(http_status)


def in_context(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` bound to the caller's context (the current Transfers), to run in a thread pool."""
    ctx = contextvars.copy_context()
    return lambda *a, **kw: ctx.run(fn, *a, **kw)


# ------------------------------------------------------------------------------ refusals

_RJ_REASONS = {
    1: "no reason given",
    2: "application context not supported / protocol version",
    3: "calling AE title not recognized",
    7: "called AE title not recognized",
}


def association_rejected(
    peer: str, calling_ae: str, called_ae: str, reason: int, sock: Any
) -> None:
    """A DICOM association refused with A-ASSOCIATE-RJ (unknown AE, certificate not bound)."""
    record(
        ASSOCIATION_REJECTED,
        SERIOUS,
        interface="dicom",
        peer=peer,
        who=who_dicom(calling_ae, called_ae, sock),
        what=pb.AuditWhat(detail=f"A-ASSOCIATE-RJ reason {reason}: {_RJ_REASONS.get(reason, '')}"),
    )


def tls_refused(peer: str, why: str) -> None:
    """A DICOM TLS handshake that failed (no, untrusted or expired client certificate)."""
    record(
        ASSOCIATION_REJECTED,
        SERIOUS,
        interface="dicom",
        peer=peer,
        what=pb.AuditWhat(detail=f"TLS handshake failed: {why}"),
    )


def auth_failed(
    interface: str, peer: str, authorization: str | None, error: str, method: str, code: Any
) -> None:
    """A bearer token refused (missing, invalid, expired, lacking the scope). ``who`` holds what
    the token claims (unverified: it was refused) so repeated failures can be traced."""
    record(
        AUTH_FAILURE,
        SERIOUS,
        interface=interface,
        peer=peer,
        who=who_bearer(authorization),
        what=pb.AuditWhat(detail=error[:200], method=method),
        http_status=code if isinstance(code, int) else 0,
        grpc_code="" if isinstance(code, int) else str(code),
    )


def grpc_auth_failed(
    authorization: str | None, error: str, method: str, code: str, peer: str
) -> None:
    auth_failed("grpc", peer, authorization, error, method, code)


def record_cli(
    settings: Any,
    action: str,
    what: pb.AuditWhat,
    user: str = "",
    outcome: str = SUCCESS,
) -> None:
    """An operator's command (``strata hold``, ``strata outbox redrive``...): recorded and
    waited for (a short-lived process: what Kafka does not acknowledge in time is spooled in
    this node's audit spool, which the node's services replay)."""
    import socket

    own = not enabled()
    if own:
        configure(settings, "cli")
    try:
        who = who_operator()
        if user and user != who.user:
            who.user, who.client_id = user, f"login:{who.user}"
        record(action, outcome, interface="cli", peer=socket.gethostname(), who=who, what=what)
    finally:
        if own:
            close(timeout=15)


def spool_files(settings: Any) -> int:
    """Spool files of this node not yet published (0 when the audit trail is caught up): shown
    in the ingest and index nodes' /healthz; non-zero while Kafka is unreachable."""
    d = Path(settings.node_home) / "audit-spool"
    return sum(1 for p in d.glob("*.spool") if p.stat().st_size) if d.is_dir() else 0
