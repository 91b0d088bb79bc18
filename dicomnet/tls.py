"""DICOM TLS (PS3.15 Annex B secure transport): the SSL contexts of the archive's DICOM
endpoints and requestors, the identity of a peer certificate, its binding to calling AE
titles, and the security fields of the acceptor's and the requestors' configuration. The
certificates default to the project CA's (common/pki.py).

A binding (``certificate`` of an AE in STRATA_AE_CONFIG) names a certificate either by its
SHA-256 fingerprint (``sha256:<hex>``, colons allowed) or by its subject, either as
``CN=<name>`` (the common name alone) or as the full RFC 4514 string.
"""

from __future__ import annotations

import contextlib
import hashlib
import ssl
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# a peer certificate's identity is the PKI module's (the audit trail reads it too)
from strata.common.pki import PeerCert, ensure_pki, peer_cert  # noqa: F401 - re-exported

PROFILES = ("embedded", "hardened")
CLIENT_CERT_MODES = ("none", "optional", "required")


# --------------------------------------------------------------------------- profile


@dataclass(frozen=True)
class DicomSecurity:
    """What the profile and the settings turn on for the DICOM endpoints (one per process)."""

    profile: str
    tls: bool
    cert: str
    key: str
    ca: str
    client_certs: str  # none | optional | required
    ae_checks: bool  # calling-AE allow-list and called-AE check on every SCP

    def server_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        return server_context(self.cert, self.key, self.ca, self.client_certs)


def dicom_security(settings: Any) -> DicomSecurity:
    """The DICOM security of ``settings``: the hardened profile turns on TLS (certificates of
    the project CA under STRATA_HOME/pki unless STRATA_DICOM_TLS_CERT/KEY/CA are set),
    required client certificates bound to AE titles, and the AE checks; every piece can also
    be turned on alone in the embedded profile."""
    profile = settings.profile
    if profile not in PROFILES:
        raise ValueError(f"STRATA_PROFILE={profile!r}: expected one of {', '.join(PROFILES)}")
    hardened = profile == "hardened"
    tls = _tristate(settings.dicom_tls, "STRATA_DICOM_TLS", hardened)
    ae_checks = _tristate(settings.dicom_ae_checks, "STRATA_DICOM_AE_CHECKS", hardened)
    mode = settings.dicom_tls_client_certs
    if mode == "auto":
        mode = "required" if hardened else "optional"
    if mode not in CLIENT_CERT_MODES:
        raise ValueError(
            f"STRATA_DICOM_TLS_CLIENT_CERTS={mode!r}: expected auto|none|optional|required"
        )
    cert, key, ca = settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca
    if tls and not (cert and key):
        pki = ensure_pki(Path(settings.home) / "pki")
        cert, key, ca = cert or str(pki.server_cert), key or str(pki.server_key), ca or str(pki.ca)
    return DicomSecurity(profile, tls, cert, key, ca, mode, ae_checks)


def _tristate(value: str, name: str, default: bool) -> bool:
    v = value.strip().lower()
    if v == "auto":
        return default
    if v in ("on", "true", "1", "yes"):
        return True
    if v in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{name}={value!r}: expected auto|on|off")


# --------------------------------------------------------------------------- contexts


