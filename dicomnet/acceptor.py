"""The association acceptor the archive's DICOM endpoints share, on the lean upper layer
(``dicomnet/dul.py``): a listening socket with one thread per association, association
negotiation (protocol version, application context, calling-AE allow-list, association limit),
the PDU loop and the orderly or abortive end of an association.

Nothing a peer sends can hold the node (docs/network.md): per-peer-address and total caps
are checked in the accept loop before a thread is spent (over a cap: an A-ASSOCIATE-RJ,
transient, local-limit-exceeded, sent without a thread; at the total cap an idle connection of
the peer holding the most is evicted first); the whole A-ASSOCIATE-RQ must arrive within the
ARTIM deadline of the connect, every PDU must complete within a deadline of its first byte,
and the idle timeout ends a silent association. Every end of an association half-closes,
drains what the peer still sends (to EOF or a short deadline) and only then closes, so the
last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT) is not lost to a reset by unread bytes.

An endpoint subclasses ``Association``: ``negotiate`` sets each presentation context's result,
``pdv`` receives every PDV (commands and dataset fragments) in order. Anything PS3.8 does not
allow aborts the association (A-ABORT, service-provider) and leaves the node serving the
others; an association that fails with a bug is logged and closed, never the node.
"""

from __future__ import annotations

import contextlib
import io
import logging
import queue
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from strata.dicomnet import dul, tls
from strata.dicomnet.sockets import nodelay

log = logging.getLogger(__name__)

# The archive's implementation class UID (generated once under pydicom's root from the name).
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.10563418447183585637484632869436316403"
IMPLEMENTATION_VERSION = "STRATA_1"
_WHOLE_PDU = 4 << 20  # P-DATA-TF up to this size are read whole, larger ones streamed
_CHUNK = 1 << 20
_LINGER = 2.0  # seconds a closing connection is drained before it is closed (PS3.8 ARTIM)
_MAX_LINGERING = 1024  # connections drained at once by the lingerer; beyond, closed at once
_MIN_TIMEOUT = 1.0  # the least socket timeout a deadline sets (it is shared with sends)
_DEADLINE_STEP = 4 << 20  # each further 4 MiB of a PDU adds one more PDU deadline


@dataclass(frozen=True)
class Config:
    # called_ae None: no called-AE check (the A-ASSOCIATE-AC echoes whatever is named);
    # else an association naming another called AE is rejected (PS3.8 reason 7).
    max_pdu: int
    network_timeout: float  # idle: seconds without a byte between PDUs before an A-ABORT
    acse_timeout: float  # unused here since artim_timeout bounds the whole A-ASSOCIATE-RQ
    allow_list: list[str] | None = None
    max_associations: int = 64  # connections of this process (threads), all peers
    max_per_peer: int = 16  # connections of this process from one peer address
    artim_timeout: float = 10.0  # the whole A-ASSOCIATE-RQ within this many s of connect
    pdu_timeout: float = 30.0  # a PDU whole within this many s of its first byte (per 4 MiB)
    # DICOM TLS (dicomnet/tls.py): every connection's handshake runs on its own thread within
    # the ARTIM deadline of the connect; None: plain TCP (no per-PDU cost added).
    tls: ssl.SSLContext | None = None
    called_ae: str | None = None
    # calling AE -> certificate binding (dicomnet/tls.binding_matches); a bound AE must
    # present that certificate. require_binding: an AE without a binding is refused on TLS.
    cert_bindings: dict[str, str] | None = None
    require_binding: bool = False


class _Conn:
    """One accepted connection as the accept loop accounts for it (per peer address)."""

    __slots__ = ("sock", "host", "since", "evictable", "evicted")

    def __init__(self, sock: socket.socket, host: str) -> None:
        self.sock = sock
        self.host = host
        self.since = time.monotonic()
        self.evictable = True  # awaiting its A-ASSOCIATE-RQ, or idle between messages
        self.evicted = False


