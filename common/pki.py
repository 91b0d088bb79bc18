"""The project CA for local use (``STRATA_HOME/pki``): a CA, a server certificate for
127.0.0.1/localhost and client certificates issued on demand, made once and shared by the
processes of one home. The DICOM endpoints use it when DICOM TLS is on without certificates
of their own (dicomnet/tls.py), and the cold tier's Ceph RGW for its HTTPS certificate
(stack/ceph.py).
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_pki_lock = threading.Lock()


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


# --------------------------------------------------------------------------- peer identity


@dataclass(frozen=True)
class PeerCert:
    subject: str  # RFC 4514
    common_name: str
    fingerprint: str  # sha256, lower-case hex without colons


def peer_cert(sock: Any) -> PeerCert | None:
    """The verified certificate of a TLS peer (None: plain socket, or none was sent)."""
    if not hasattr(sock, "getpeercert"):  # a plain socket
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
