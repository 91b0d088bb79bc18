"""The association acceptor the archive's DICOM endpoints share, on the lean upper layer
(``common/dul.py``): a listening socket with one thread per association, association
negotiation (protocol version, application context, calling-AE allow-list, association limit),
the PDU loop and the orderly or abortive end of an association.

An endpoint subclasses ``Association``: ``negotiate`` sets each presentation context's result,
``pdv`` receives every PDV (commands and dataset fragments) in order. Anything PS3.8 does not
allow aborts the association (A-ABORT, service-provider) and leaves the node serving the
others; an association that fails with a bug is logged and closed, never the node.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import dul
from common.dimse import nodelay

log = logging.getLogger(__name__)

# The archive's implementation class UID (generated once under pydicom's root from the name).
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.10563418447183585637484632869436316403"
IMPLEMENTATION_VERSION = "STRATA_1"
_WHOLE_PDU = 4 << 20  # P-DATA-TF up to this size are read whole, larger ones streamed
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Config:
    # No AE title check: the association is accepted whatever called AE the requestor names,
    # and the A-ASSOCIATE-AC echoes it (as pynetdicom's acceptor did).
    max_pdu: int
    network_timeout: float
    acse_timeout: float
    allow_list: list[str] | None = None
    max_associations: int = 64


class _SocketRaw(io.RawIOBase):
    """The socket as a raw stream for io.BufferedReader. Unlike socket.makefile's SocketIO,
    a read timeout does not make it unreadable for good ("cannot read from timed out
    object"): _serve reads on after a timeout while an operation runs (the requestor is
    silent then, waiting for our responses), so an operation longer than the network
    timeout no longer ends its association."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        return self._sock.recv_into(b)


class Association:
    """One accepted connection, served by its own thread (``run``)."""

    def __init__(self, sock: socket.socket, peer: tuple[str, int], server: Server) -> None:
        self.sock = sock
        self.peer = f"{peer[0]}:{peer[1]}"
        self.server = server
        self.cfg: Config = server.cfg
        self.rq: dul.AssociateRQ | None = None
        self.contexts: dict[int, dul.PresentationContext] = {}
        self.peer_max = 0
        self._send_lock = threading.Lock()

    # ---------------------------------------------------------------- to override
    def negotiate(self, rq: dul.AssociateRQ) -> None:
        """Set each presentation context's result (PS3.8 9.3.3.2) in place."""
        raise NotImplementedError

    def role_reply(self, sop_class: str, scu: int, scp: int) -> tuple[int, int]:
        """The answer to a proposed SCP/SCU role selection (default: requestor may be SCU)."""
        return scu & 1, 0

    def pdv(self, pc_id: int, mch: int, data: memoryview) -> None:
        raise NotImplementedError

    def counted(self, outcome: str) -> None:
        """An association was 'accepted' or 'rejected' (for metrics)."""

    def busy(self) -> bool:
        """Whether an operation is running: then silence from the peer is no timeout."""
        return False

    def before_release(self) -> None:
        """Called on A-RELEASE-RQ before the A-RELEASE-RP is sent."""

    def ended(self) -> None:
        """Called once when the association is over, whatever the way."""

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> None:
        f = io.BufferedReader(_SocketRaw(self.sock), 1 << 18)
        try:
            if self._associate(f):
                self._serve(f)
        except dul.ProtocolError as exc:
            log.warning("association from %s aborted: %s", self.peer, exc)
            self.send(dul.abort(dul.ABORT_SOURCE_PROVIDER, exc.reason), quiet=True)
        except TimeoutError:
            log.warning("association from %s aborted: no activity", self.peer)
            self.send(dul.abort(), quiet=True)
        except (ConnectionError, OSError) as exc:
            log.info("association from %s ended: %s", self.peer, exc)
        finally:
            self.ended()
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

    def send(self, data: bytes | bytearray, quiet: bool = False) -> None:
        """Write whole PDUs (one writer at a time: responses and aborts never interleave)."""
        with self._send_lock:
            if not quiet:
                self.sock.sendall(data)
                return
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
            self.send(
                dul.associate_rj(
                    dul.RJ_TRANSIENT, dul.RJ_SOURCE_PRESENTATION, dul.RJ_LOCAL_LIMIT_EXCEEDED
                ),
                quiet=True,
            )
            self.counted("rejected")
            log.warning("association from %s rejected: too many associations", self.peer)
            return False
        if reject is not None:
            self.send(dul.associate_rj(dul.RJ_PERMANENT, *reject), quiet=True)
            self.counted("rejected")
            log.warning(
                "association rejected for calling AE %s (reason %d)", rq.calling_ae, reject[1]
            )
            return False
        self.negotiate(rq)
        self.rq = rq
        self.peer_max = rq.max_length
        self.contexts = {pc.id: pc for pc in rq.contexts if pc.result == dul.PC_ACCEPTANCE}
        self.send(
            dul.associate_ac(
                rq, self.cfg.max_pdu, IMPLEMENTATION_UID, IMPLEMENTATION_VERSION, self.role_reply
            )
        )
        self.counted("accepted")
        return True

    def _serve(self, f: Any) -> None:
        self.sock.settimeout(self.cfg.network_timeout)
        while True:
            try:
                pdu_type, length = dul.read_pdu_header(f, self.cfg.max_pdu)
            except TimeoutError:
                if self.busy():  # the peer waits for our responses: not idle
                    continue
                raise
            if pdu_type == dul.P_DATA_TF:
                if length <= _WHOLE_PDU:
                    for pc_id, mch, data in dul.iter_pdvs(dul.read_exact(f, length)):
                        self.pdv(pc_id, mch, data)
                else:
                    self._stream_pdvs(f, length)
                continue
            dul.read_exact(f, length)  # the 4 reserved bytes of A-RELEASE-RQ / A-ABORT
            if pdu_type == dul.RELEASE_RQ:
                self.before_release()
                self.send(dul.release_rp())
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
        its dataset fragments are handed on in chunks, never whole into memory."""
        remaining = length
        while remaining > 0:
            size, pc_id, mch = dul.read_pdv_header(f)
            remaining -= 6 + size
            if remaining < 0:
                raise dul.ProtocolError("PDV item length out of range")
            if mch & 0x01 or size <= _CHUNK:  # a command (small) or a small fragment
                self.pdv(pc_id, mch, memoryview(dul.read_exact(f, size)))
                continue
            left = size
            while left > 0:
                n = min(left, _CHUNK)
                left -= n
                last = left == 0 and mch & 0x02
                self.pdv(pc_id, 0x02 if last else 0x00, memoryview(dul.read_exact(f, n)))


class Server:
    """The listening socket (SO_REUSEPORT: several worker processes may share the port) and
    one thread per association."""

    def __init__(
        self,
        cfg: Config,
        address: Any,
        # Any: each SCP's Association takes its own Server subclass
        association: Callable[[socket.socket, tuple[str, int], Any], Association],
    ) -> None:
        self.cfg = cfg
        self._association = association
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
            self._association(conn, peer, self).run()
        except Exception:  # a bug must not take the node down with the other associations
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