def server_context(
    cert: str, key: str, ca: str = "", client_certs: str = "optional"
) -> ssl.SSLContext:
    """TLS 1.2+ for an SCP. ``client_certs``: none (not asked), optional (verified against
    ``ca`` when sent), required (a connection without a trusted one fails its handshake)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # No TLS 1.3 session tickets: nothing is written after the handshake but our PDUs
    # (resumption is not needed by DICOM peers holding one association per operation batch;
    # the acceptor's reader and writer threads share the connection through DuplexTLS).
    ctx.num_tickets = 0
    ctx.load_cert_chain(cert, key)
    if client_certs != "none":
        if not ca:
            raise ValueError("client certificates need a CA to verify them (STRATA_DICOM_TLS_CA)")
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: str = "", cert: str = "", key: str = "") -> ssl.SSLContext:
    """TLS 1.2+ for a requestor: the server verified against ``ca`` (the system's CAs when
    empty) and its host name; ``cert``/``key``: the archive's own client certificate."""
    ctx = ssl.create_default_context(cafile=ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert and key:
        ctx.load_cert_chain(cert, key)
    return ctx


# --------------------------------------------------------------------------- identity


def binding_matches(binding: str, cert: PeerCert) -> bool:
    """Whether ``cert`` is the one ``binding`` names (fingerprint, CN= or full subject)."""
    b = binding.strip()
    if b.lower().startswith("sha256:"):
        return b[7:].replace(":", "").lower() == cert.fingerprint
    if b.upper().startswith("CN=") and "," not in b:
        return b[3:] == cert.common_name
    return b == cert.subject


def fingerprint_of(pem_path: str | Path) -> str:
    """``sha256:<hex>`` of a PEM certificate (to write into an AE binding)."""
    der = ssl.PEM_cert_to_DER_cert(Path(pem_path).read_text())
    return "sha256:" + hashlib.sha256(der).hexdigest()


def acceptor_security(
    settings: Any, aes: Any, called_ae: str, own_allow_list: bool = True
) -> dict[str, Any]:
    """The security fields of an SCP's ``acceptor.Config`` (TLS context, AE checks, AE
    certificate bindings) from ``settings`` and the AE configuration ``aes``
    (ingest/config.AEConfig). With the AE checks on, only the AEs configured are accepted
    (whatever allow_unknown says) and the called AE must be ``called_ae``; off, the SCP keeps
    the AE configuration's own allow-list (``"allow_unknown": false``) when
    ``own_allow_list`` (the ingest SCP; the Q/R SCP never had one)."""
    sec = dicom_security(settings)
    out: dict[str, Any] = {"tls": sec.server_context()}
    if sec.ae_checks:
        out["allow_list"] = sorted(aes.aes)
        out["called_ae"] = called_ae
    elif own_allow_list and aes.allow_list is not None:
        out["allow_list"] = aes.allow_list
    if sec.tls:
        out["cert_bindings"] = aes.cert_bindings
        out["require_binding"] = sec.client_certs == "required"
    return out


def move_tls_contexts(settings: Any) -> dict[str, ssl.SSLContext]:
    """AE title -> client context of each C-MOVE destination reached over TLS
    (STRATA_MOVE_TLS_DESTINATIONS); the archive presents its own DICOM TLS certificate."""
    titles = [t.strip() for t in settings.move_tls_destinations.split(",") if t.strip()]
    if not titles:
        return {}
    cert, key, ca = settings.dicom_tls_cert, settings.dicom_tls_key, settings.dicom_tls_ca
    if not (cert and key):  # the project CA's (its CA too, unless one is set)
        pki = ensure_pki(Path(settings.home) / "pki")
        cert, key, ca = cert or str(pki.server_cert), key or str(pki.server_key), ca or str(pki.ca)
    ctx = client_context(ca, cert, key)
    return dict.fromkeys(titles, ctx)


# --------------------------------------------------------------------------- full duplex


class DuplexTLS:
    """A TLS connection (the server side unless told) that one thread may read while another
    writes.

    OpenSSL forbids concurrent calls on one SSL object, and ``ssl.SSLSocket`` calls SSL_read
    and SSL_write with no lock of its own (the GIL is released inside both). The Q/R SCP reads
    (C-CANCEL, C-GET's C-STORE responses) while its worker writes (responses, sub-operations),
    so its TLS must not be an SSLSocket. Here the TLS state is an ``ssl.SSLObject`` over memory
    BIOs: every call into it holds ``_ssl`` (in-memory work, never a socket wait), and the
    socket is read and written outside that lock, so a blocked send (a slow peer) never stops
    the reader, and a blocked read never stops a writer. Records reach the socket in the order
    they were encrypted: writers send under ``_send``; what a read produces (an alert, a key
    update) waits in ``_late`` for the next send.

    It offers what the acceptor uses of a socket: ``recv_into``, ``recv``, ``sendall``,
    ``settimeout``, ``close``, ``getpeercert`` and ``raw`` (the plain socket, for a half-close)."""

    def __init__(
        self, raw: Any, ctx: ssl.SSLContext, server_side: bool = True, server_hostname: str = ""
    ) -> None:
        self.raw = raw
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(
            self._in, self._out, server_side=server_side, server_hostname=server_hostname or None
        )
        self._ssl = threading.Lock()
        self._send = threading.Lock()
        self._late = bytearray()

    # ------------------------------------------------------------------ handshake
    def do_handshake(self, deadline: float) -> None:
        """The handshake, whole by the monotonic ``deadline`` (however slowly a peer trickles
        its bytes). A refusal (an untrusted or missing client certificate) sends the alert
        OpenSSL wrote before the error is raised, so that the client can tell why."""
        while True:
            try:
                with self._ssl:
                    self._obj.do_handshake()
                self._send_pending()
                return
            except ssl.SSLWantReadError:
                self._send_pending()
            except ssl.SSLError:
                with contextlib.suppress(OSError):
                    self._send_pending()
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("TLS handshake not done in time")
            self.raw.settimeout(left)
            data = self.raw.recv(65536)
            if not data:
                raise ConnectionResetError("the peer closed during the TLS handshake")
            with self._ssl:
                self._in.write(data)

    # ------------------------------------------------------------------ reading
    def recv_into(self, b: Any, nbytes: int = 0) -> int:
        view = memoryview(b).cast("B")
        n = nbytes or len(view)
        while True:
            with self._ssl:
                try:
                    data: bytes | None = self._obj.read(n)
                except ssl.SSLWantReadError:
                    data = None
                except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                    data = b""  # close_notify, or the peer's EOF fed below
                late = self._out.read()
                if late:
                    self._late += late
            if late:
                self._send_late_if_idle()
            if data is not None:
                view[: len(data)] = data
                return len(data)
            raw = self.raw.recv(65536)  # the socket's timeout applies
            with self._ssl:
                if raw:
                    self._in.write(raw)
                else:
                    self._in.write_eof()

    def recv(self, n: int) -> bytes:
        buf = bytearray(n)
        k = self.recv_into(buf)
        return bytes(buf[:k])

    # ------------------------------------------------------------------ writing
    def sendall(self, data: Any) -> None:
        with self._send:
            with self._ssl:
                self._obj.write(data)  # into memory: never blocks, takes all
                out = self._take_locked()
            self.raw.sendall(out)

    def _take_locked(self) -> bytes:
        """Everything encrypted and not yet sent, oldest first (``_ssl`` held)."""
        out = bytes(self._late) + self._out.read()
        self._late.clear()
        return out

    def _send_pending(self) -> None:
        with self._send:
            with self._ssl:
                out = self._take_locked()
            if out:
                self.raw.sendall(out)

    def _send_late_if_idle(self) -> None:
        """Send what a read produced now, unless a writer is busy (it sends it next)."""
        if self._send.acquire(blocking=False):
            try:
                with self._ssl:
                    out = self._take_locked()
                if out:
                    with contextlib.suppress(OSError):
                        self.raw.sendall(out)
            finally:
                self._send.release()

    # ------------------------------------------------------------------ the rest
    def settimeout(self, seconds: float | None) -> None:
        self.raw.settimeout(seconds)

    def getpeercert(self, binary_form: bool = False) -> Any:
        with self._ssl:
            return self._obj.getpeercert(binary_form)

    def version(self) -> str | None:
        with self._ssl:
            return self._obj.version()

    def fileno(self) -> int:
        return int(self.raw.fileno())

    def close(self) -> None:
        self.raw.close()
