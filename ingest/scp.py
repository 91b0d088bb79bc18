"""The ingest SCP: C-ECHO and C-STORE acceptor on the lean upper layer (``common/dul.py``).

One thread per association reads whole PDUs from a buffered socket and streams each C-STORE
dataset straight into a Part 10 spool file in the hot tier's incoming directory, hashing it on
the way; when the last fragment arrives the store service (``ingest/store.py``) makes the
object and its event durable and says which status to answer. No reactor, no polling, no
dataset objects on the wire path: the association costs what its bytes cost.

Negotiation is what the archive stores: the Verification SOP class and every storage SOP
class pynetdicom knows, each with any transfer syntax it knows (the requestor's order decides).
An allow-list of calling AE titles rejects unknown callers with A-ASSOCIATE-RJ (permanent,
service-user, calling AE title not recognized). Anything PS3.8 does not allow aborts the
association (A-ABORT, service-provider) and leaves the node serving the others.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

from common import dul
from common.dimse import nodelay
from ingest import metrics, statuses
from ingest.store import Received, StoreService

log = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"
# The archive's implementation class UID (generated once under pydicom's root from the name).
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.10563418447183585637484632869436316403"
IMPLEMENTATION_VERSION = "STRATA_1"
_WHOLE_PDU = 4 << 20  # P-DATA-TF up to this size are read whole, larger ones streamed
_CHUNK = 1 << 20
ABSTRACT_SYNTAXES = frozenset(
    [VERIFICATION] + [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
)
TRANSFER_SYNTAXES = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)


@dataclass(frozen=True)
class Config:
    # No AE title: like pynetdicom's acceptor before, the association is accepted whatever
    # called AE the requestor names, and the A-ASSOCIATE-AC echoes it.
    max_pdu: int
    network_timeout: float
    acse_timeout: float
    allow_list: list[str] | None = None
    max_associations: int = 64


def negotiate(rq: dul.AssociateRQ) -> None:
    """Set each presentation context's result (PS3.8 9.3.3.2) in place."""
    for pc in rq.contexts:
        if pc.abstract_syntax not in ABSTRACT_SYNTAXES:
            pc.result = dul.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
            continue
        ts = next((t for t in pc.transfer_syntaxes if t in TRANSFER_SYNTAXES), "")
        if ts:
            pc.result, pc.transfer_syntax = dul.PC_ACCEPTANCE, ts
        else:
            pc.result = dul.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED


def respond(service: StoreService, rx: Received) -> tuple[int, str]:
    """Store ``rx`` and account for it: (status, error comment)."""
    t0 = time.perf_counter()
    outcome = service.store(rx)
    if outcome.ok:
        metrics.INSTANCES.labels("duplicate" if outcome.duplicate else "stored").inc()
        if outcome.event is not None:
            metrics.BYTES.inc(outcome.event.instance_stored.size_bytes)
        comment = ""
    else:
        metrics.INSTANCES.labels("refused").inc()
        metrics.REFUSED.labels(outcome.reason or "other").inc()
        log.warning(
            "refused sop=%s from %s: 0x%04X %s",
            rx.sop_instance_uid,
            rx.calling_ae,
            outcome.status,
            outcome.comment,
        )
        comment = outcome.comment[:64]
    metrics.STORE_SECONDS.observe(time.perf_counter() - t0)
    return outcome.status, comment


class _Spool:
    """One C-STORE dataset being received: a Part 10 file in the incoming directory."""

    def __init__(self, incoming: Path, meta: bytes) -> None:
        self.path = incoming / f"rx-{uuid.uuid4().hex}"
        self._f = open(self.path, "wb", buffering=1 << 18)  # noqa: SIM115 - closed in finish
        self._h = hashlib.sha256(meta)
        self.size = len(meta)
        self._f.write(meta)

    def write(self, data: memoryview) -> None:
        self._f.write(data)
        self._h.update(data)
        self.size += len(data)

    def finish(self) -> str:
        self._f.close()
        return self._h.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        self.path.unlink(missing_ok=True)


