"""DICOM TLS (PS3.15 Annex B secure transport): the SSL contexts of the archive's DICOM
endpoints and requestors, the identity of a peer certificate, its binding to calling AE
titles, and the project CA for local use (``STRATA_HOME/pki``).

A binding (``certificate`` of an AE in STRATA_AE_CONFIG) names a certificate either by its
SHA-256 fingerprint (``sha256:<hex>``, colons allowed) or by its subject, either as
``CN=<name>`` (the common name alone) or as the full RFC 4514 string.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import os
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILES = ("embedded", "hardened")
CLIENT_CERT_MODES = ("none", "optional", "required")

_pki_lock = threading.Lock()


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
    # No TLS 1.3 session tickets: nothing is written after the handshake but our PDUs (an
    # association's reader and its responder threads share the connection; resumption is
    # not needed by DICOM peers holding one association per operation batch).
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


@dataclass(frozen=True)
class PeerCert:
    subject: str  # RFC 4514
    common_name: str
    fingerprint: str  # sha256, lower-case hex without colons


def peer_cert(sock: Any) -> PeerCert | None:
    """The verified certificate of a TLS peer (None: plain socket, or none was sent)."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_der_x509_certificate(der)
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    return PeerCert(cert.subject.rfc4514_string(), cn, hashlib.sha256(der).hexdigest())


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


# --------------------------------------------------------------------------- project CA


@dataclass(frozen=True)
class Pki:
    dir: Path
    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path

    def client(self, name: str) -> tuple[Path, Path]:
        """A client certificate (CN = ``name``, e.g. the AE title) signed by the project CA,
        made on first demand: (cert.pem, key.pem)."""
        return issue_client(self, name)


def ensure_pki(pki_dir: Path) -> Pki:
    """The project CA and a server certificate for 127.0.0.1/localhost under ``pki_dir``,
    made once; the CA key is kept (mode 0600) to sign client certificates on demand. Ceph
    RGW's certificate is made here too (stack/ceph.py)."""
    pki = Pki(
        pki_dir,
        pki_dir / "ca.pem",
        pki_dir / "ca.key",
        pki_dir / "server.pem",
        pki_dir / "server.key",
    )
    if all(p.exists() for p in (pki.ca, pki.ca_key, pki.server_cert, pki.server_key)):
        return pki
    pki_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(pki_dir, 0o700)
    with _pki_lock, _locked(pki_dir):  # processes starting together make one CA
        if all(p.exists() for p in (pki.ca, pki.ca_key, pki.server_cert, pki.server_key)):
            return pki
        ca_key = _new_key()
        ca = _ca_cert(ca_key)
        _write_key(pki.ca_key, ca_key)
        pki.ca.write_bytes(_pem(ca))
        key = _new_key()
        cert = _leaf(ca, ca_key, key, "127.0.0.1", server=True)
        _write_key(pki.server_key, key)
        pki.server_cert.write_bytes(_pem(cert))
    return pki


def issue_client(pki: Pki, name: str) -> tuple[Path, Path]:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name.strip()) or "client"
    cert_path, key_path = pki.dir / "clients" / f"{safe}.pem", pki.dir / "clients" / f"{safe}.key"
    with _pki_lock, _locked(pki.dir):
        if cert_path.exists() and key_path.exists():
            return cert_path, key_path
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        ca = x509.load_pem_x509_certificate(pki.ca.read_bytes())
        ca_key = serialization.load_pem_private_key(pki.ca_key.read_bytes(), None)
        key = _new_key()
        cert = _leaf(ca, ca_key, key, name.strip(), server=False)
        cert_path.parent.mkdir(parents=True, exist_ok=True)
        _write_key(key_path, key)
        cert_path.write_bytes(_pem(cert))
    return cert_path, key_path


@contextlib.contextmanager
def _locked(pki_dir: Path) -> Iterator[None]:
    with open(pki_dir / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _ca_cert(ca_key: Any) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Strata project CA")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _leaf(ca: Any, ca_key: Any, key: Any, cn: str, server: bool) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
    else:
        b = b.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
    return b.sign(ca_key, hashes.SHA256())


def _pem(cert: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: Any) -> None:
    from cryptography.hazmat.primitives import serialization

    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


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
