"""DICOM TLS and the AE checks on the acceptor (dicomnet/tls.py, dicomnet/acceptor.py): the real
ingest SCP in-process on a free loopback port, the archive's own requestor (dicomnet/requestor.py)
and raw sockets as peers, certificates from a project CA made in a temporary directory.
The DCMTK and pynetdicom peers against a whole hardened stack are in tests/e2e/test_dicom_tls.py.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from strata.archive.hot import HotTier
from strata.common.pki import Pki, ensure_pki
from strata.common.settings import Settings
from strata.dicomnet import dul, tls
from strata.dicomnet.requestor import IMPLICIT_LE, AssociationRejected, Requestor
from strata.ingest.config import AEConfig, CallingAE
from strata.ingest.outbox import Outbox
from strata.ingest.scp import Config, StoreServer
from strata.ingest.store import Limits, StoreService
from tests.support.stack import free_port
from tests.support.wait import wait_for

VERIFICATION = [("1.2.840.10008.1.1", [IMPLICIT_LE])]



@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def server(tmp_path: Path, pki: Pki) -> Iterator[tuple[StoreServer, int]]:
    modality_cert, _ = pki.client("MODALITY")
    aes = AEConfig(
        allow_unknown=False,
        aes={
            "MODALITY": CallingAE("MODALITY", certificate=tls.fingerprint_of(modality_cert)),
            "VIEWER": CallingAE("VIEWER", certificate="CN=VIEWER"),
            "NOCERT": CallingAE("NOCERT"),
        },
    )
    settings = Settings(
        home=tmp_path,
        profile="hardened",
        dicom_tls_cert=str(pki.server_cert),
        dicom_tls_key=str(pki.server_key),
        dicom_tls_ca=str(pki.ca),
    )
    hot = HotTier(tmp_path / "hot")
    service = StoreService(
        tier=hot,
        outbox=Outbox(tmp_path / "outbox.sqlite"),
        topic="t",
        quarantine_topic="q",
        quarantine_dir=tmp_path / "quarantine",
        node="n1",
        aes=aes,
        limits=Limits(max_object_bytes=1_000_000),
    )
    port = free_port()
    cfg = Config(
        max_pdu=16384,
        network_timeout=10.0,
        acse_timeout=10.0,
        artim_timeout=1.0,
        **tls.acceptor_security(settings, aes, "STRATA"),
    )
    srv = StoreServer(cfg, service, hot.incoming, ("127.0.0.1", port))
    try:
        yield srv, port
    finally:
        srv.shutdown()


def _client(pki: Pki, ae: str | None) -> ssl.SSLContext:
    if ae is None:
        return tls.client_context(str(pki.ca))
    cert, key = pki.client(ae)
    return tls.client_context(str(pki.ca), str(cert), str(key))


def _associate(port: int, ctx: ssl.SSLContext, calling: str, called: str = "STRATA") -> None:
    with Requestor(
        "127.0.0.1", port, calling, called, VERIFICATION, timeout=10.0, tls=ctx
    ) as assoc:
        assert assoc.accepted


def test_binding_forms(pki: Pki) -> None:
    cert_path, _ = pki.client("CT_1")
    der = ssl.PEM_cert_to_DER_cert(cert_path.read_text())
    cert = tls.PeerCert("CN=CT_1", "CT_1", hashlib.sha256(der).hexdigest())
    assert tls.binding_matches(tls.fingerprint_of(cert_path), cert)
    assert tls.binding_matches("CN=CT_1", cert)
    assert tls.binding_matches(
        tls.fingerprint_of(cert_path).upper().replace("SHA256", "sha256"), cert
    )
    assert not tls.binding_matches("CN=CT_2", cert)
    assert not tls.binding_matches("sha256:" + "0" * 64, cert)


def test_profiles(tmp_path: Path) -> None:
    embedded = tls.dicom_security(Settings(home=tmp_path))
    assert (embedded.tls, embedded.ae_checks) == (False, False)
    assert not (tmp_path / "pki").exists()  # the easy default makes no certificates
    hardened = tls.dicom_security(Settings(home=tmp_path, profile="hardened"))
    assert (hardened.tls, hardened.ae_checks, hardened.client_certs) == (True, True, "required")
    assert hardened.ca == str(tmp_path / "pki" / "ca.pem")
    assert (tmp_path / "pki" / "ca.key").stat().st_mode & 0o077 == 0
    with pytest.raises(ValueError):
        tls.dicom_security(Settings(home=tmp_path, profile="paranoid"))


def test_bound_certificate_is_accepted(server: tuple[StoreServer, int], pki: Pki) -> None:
    _associate(server[1], _client(pki, "MODALITY"), "MODALITY")
    _associate(server[1], _client(pki, "VIEWER"), "VIEWER")


def test_certificate_of_another_ae_is_rejected(
    server: tuple[StoreServer, int], pki: Pki
) -> None:
    with pytest.raises(AssociationRejected) as rj:
        _associate(server[1], _client(pki, "VIEWER"), "MODALITY")
    assert (rj.value.result, rj.value.source, rj.value.reason) == (
        dul.RJ_PERMANENT,
        dul.RJ_SOURCE_USER,
        dul.RJ_CALLING_AE_NOT_RECOGNIZED,
    )


def test_unbound_ae_is_rejected_when_bindings_are_required(
    server: tuple[StoreServer, int], pki: Pki
) -> None:
    with pytest.raises(AssociationRejected) as rj:
        _associate(server[1], _client(pki, "NOCERT"), "NOCERT")
    assert rj.value.reason == dul.RJ_CALLING_AE_NOT_RECOGNIZED


def test_unknown_calling_and_wrong_called_ae(server: tuple[StoreServer, int], pki: Pki) -> None:
    with pytest.raises(AssociationRejected) as rj:
        _associate(server[1], _client(pki, "INTRUDER"), "INTRUDER")
    assert (rj.value.source, rj.value.reason) == (1, 3)
    with pytest.raises(AssociationRejected) as rj:
        _associate(server[1], _client(pki, "MODALITY"), "MODALITY", called="OTHER")
    assert (rj.value.result, rj.value.source, rj.value.reason) == (1, 1, 7)


def test_no_client_certificate_fails_the_handshake(
    server: tuple[StoreServer, int], pki: Pki
) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _associate(server[1], _client(pki, None), "MODALITY")
    # under TLS 1.3 the client may see the server's alert before the server's thread counts it
    wait_for(lambda: server[0].handshake_failed >= 1, 10, "the failed handshake to be counted")


@pytest.mark.parametrize(
    "opening",
    [b"", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"],
    ids=["silent", "half-a-client-hello"],
)
def test_stalled_handshake_cannot_stall_the_accept_loop(
    server: tuple[StoreServer, int], pki: Pki, opening: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that connects and never starts its handshake, or stops in the middle of its
    ClientHello, holds neither the accept loop (another peer associates meanwhile) nor its
    connection past the deadline (ARTIM, 1 s here)."""
    srv, port = server
    assert srv.cfg.tls is not None
    threads: list[str] = []
    wrap = srv.cfg.tls.wrap_bio

    def spy(*args: Any, **kwargs: Any) -> ssl.SSLObject:
        threads.append(threading.current_thread().name)
        return wrap(*args, **kwargs)

    monkeypatch.setattr(srv.cfg.tls, "wrap_bio", spy)
    silent = socket.create_connection(("127.0.0.1", port), timeout=30)
    silent.sendall(opening)
    try:
        _associate(port, _client(pki, "MODALITY"), "MODALITY")  # served while silent waits
        assert silent.recv(1) == b""  # closed by the server at the handshake deadline
    finally:
        silent.close()
    assert srv.handshake_failed >= 1
    assert len(threads) == 2 and "accept" not in threads  # each on its association's thread