class _SocketRaw(io.RawIOBase):
    """The socket as a raw stream for io.BufferedReader. Unlike socket.makefile's SocketIO,
    a read timeout does not make it unreadable for good ("cannot read from timed out
    object"): _serve reads on after a timeout while an operation runs (the requestor is
    silent then, waiting for our responses), so an operation longer than the network
    timeout no longer ends its association."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self._sock = sock
        self.deadline = 0.0  # monotonic time by which the current read must be done (0: none)
        self.timeout: float | None = None  # the socket timeout in force (None: as set)

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.deadline:  # one clock read per recv; the timeout is shortened near the end
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            # Never below a second: the socket timeout also bounds our sends (responses, and
            # the Q/R worker's writes), which must not fail for the peer's slowness.
            left = max(left, _MIN_TIMEOUT)
            if self.timeout is None or left < self.timeout:
                self._sock.settimeout(left)
                self.timeout = left
        return self._sock.recv_into(b)

    def set_timeout(self, seconds: float) -> None:
        if seconds != self.timeout:
            self._sock.settimeout(seconds)
            self.timeout = seconds


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
        self.conn: _Conn | None = None  # set by the server (admission accounting)
        self._raw: _SocketRaw | None = None

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

    def rejected(self, rq: dul.AssociateRQ, reason: int) -> None:
        """An A-ASSOCIATE-RQ was answered A-ASSOCIATE-RJ with ``reason`` (the SCPs record it
        in the audit trail)."""

    def busy(self) -> bool:
        """Whether an operation is running: then silence from the peer is no timeout."""
        return False

    def between_messages(self) -> bool:
        """Whether no DIMSE message is half received or being served: the association may
        then be evicted for a newcomer when the node is at its association limit."""
        return not self.busy()

    def before_release(self) -> None:
        """Called on A-RELEASE-RQ before the A-RELEASE-RP is sent."""

    def ended(self) -> None:
        """Called once when the association is over, whatever the way."""

    # ---------------------------------------------------------------- lifecycle
    def run(self) -> None:
        self._raw = _SocketRaw(self.sock)
        f = io.BufferedReader(self._raw, 1 << 18)
        try:
            if self._associate(f):
                self._serve(f)
        except dul.ProtocolError as exc:
            log.warning("association from %s aborted: %s", self.peer, exc)
            self.send(dul.abort(dul.ABORT_SOURCE_PROVIDER, exc.reason), quiet=True)
        except TimeoutError as exc:
            why = "deadline passed" if str(exc) == "deadline passed" else "no activity"
            log.warning("association from %s aborted: %s (%s)", self.peer, why, self._phase)
            self.send(dul.abort(), quiet=True)
        except (ConnectionError, OSError) as exc:
            if self.conn is not None and self.conn.evicted:
                log.warning("association from %s evicted: association limit", self.peer)
                self.send(dul.abort(), quiet=True)
            else:
                log.info("association from %s ended: %s", self.peer, exc)
        except Exception:  # a bug, or input nothing above foresaw: abort this one only
            log.exception("association from %s failed: aborting it", self.peer)
            self.send(dul.abort(), quiet=True)
        finally:
            try:
                self.ended()
            finally:
                self._raw.deadline = 0.0
                _close_gracefully(self.sock, f)

    _phase = "awaiting A-ASSOCIATE-RQ"

    def send(self, data: bytes | bytearray, quiet: bool = False) -> None:
        """Write whole PDUs (one writer at a time: responses and aborts never interleave)."""
        with self._send_lock:
            if not quiet:
                self.sock.sendall(data)
                return
            with contextlib.suppress(OSError):
                self.sock.sendall(data)

    def _associate(self, f: Any) -> bool:
        raw = self._raw
        assert raw is not None
        # ARTIM: the whole A-ASSOCIATE-RQ within artim_timeout of the connect, however
        # slowly its bytes trickle in.
        since = self.conn.since if self.conn is not None else time.monotonic()
        raw.deadline = since + self.cfg.artim_timeout
        raw.set_timeout(self.cfg.artim_timeout)
        pdu_type, body = dul.read_pdu(f, 1 << 16)
        raw.deadline = 0.0
        raw.set_timeout(self.cfg.network_timeout)
        if self.conn is not None:
            self.conn.evictable = False
        self._phase = "associated"
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
        elif self.cfg.called_ae is not None and rq.called_ae != self.cfg.called_ae:
            reject = (dul.RJ_SOURCE_USER, dul.RJ_CALLED_AE_NOT_RECOGNIZED)
        elif self.cfg.tls is not None and not self._certificate_fits(rq.calling_ae):
            reject = (dul.RJ_SOURCE_USER, dul.RJ_CALLING_AE_NOT_RECOGNIZED)
        if reject is not None:
            self.send(dul.associate_rj(dul.RJ_PERMANENT, *reject), quiet=True)
            self.counted("rejected")
            self.rejected(rq, reject[1])
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

    def _certificate_fits(self, calling_ae: str) -> bool:
        """Whether the TLS peer's certificate is the one bound to ``calling_ae`` (a bound AE
        must present it; an unbound AE passes unless bindings are required)."""
        bindings = self.cfg.cert_bindings or {}
        binding = bindings.get(calling_ae)
        if binding is None:
            return not self.cfg.require_binding
        cert = tls.peer_cert(self.sock)
        if cert is None or not tls.binding_matches(binding, cert):
            log.warning(
                "association from %s: the client certificate is not the one bound to the "
                "calling AE %s",
                self.peer,
                calling_ae,
            )
            return False
        return True

    def _serve(self, f: Any) -> None:
        raw = self._raw
        assert raw is not None
        idle, per_pdu = self.cfg.network_timeout, self.cfg.pdu_timeout
        conn = self.conn
        while True:
            # Between PDUs: the idle timeout. From a PDU's first byte: its deadline (a peer
            # trickling bytes holds its slot no longer than that).
            raw.deadline = 0.0
            raw.set_timeout(idle)
            if conn is not None:
                conn.evictable = self.between_messages()
            try:
                first = f.read(1)
            except TimeoutError:
                if self.busy():  # the peer waits for our responses: not idle
                    continue
                raise
            if conn is not None:
                conn.evictable = False
            if not first:
                raise ConnectionError("connection closed by the peer")
            raw.deadline = time.monotonic() + per_pdu
            pdu_type, length = dul.read_pdu_header(f, self.cfg.max_pdu, first)
            if length > _DEADLINE_STEP:
                raw.deadline += per_pdu * (length // _DEADLINE_STEP)
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


def _plain(sock: Any) -> socket.socket:
    """The TCP socket under a connection (tls.DuplexTLS keeps it as ``raw``)."""
    return getattr(sock, "raw", sock)  # type: ignore[no-any-return]


def _close_gracefully(sock: socket.socket, f: Any = None, linger: float = _LINGER) -> None:
    """The end of a connection after our last PDU (A-ASSOCIATE-RJ, A-RELEASE-RP, A-ABORT):
    half-close (the peer reads the PDU, then EOF), drain what the peer still sends until its
    EOF or ``linger`` seconds, then close. Closing with unread bytes would make the kernel
    reset the connection, and a reset discards what the peer has not read yet: the last PDU
    (PS3.8 Sta13: the requestor closes; the acceptor waits for that, within ARTIM)."""
    with contextlib.suppress(OSError):
        # the plain socket's half-close (a TLS connection's ``raw``)
        socket.socket.shutdown(_plain(sock), socket.SHUT_WR)
    with contextlib.suppress(OSError, ValueError):
        deadline = time.monotonic() + linger
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            data = f.read1(65536) if f is not None else sock.recv(65536)
            if not data:
                break
    if f is not None:
        with contextlib.suppress(OSError, ValueError):
            f.close()
    with contextlib.suppress(OSError):
        sock.close()


class _Lingerer:
    """One thread that ends refused connections without a thread each: the A-ASSOCIATE-RJ
    is written by the accept loop, this thread drains each connection to EOF (or the linger
    deadline) and closes it, so the rejection is read rather than lost to a reset."""

    def __init__(self) -> None:
        self._new: queue.SimpleQueue[socket.socket] = queue.SimpleQueue()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ)
        self._deadlines: dict[socket.socket, float] = {}
        self._stopped = False
        threading.Thread(target=self._loop, name="lingerer", daemon=True).start()

    def add(self, sock: socket.socket) -> None:
        if len(self._deadlines) + self._new.qsize() >= _MAX_LINGERING:
            with contextlib.suppress(OSError):
                sock.close()
            return
        self._new.put(sock)
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _loop(self) -> None:
        while not self._stopped:
            now = time.monotonic()
            timeout = max(0.0, min(self._deadlines.values(), default=now + 60) - now)
            for key, _ in self._sel.select(timeout):
                s = key.fileobj
                if s is self._wake_r:
                    with contextlib.suppress(OSError):
                        while self._wake_r.recv(4096):
                            pass
                    continue
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self._drop(s)
            while True:
                try:
                    s = self._new.get_nowait()
                except queue.Empty:
                    break
                self._deadlines[s] = time.monotonic() + _LINGER
                self._sel.register(s, selectors.EVENT_READ)
            now = time.monotonic()
            for s in [s for s, d in self._deadlines.items() if d <= now]:
                self._drop(s)
        for s in list(self._deadlines):
            self._drop(s)
        self._sel.close()
        for s in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                s.close()

    def _drop(self, s: socket.socket) -> None:
        self._deadlines.pop(s, None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(s)
        with contextlib.suppress(OSError):
            s.close()


_LIMIT_RJ = dul.associate_rj(
    dul.RJ_TRANSIENT, dul.RJ_SOURCE_PRESENTATION, dul.RJ_LOCAL_LIMIT_EXCEEDED
)


class Server:
    """The listening socket (SO_REUSEPORT: several worker processes may share the port) and
    one thread per association. Admission is decided in the accept loop, before a thread is
    spent: at most ``max_per_peer`` connections of one peer address and ``max_associations``
    in all (both per process); at the total cap, an idle connection (awaiting its
    A-ASSOCIATE-RQ, or between messages) of the peer address holding the most connections is
    evicted for a peer holding fewer; otherwise the newcomer gets A-ASSOCIATE-RJ (transient,
    local-limit-exceeded)."""

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
        self._by_host: dict[str, set[_Conn]] = {}
        self._count = 0  # admitted connections not yet ended
        self._evicting = 0  # of which evicted, ending
        self._lock = threading.Lock()
        self._stopping = False
        self._lingerer = _Lingerer()
        self.refused = 0  # connections refused at a cap (for tests and metrics)
        self._refusal_logged = -1e9
        self.evicted = 0
        self.handshake_failed = 0  # TLS handshakes that failed (for tests and metrics)
        self._acceptor = threading.Thread(target=self._accept_loop, name="accept", daemon=True)
        self._acceptor.start()

    def active(self) -> int:
        with self._lock:
            return len(self._threads)

    @property
    def active_associations(self) -> int:
        return self.active()

    def connections_from(self, host: str) -> int:
        with self._lock:
            return len(self._by_host.get(host, ()))

    def _accept_loop(self) -> None:
        while not self._stopping:
            try:
                conn, peer = self._sock.accept()
            except OSError:
                if self._stopping:
                    return
                time.sleep(0.05)
                continue
            rec = self._admit(conn, peer[0])
            if rec is None:
                self._refuse(conn, peer)
                continue
            nodelay(conn)
            t = threading.Thread(target=self._run, args=(rec, peer), name="assoc", daemon=True)
            with self._lock:
                self._threads.add(t)
            t.start()

    def _admit(self, sock: socket.socket, host: str) -> _Conn | None:
        with self._lock:
            mine = self._by_host.setdefault(host, set())
            if len(mine) >= self.cfg.max_per_peer:
                return None
            if self._count - self._evicting >= self.cfg.max_associations:
                victim = self._victim(len(mine) + 1)
                if victim is None:
                    if not mine:  # no empty entry per refused address
                        del self._by_host[host]
                    return None
                victim.evicted = True
                self._evicting += 1
                self.evicted += 1
                self.connection_counted("evicted")
                # The victim's blocked read returns EOF; its own thread sends the A-ABORT.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(_plain(victim.sock), socket.SHUT_RD)
            rec = _Conn(sock, host)
            mine.add(rec)
            self._count += 1
            return rec

    def _victim(self, newcomer_holds: int) -> _Conn | None:
        """The oldest evictable connection of the peer address holding the most connections,
        when that is more than the newcomer would hold (never a peer's only fair share)."""
        for _host, conns in sorted(self._by_host.items(), key=lambda kv: -len(kv[1])):
            if len(conns) <= newcomer_holds:
                return None
            idle = [c for c in conns if c.evictable and not c.evicted]
            if idle:
                return min(idle, key=lambda c: c.since)
        return None

    def connection_counted(self, outcome: str) -> None:
        """A connection was 'refused' at a cap or an idle one 'evicted' (for metrics)."""

    def handshake_refused(self, peer: str, why: str) -> None:
        """A TLS handshake failed (the SCPs record it in the audit trail)."""

    def _refuse(self, conn: socket.socket, peer: tuple[str, int]) -> None:
        self.refused += 1
        self.connection_counted("refused")
        now = time.monotonic()
        if now - self._refusal_logged >= 1.0:  # a flood of refusals is not a flood of logs
            log.warning(
                "connection from %s:%d refused: association limit (%d refused so far)",
                *peer,
                self.refused,
            )
            self._refusal_logged = now
        with contextlib.suppress(OSError):
            conn.setblocking(False)
            conn.send(_LIMIT_RJ)  # 10 bytes into a fresh connection's empty send buffer
            conn.shutdown(socket.SHUT_WR)
        self._lingerer.add(conn)

    def _handshake(self, rec: _Conn, peer: tuple[str, int]) -> bool:
        """The TLS handshake on the association's own thread (never the accept loop's), whole
        within the ARTIM deadline of the connect, however slowly a peer trickles its bytes. The
        connection is a ``tls.DuplexTLS`` (an SCP may read while its worker writes). A failed
        handshake (plain DICOM on a TLS port, an untrusted or missing client certificate)
        closes the connection: nothing is served."""
        assert self.cfg.tls is not None
        try:
            s = tls.DuplexTLS(rec.sock, self.cfg.tls)
            rec.sock = s  # type: ignore[assignment]
            s.do_handshake(rec.since + self.cfg.artim_timeout)
            return True
        except (OSError, ValueError) as exc:
            why = exc.reason if isinstance(exc, ssl.SSLError) and exc.reason else type(exc).__name__
            log.warning("TLS handshake with %s:%d failed: %s", *peer, why)
            self.handshake_failed += 1
            self.handshake_refused(f"{peer[0]}:{peer[1]}", str(why))
            self.connection_counted("tls-failed")
            with contextlib.suppress(OSError):
                rec.sock.close()
            return False

    def _run(self, rec: _Conn, peer: tuple[str, int]) -> None:
        try:
            if self.cfg.tls is not None and not self._handshake(rec, peer):
                return
            assoc = self._association(rec.sock, peer, self)
            assoc.conn = rec
            assoc.run()
        except Exception:  # a bug must not take the node down with the other associations
            log.exception("association from %s:%d failed", *peer)
            with contextlib.suppress(OSError):
                rec.sock.close()
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())
                conns = self._by_host.get(rec.host)
                if conns is not None:
                    conns.discard(rec)
                    if not conns:
                        del self._by_host[rec.host]
                self._count -= 1
                if rec.evicted:
                    self._evicting -= 1

    def shutdown(self) -> None:
        """Stop accepting; associations in progress go on (drained by the caller)."""
        self._stopping = True
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self._sock.close()
        self._lingerer.stop()