class Association:
    def __init__(self, sock: socket.socket, peer: tuple[str, int], server: StoreServer) -> None:
        self.sock = sock
        self.peer = f"{peer[0]}:{peer[1]}"
        self.server = server
        self.cfg = server.cfg
        self.rq: dul.AssociateRQ | None = None
        self.contexts: dict[int, dul.PresentationContext] = {}
        self.peer_max = 0
        self._cmd = bytearray()
        self._request: dict[int, bytes] | None = None
        self._spool: _Spool | None = None
        self._rx_pc = 0

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> None:
        f = self.sock.makefile("rb", buffering=1 << 18)
        try:
            if self._associate(f):
                self._serve(f)
        except dul.ProtocolError as exc:
            log.warning("association from %s aborted: %s", self.peer, exc)
            self._send(dul.abort(dul.ABORT_SOURCE_PROVIDER, exc.reason))
        except TimeoutError:
            log.warning("association from %s aborted: no activity", self.peer)
            self._send(dul.abort())
        except (ConnectionError, OSError) as exc:
            log.info("association from %s ended: %s", self.peer, exc)
        finally:
            if self._spool is not None:  # never acknowledged: never stored
                self._spool.discard()
            self._await_close(f)
            with contextlib.suppress(OSError):
                f.close()
            with contextlib.suppress(OSError):
                self.sock.close()

    def _await_close(self, f: Any) -> None:
        """PS3.8 Sta13: after an A-ASSOCIATE-RJ, A-RELEASE-RP or A-ABORT the requestor closes
        the connection; wait for that (ARTIM, 2 s) instead of closing first, which can reset
        the connection before the peer has read the last PDU."""
        with contextlib.suppress(OSError, ValueError):
            self.sock.settimeout(2.0)
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and f.read1(65536):
                pass

    def _send(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(data)

    def _associate(self, f: Any) -> bool:
        self.sock.settimeout(self.cfg.acse_timeout)
        pdu_type, body = dul.read_pdu(f, 1 << 16)
        if pdu_type != dul.ASSOCIATE_RQ:
            raise dul.ProtocolError("expected A-ASSOCIATE-RQ", dul.ABORT_UNEXPECTED_PDU)
        rq = dul.parse_associate_rq(body)
        reject = None
        if not rq.protocol_version & 1:
            reject = (dul.RJ_SOURCE_ACSE, dul.RJ_PROTOCOL_VERSION)
        elif rq.application_context != dul.APPLICATION_CONTEXT:
            reject = (dul.RJ_SOURCE_USER, dul.RJ_APP_CONTEXT_NOT_SUPPORTED)
        elif self.cfg.allow_list is not None and rq.calling_ae not in self.cfg.allow_list:
            reject = (dul.RJ_SOURCE_USER, dul.RJ_CALLING_AE_NOT_RECOGNIZED)
        if reject is None and self.server.active() > self.cfg.max_associations:
            self._send(
                dul.associate_rj(
                    dul.RJ_TRANSIENT, dul.RJ_SOURCE_PRESENTATION, dul.RJ_LOCAL_LIMIT_EXCEEDED
                )
            )
            metrics.ASSOCIATIONS.labels("rejected").inc()
            log.warning("association from %s rejected: too many associations", self.peer)
            return False
        if reject is not None:
            self._send(dul.associate_rj(dul.RJ_PERMANENT, *reject))
            metrics.ASSOCIATIONS.labels("rejected").inc()
            log.warning(
                "association rejected for calling AE %s (reason %d)", rq.calling_ae, reject[1]
            )
            return False
        negotiate(rq)
        self.rq = rq
        self.peer_max = rq.max_length
        self.contexts = {pc.id: pc for pc in rq.contexts if pc.result == dul.PC_ACCEPTANCE}
        self.sock.sendall(
            dul.associate_ac(rq, self.cfg.max_pdu, IMPLEMENTATION_UID, IMPLEMENTATION_VERSION)
        )
        metrics.ASSOCIATIONS.labels("accepted").inc()
        return True

    def _serve(self, f: Any) -> None:
        self.sock.settimeout(self.cfg.network_timeout)
        while True:
            pdu_type, length = dul.read_pdu_header(f, self.cfg.max_pdu)
            if pdu_type == dul.P_DATA_TF:
                if length <= _WHOLE_PDU:
                    for pc_id, mch, data in dul.iter_pdvs(dul.read_exact(f, length)):
                        self._pdv(pc_id, mch, data)
                else:
                    self._stream_pdvs(f, length)
                continue
            dul.read_exact(f, length)  # the 4 reserved bytes of A-RELEASE-RQ / A-ABORT
            if pdu_type == dul.RELEASE_RQ:
                self.sock.sendall(dul.release_rp())
                return
            elif pdu_type == dul.ABORT:
                log.info("association from %s aborted by the peer", self.peer)
                return
            else:
                raise dul.ProtocolError(
                    f"unexpected PDU type 0x{pdu_type:02X}", dul.ABORT_UNEXPECTED_PDU
                )

    def _stream_pdvs(self, f: Any, length: int) -> None:
        """A large P-DATA-TF (a requestor told "unlimited" may send a whole object in one):
        its dataset fragments go to the spool file in chunks, never whole into memory."""
        remaining = length
        while remaining > 0:
            size, pc_id, mch = dul.read_pdv_header(f)
            remaining -= 6 + size
            if remaining < 0:
                raise dul.ProtocolError("PDV item length out of range")
            if mch & 0x01 or size <= _CHUNK:  # a command (small) or a small fragment
                self._pdv(pc_id, mch, memoryview(dul.read_exact(f, size)))
                continue
            left = size
            while left > 0:
                n = min(left, _CHUNK)
                left -= n
                last = left == 0 and mch & 0x02
                self._pdv(pc_id, 0x02 if last else 0x00, memoryview(dul.read_exact(f, n)))

    # ---------------------------------------------------------------- DIMSE
    def _pdv(self, pc_id: int, mch: int, data: memoryview) -> None:
        pc = self.contexts.get(pc_id)
        if pc is None:
            raise dul.ProtocolError(f"presentation context {pc_id} was not accepted")
        if mch & 0x01:  # command fragment
            if self._request is not None:
                raise dul.ProtocolError("command while a dataset was expected")
            self._cmd += data
            if mch & 0x02:
                cmd = dul.decode_command(self._cmd)
                self._cmd = bytearray()
                self._command(pc, cmd)
            return
        # dataset fragment
        if self._request is None or pc_id != self._rx_pc:
            raise dul.ProtocolError("dataset without a command on its presentation context")
        if self._spool is not None:
            self._spool.write(data)
        if mch & 0x02:
            request, self._request = self._request, None
            self._store(pc, request)

    def _command(self, pc: dul.PresentationContext, cmd: dict[int, bytes]) -> None:
        field = dul.us(cmd, dul.COMMAND_FIELD)
        message_id = dul.us(cmd, dul.MESSAGE_ID, 0)
        has_dataset = dul.us(cmd, dul.COMMAND_DATASET_TYPE, dul.NO_DATASET) != dul.NO_DATASET
        if field == dul.C_ECHO_RQ:
            self._reply(pc.id, dul.C_ECHO_RSP, message_id, pc.abstract_syntax, 0x0000)
            return
        if field == dul.C_STORE_RQ:
            sop_class = dul.text(cmd, dul.AFFECTED_SOP_CLASS_UID)
            sop_instance = dul.text(cmd, dul.AFFECTED_SOP_INSTANCE_UID)
            if not has_dataset:
                self._reply(
                    pc.id,
                    dul.C_STORE_RSP,
                    message_id,
                    sop_class,
                    statuses.CANNOT_UNDERSTAND_UNDECODABLE,
                    sop_instance,
                    "C-STORE without a dataset",
                )
                return
            self._request = cmd
            self._rx_pc = pc.id
            meta = dul.file_meta(
                sop_class,
                sop_instance,
                pc.transfer_syntax,
                IMPLEMENTATION_UID,
                IMPLEMENTATION_VERSION,
                self.rq.calling_ae if self.rq else "",
            )
            self._spool = _Spool(self.server.incoming, meta)
            return
        if field == dul.C_CANCEL_RQ:
            return  # nothing cancellable runs here (a C-STORE completes or fails)
        raise dul.ProtocolError(f"DIMSE command 0x{field:04X} is not served by ingest", 0)

    def _store(self, pc: dul.PresentationContext, cmd: dict[int, bytes]) -> None:
        spool, self._spool = self._spool, None
        assert spool is not None and self.rq is not None
        sha = spool.finish()
        sop_class = dul.text(cmd, dul.AFFECTED_SOP_CLASS_UID)
        sop_instance = dul.text(cmd, dul.AFFECTED_SOP_INSTANCE_UID)
        rx = Received(
            path=spool.path,
            # The SOP class of the presentation context: a command naming another one does
            # not match any dataset ("" never equals a SOP Class UID) and is refused.
            sop_class_uid=sop_class if sop_class == pc.abstract_syntax else "",
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=pc.transfer_syntax,
            calling_ae=self.rq.calling_ae,
            # The AE title the modality addressed, which routing rules match on.
            called_ae=self.rq.called_ae,
            peer_address=self.peer,
            size=spool.size,
            sha256=sha,
        )
        try:
            status, comment = respond(self.server.service, rx)
        finally:
            spool.path.unlink(missing_ok=True)  # moved into the tier or quarantine, or refused
        self._reply(
            pc.id,
            dul.C_STORE_RSP,
            dul.us(cmd, dul.MESSAGE_ID, 0),
            sop_class,
            status,
            sop_instance,
            comment,
        )

    def _reply(
        self,
        pc_id: int,
        field: int,
        message_id: int,
        sop_class: str,
        status: int,
        sop_instance: str = "",
        comment: str = "",
    ) -> None:
        cmd = dul.response(field, message_id, sop_class, status, sop_instance, comment)
        self.sock.sendall(dul.p_data(pc_id, cmd, True, self.peer_max))


class StoreServer:
    """The listening socket (SO_REUSEPORT: several worker processes share the port) and one
    thread per association."""

    def __init__(self, cfg: Config, service: StoreService, incoming: Path, address: Any) -> None:
        self.cfg = cfg
        self.service = service
        self.incoming = incoming
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        self._sock.bind(address)
        self._sock.listen(128)
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._acceptor = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self._acceptor.start()

    def active(self) -> int:
        with self._lock:
            return len(self._threads)

    @property
    def active_associations(self) -> int:
        return self.active()

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.05)
                continue
            nodelay(conn)
            t = threading.Thread(target=self._run, args=(conn, peer), name="assoc", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _run(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        try:
            Association(conn, peer, self).run()
        except Exception:  # a bug must not take the worker down with the other associations
            log.exception("association from %s:%d failed", *peer)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def shutdown(self) -> None:
        """Stop accepting; associations in progress go on (drained by the caller)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