def test_plain_dicom_on_the_tls_port_gets_nothing(server: tuple[StoreServer, int]) -> None:
    rq = dul.associate_rq("STRATA", "MODALITY", [(1, *VERIFICATION[0])], 16384, "1.2.3", "X")
    with socket.create_connection(("127.0.0.1", server[1]), timeout=30) as s:
        s.sendall(rq)
        got = b""
        try:  # closed (or reset: the server closes with our bytes unread), never answered
            while chunk := s.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    assert not got.startswith(b"\x02")  # no A-ASSOCIATE-AC (at most a TLS alert)
    assert got[:1] in (b"", b"\x15")  # nothing, or a TLS alert record


def test_router_destination_tls_settings(pki: Pki) -> None:
    from strata.processors.router import rules, sender

    cert, key = pki.client("STRATA")
    doc = {
        "destinations": {
            "secure": {
                "pool": ["DEST@127.0.0.1:104"],
                "tls": True,
                "tls_ca": str(pki.ca),
                "tls_cert": str(cert),
                "tls_key": str(key),
            },
            "plain": {"pool": ["DEST@127.0.0.1:105"]},
        },
        "rules": [],
    }
    cfg = rules.parse(doc)
    secure, plain = cfg.destinations["secure"], cfg.destinations["plain"]
    assert secure.tls and secure.tls_ca == str(pki.ca) and not plain.tls
    ctx = sender._tls(secure)
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert sender._tls(plain) is None
    with pytest.raises(Exception, match="unknown settings"):
        rules.parse({**doc, "destinations": {"x": {"pool": ["D@h:1"], "tls_verify": False}}})


# --------------------------------------------------------------------------- full duplex


def _duplex_pair(pki: Pki) -> tuple[tls.DuplexTLS, tls.DuplexTLS]:
    """A server and a client DuplexTLS over a real loopback TCP connection, handshake done."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    client_raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    server_raw, _ = listener.accept()
    listener.close()
    server_ctx = tls.server_context(str(pki.server_cert), str(pki.server_key), str(pki.ca))
    srv = tls.DuplexTLS(server_raw, server_ctx)
    cli = tls.DuplexTLS(client_raw, _client(pki, "MODALITY"), False, "localhost")
    done = threading.Thread(target=srv.do_handshake, args=(time_after(20),))
    done.start()
    cli.do_handshake(time_after(20))
    done.join(30)
    server_raw.settimeout(30)
    return srv, cli


def time_after(seconds: float) -> float:
    import time

    return time.monotonic() + seconds


def _read_exactly(conn: tls.DuplexTLS, n: int) -> bytes:
    buf = bytearray()
    chunk = bytearray(65536)
    while len(buf) < n:
        k = conn.recv_into(chunk)
        assert k, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk[:k]
    return bytes(buf)


def test_duplex_tls_reads_and_writes_at_once_in_both_directions(pki: Pki) -> None:
    """Each side writes 8 MB while it reads the other's 8 MB, from two threads (the Q/R SCP's
    reader and worker): every byte arrives, in order, both ways."""
    import os

    srv, cli = _duplex_pair(pki)
    a, b = os.urandom(8 << 20), os.urandom(8 << 20)
    got: dict[str, bytes] = {}
    errors: list[BaseException] = []

    def run(fn: Any, *args: Any) -> threading.Thread:
        def body() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # reported below
                errors.append(exc)

        t = threading.Thread(target=body)
        t.start()
        return t

    def read(name: str, conn: tls.DuplexTLS, n: int) -> None:
        got[name] = _read_exactly(conn, n)

    threads = [
        run(srv.sendall, a),
        run(cli.sendall, b),
        run(read, "at client", cli, len(a)),
        run(read, "at server", srv, len(b)),
    ]
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert hashlib.sha256(got["at client"]).digest() == hashlib.sha256(a).digest()
    assert hashlib.sha256(got["at server"]).digest() == hashlib.sha256(b).digest()
    srv.close()
    cli.close()


def test_a_blocked_writer_does_not_stop_the_reader(pki: Pki) -> None:
    """The peer reads nothing while it sends (a C-GET requestor answering sub-operations):
    our writer blocks once the socket buffers are full, and our reader must still receive
    what the peer sends (a C-CANCEL); the writer finishes once the peer reads."""
    import os

    srv, cli = _duplex_pair(pki)
    big = os.urandom(32 << 20)  # far more than loopback's socket buffers
    writer = threading.Thread(target=srv.sendall, args=(big,))
    writer.start()
    wait_for(lambda: srv._send.locked(), 10, "the server's writer to be sending")
    cli.sendall(b"C-CANCEL")
    assert _read_exactly(srv, 8) == b"C-CANCEL"  # read while the writer is stuck
    assert writer.is_alive()  # still blocked: nothing has been read at the client yet
    assert _read_exactly(cli, len(big)) == big
    writer.join(30)
    assert not writer.is_alive()
    srv.close()
    cli.close()
