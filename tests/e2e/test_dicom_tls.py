"""DICOM TLS and the AE checks against one real archive in the hardened profile
(STRATA_PROFILE=hardened; docs/security.md): DCMTK storescu/findscu/getscu with +tls and a
certificate of the project CA bound to their AE title, pynetdicom over TLS, openssl s_client
and raw sockets as the peers that must be turned away.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from strata.common.pki import Pki, ensure_pki
from strata.dicomnet import dul, tls
from tests.support.dcmtk import dcmtk_env
from tests.support.stack import Stack, free_port, make_stack, require_tool
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e
CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
AES = ("MODALITY", "WORKSTATION", "GETTER", "PYNET")
GET = StudyRootQueryRetrieveInformationModelGet
MOVE = StudyRootQueryRetrieveInformationModelMove


@pytest.fixture(scope="module")
def hstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Pki]]:
    home = tmp_path_factory.mktemp("tls-home")
    pki = ensure_pki(home / "pki")  # the CA the hardened stack uses (STRATA_HOME/pki)
    bindings = {ae: tls.fingerprint_of(pki.client(ae)[0]) for ae in AES}
    bindings["WORKSTATION"] = "CN=WORKSTATION"  # the subject form of a binding
    aes = home / "aes.json"
    aes.write_text(
        json.dumps(
            {
                "allow_unknown": True,  # the hardened profile accepts only the AEs listed
                "aes": {ae: {"certificate": b} for ae, b in bindings.items()},
            }
        )
    )
    # the C-MOVE destination: DCMTK storescp over TLS, requiring the archive's certificate
    dest_port = free_port()
    (home / "moved").mkdir()
    dest = subprocess.Popen(
        [
            require_tool("storescp"), "-aet", "TLSDEST", "+tls", str(pki.server_key),
            str(pki.server_cert), "+cf", str(pki.ca), "-od", str(home / "moved"), str(dest_port),
        ],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # the router's destination: another storescp over TLS, requiring the router's certificate
    routed_port = free_port()
    (home / "routed").mkdir()
    routed = subprocess.Popen(
        [
            require_tool("storescp"), "-aet", "TLSROUTED", "+tls", str(pki.server_key),
            str(pki.server_cert), "+cf", str(pki.ca), "-od", str(home / "routed"),
            str(routed_port),
        ],
        env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    router_cert, router_key = pki.client("STRATA")
    routes = home / "routes.json"
    routes.write_text(
        json.dumps(
            {
                "destinations": {
                    "routed": {
                        "pool": [f"TLSROUTED@127.0.0.1:{routed_port}"],
                        "tls": True,
                        "tls_ca": str(pki.ca),
                        "tls_cert": str(router_cert),
                        "tls_key": str(router_key),
                        "backoff_initial": 0.5,
                    }
                },
                "rules": [{"name": "tls", "when": {"calling_ae": "WORKSTATION"}, "to": "routed"}],
            }
        )
    )
    s = make_stack(home)
    s.env["STRATA_ROUTER_CONFIG"] = str(routes)
    s.env["STRATA_ROUTER_HTTP_PORT"] = str(free_port())
    s.env["STRATA_PROFILE"] = "hardened"
    s.env["STRATA_AE_CONFIG"] = str(aes)
    s.env["STRATA_INGEST_WORKERS"] = "1"
    s.env["STRATA_MOVE_DESTINATIONS"] = f"TLSDEST=127.0.0.1:{dest_port}"
    s.env["STRATA_MOVE_TLS_DESTINATIONS"] = "TLSDEST"
    try:
        r = s.cli("up")
        assert "security profile: hardened (DICOM TLS on" in r.stderr
        # ... and Kafka SASL_SSL with the ACLs: every test here stores and finds through a log
        # that only the services' own principals can use (tests/integration/test_kafka_security)
        assert "Kafka SASL_SSL + ACLs" in r.stderr
        props = (home / "kafka" / "server.properties").read_text()
        assert "listeners=SASL_SSL://" in props and "allow.everyone.if.no.acl.found=false" in props
        yield s, pki
    finally:
        s.down()
        for p in (dest, routed):
            p.terminate()
            p.wait(30)


def _tls_args(pki: Pki, ae: str) -> list[str]:
    cert, key = pki.client(ae)
    return ["+tls", str(key), str(cert), "+cf", str(pki.ca)]


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    require_tool(args[0])
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=300)


def _storescu(s: Stack, extra: list[str], files: list[Path], aet: str = "MODALITY",
              aec: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return _run(
        [
            "storescu", "-v", "-aet", aet, "-aec", aec or s.settings.ingest_ae_title, *extra,
            "127.0.0.1", str(s.settings.ingest_port), *map(str, files),
        ]
    )  # fmt: skip


def _find_study(s: Stack, pki: Pki, study: str, out: Path) -> list[Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    r = _run(
        [
            "findscu", "-S", "-aet", "WORKSTATION", "-aec", s.settings.qr_ae_title,
            *_tls_args(pki, "WORKSTATION"), "-X", "-od", str(out),
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            "-k", "NumberOfStudyRelatedInstances",
            "127.0.0.1", str(s.settings.qr_port),
        ]
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    found = [pydicom.dcmread(str(p)) for p in sorted(out.glob("rsp*.dcm"))]
    for p in out.glob("rsp*.dcm"):
        p.unlink()
    return found


def test_dcmtk_store_find_get_over_tls(hstack: tuple[Stack, Pki], tmp_path: Path) -> None:
    s, pki = hstack
    files = ct_series(tmp_path / "in", 3, patient_id="TLS0001")
    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    r = _storescu(s, _tls_args(pki, "MODALITY"), files)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        r.stdout.count("Received Store Response (Success)")
        + r.stderr.count("Received Store Response (Success)")
        == 3
    ), r.stdout + r.stderr

    found = wait_for(
        lambda: [
            d
            for d in _find_study(s, pki, study, tmp_path / "find")
            if int(d.get("NumberOfStudyRelatedInstances", 0)) == 3
        ],
        120,
        "the study indexed and found over TLS",
    )
    assert found[0].StudyInstanceUID == study

    sops = sorted(str(pydicom.dcmread(str(f)).SOPInstanceUID) for f in files)
    # C-GET over TLS: DCMTK 3.6.7's getscu has no TLS options, so pynetdicom retrieves
    got: list[str] = []

    def on_store(event: evt.Event) -> int:
        got.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    assoc = _pynet(s, _client_ctx(pki, "GETTER"), "GETTER", get=True, on_store=on_store)
    assert assoc.is_established  # type: ignore[attr-defined]
    try:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study
        last = [st for st, _ in assoc.send_c_get(ident, GET) if st][-1]  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert last.Status == 0x0000 and sorted(got) == sops

    # C-MOVE to a TLS destination: the archive is the TLS client of the sub-association
    dest_dir = s.home / "moved"
    assoc = _pynet(s, _client_ctx(pki, "GETTER"), "GETTER", move=True)
    assert assoc.is_established  # type: ignore[attr-defined]
    try:
        last = [st for st, _ in assoc.send_c_move(ident, "TLSDEST", MOVE) if st][-1]  # type: ignore[attr-defined]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert last.Status == 0x0000, last
    moved = sorted(str(pydicom.dcmread(str(p)).SOPInstanceUID) for p in dest_dir.iterdir())
    assert moved == sops


def test_the_router_forwards_over_tls_presenting_its_certificate(
    hstack: tuple[Stack, Pki], tmp_path: Path
) -> None:
    """A routing rule sends what WORKSTATION stores to a DCMTK storescp that speaks only TLS
    and requires a client certificate of the project CA: every instance arrives there."""
    s, pki = hstack
    files = ct_series(tmp_path / "in", 2, patient_id="TLS0002")
    r = _storescu(s, _tls_args(pki, "WORKSTATION"), files, aet="WORKSTATION")
    assert r.returncode == 0, r.stdout + r.stderr
    sops = sorted(str(pydicom.dcmread(str(f)).SOPInstanceUID) for f in files)
    routed = s.home / "routed"

    def arrived() -> list[str]:
        try:
            return sorted(str(pydicom.dcmread(str(p)).SOPInstanceUID) for p in routed.iterdir())
        except Exception:  # noqa: BLE001 - a file storescp is still writing: ask again
            return []

    wait_for(lambda: arrived() == sops, 120, "both instances forwarded over TLS")


def test_plain_storescu_on_the_tls_port_is_not_served(
    hstack: tuple[Stack, Pki], tmp_path: Path
) -> None:
    s, pki = hstack
    files = ct_series(tmp_path / "plain", 1, patient_id="TLS0002")
    r = _storescu(s, [], files)
    assert r.returncode != 0
    assert "Received Store Response" not in r.stdout + r.stderr
    # raw: an A-ASSOCIATE-RQ in the clear gets no A-ASSOCIATE-AC, only the connection closed
    rq = dul.associate_rq(
        s.settings.ingest_ae_title, "MODALITY", [(1, str(Verification), ["1.2.840.10008.1.2"])],
        16384, "1.2.3", "X",
    )  # fmt: skip
    got = b""
    with socket.create_connection(("127.0.0.1", s.settings.ingest_port), timeout=30) as sock:
        sock.sendall(rq)
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass
    assert got[:1] in (b"", b"\x15"), got[:16]  # nothing, or a TLS alert; never a PDU
    # and the study was never stored: not found over TLS
    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    assert _find_study(s, pki, study, tmp_path / "find") == []


def _s_client(s: Stack, pki: Pki, extra: list[str]) -> subprocess.CompletedProcess[str]:
    require_tool("openssl")
    return subprocess.run(
        [
            "openssl", "s_client", "-connect", f"127.0.0.1:{s.settings.qr_port}",
            "-CAfile", str(pki.ca), "-verify_return_error", "-brief", *extra,
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def _refusal(port: int, ctx: ssl.SSLContext) -> str:
    """The alert with which the archive turns a TLS peer away. Under TLS 1.3 the server checks
    the client's certificate after the client considers the handshake done, so openssl
    s_client prints CONNECTION ESTABLISHED and may exit before the alert arrives (it did in
    CI); this peer (OpenSSL through Python's ssl) reads until the server answers."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        try:
            data = s.recv(1)  # a trusted peer waits here: the server awaits its A-ASSOCIATE-RQ
        except ssl.SSLError as exc:
            return str(exc.reason or exc)
        except ConnectionError as exc:
            return type(exc).__name__
        assert data == b"", f"the archive sent {data!r} to a peer it should refuse"
        return "closed"


def test_openssl_without_or_with_an_untrusted_certificate_is_refused(
    hstack: tuple[Stack, Pki], tmp_path: Path
) -> None:
    s, pki = hstack
    trusted = _s_client(s, pki, ["-cert", str(pki.client("PYNET")[0]),
                                 "-key", str(pki.client("PYNET")[1])])  # fmt: skip
    assert "CONNECTION ESTABLISHED" in trusted.stderr, trusted.stderr
    assert "Protocol version: TLSv1.3" in trusted.stderr or "TLSv1.2" in trusted.stderr

    no_cert = ssl.create_default_context(cafile=str(pki.ca))
    assert _refusal(s.settings.qr_port, no_cert) == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    rogue = ensure_pki(tmp_path / "rogue")  # another CA, with the same names in it
    cert, key = rogue.client("PYNET")
    rogue_ctx = ssl.create_default_context(cafile=str(pki.ca))
    rogue_ctx.load_cert_chain(str(cert), str(key))
    assert _refusal(s.settings.qr_port, rogue_ctx) == "TLSV1_ALERT_UNKNOWN_CA"
    # either way no DICOM is served: pynetdicom with the rogue certificate gets no association
    assoc = _pynet(s, tls.client_context(str(pki.ca), str(cert), str(key)), "PYNET")
    assert not assoc.is_established
    assert not assoc.is_rejected


def _pynet(s: Stack, ctx: ssl.SSLContext, calling: str, called: str | None = None,
           port: int | None = None, get: bool = False, move: bool = False,
           on_store: Any = None) -> Any:  # fmt: skip
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 30
    ae.add_requested_context(Verification)
    roles = []
    if get:
        ae.add_requested_context(GET)
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        roles = [build_role(CTImageStorage, scp_role=True)]
    if move:
        ae.add_requested_context(MOVE)
    return ae.associate(
        "127.0.0.1",
        port or s.settings.qr_port,
        ae_title=called or s.settings.qr_ae_title,
        ext_neg=roles,
        tls_args=(ctx, "127.0.0.1"),
        evt_handlers=[(evt.EVT_C_STORE, on_store)] if on_store else None,
    )


def _client_ctx(pki: Pki, ae: str) -> ssl.SSLContext:
    cert, key = pki.client(ae)
    return tls.client_context(str(pki.ca), str(cert), str(key))


def _rejected(assoc: object) -> tuple[int, int, int]:
    rj = assoc.acceptor.primitive  # type: ignore[attr-defined]
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def test_certificate_of_another_ae_is_rejected(hstack: tuple[Stack, Pki]) -> None:
    s, pki = hstack
    for port, called in (
        (s.settings.qr_port, s.settings.qr_ae_title),
        (s.settings.ingest_port, s.settings.ingest_ae_title),
    ):
        assoc = _pynet(s, _client_ctx(pki, "MODALITY"), "PYNET", called, port)
        assert assoc.is_rejected  # type: ignore[attr-defined]
        assert _rejected(assoc) == (1, 1, 3)
        ok = _pynet(s, _client_ctx(pki, "PYNET"), "PYNET", called, port)
        assert ok.is_established  # type: ignore[attr-defined]
        ok.release()  # type: ignore[attr-defined]


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(
    hstack: tuple[Stack, Pki], tmp_path: Path
) -> None:
    s, pki = hstack
    # a certificate of the project CA, but for an AE the archive does not know
    assoc = _pynet(s, _client_ctx(pki, "INTRUDER"), "INTRUDER")
    assert assoc.is_rejected and _rejected(assoc) == (1, 1, 3)  # type: ignore[attr-defined]
    assoc = _pynet(s, _client_ctx(pki, "PYNET"), "PYNET", called="NOT_STRATA")
    assert assoc.is_rejected and _rejected(assoc) == (1, 1, 7)  # type: ignore[attr-defined]
    # the same through DCMTK on the ingest SCP
    files = ct_series(tmp_path / "rj", 1, patient_id="TLS0003")
    r = _storescu(s, _tls_args(pki, "MODALITY"), files, aec="NOT_STRATA")
    assert r.returncode != 0 and "Called AE Title Not Recognized" in r.stdout + r.stderr
    r = _storescu(s, _tls_args(pki, "INTRUDER"), files, aet="INTRUDER")
    assert r.returncode != 0 and "Calling AE Title Not Recognized" in r.stdout + r.stderr


def test_wildcard_in_a_retrieve_key_fails_a900(hstack: tuple[Stack, Pki]) -> None:
    s, pki = hstack
    assoc = _pynet(s, _client_ctx(pki, "PYNET"), "PYNET", get=True)
    assert assoc.is_established  # type: ignore[attr-defined]
    try:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = "1.2.*"
        statuses = [st.Status for st, _ in assoc.send_c_get(ident, GET) if st]
    finally:
        assoc.release()  # type: ignore[attr-defined]
    assert statuses and statuses[-1] == 0xA900


def test_the_operator_writes_events_through_sasl_ssl(hstack: tuple[Stack, tls.Pki]) -> None:
    """The CLI runs as strata-operator (its default principal under SASL_SSL): a legal hold
    it places is an event on the study topic, which the index (strata-index) applies."""
    s, _ = hstack
    study = "1.2.826.0.1.3680043.10.999.20"
    s.cli("hold", "place", study, "--reason", "kafka acl check", "--by", "e2e")
    assert wait_for(lambda: study in s.cli("hold", "list").stdout, 30, step=0.2)


def test_the_audit_trail_goes_through_sasl_ssl(
    hstack: tuple[Stack, tls.Pki], tmp_path: Path
) -> None:
    """The ingest node (strata-ingest) and the index node (strata-index) write their audit
    events to the audit topic, and the index reads them into the audit table. The emitter
    never fails the audited operation, so a refused write would only show here."""
    s, pki = hstack
    files = ct_series(tmp_path / "audited", 1, patient_id="KAFKA-AUDIT")
    study = pydicom.dcmread(str(files[0])).StudyInstanceUID
    r = _storescu(s, _tls_args(pki, "MODALITY"), files)
    assert r.returncode == 0, r.stderr
    assert wait_for(lambda: _find_study(s, pki, study, tmp_path / "find"), 60, step=0.5)

    def audited() -> set[tuple[str, str]]:
        events = json.loads(s.cli("audit", "--since", "month", "--json").stdout)
        return {(e["action"], e["service"]) for e in events}

    assert wait_for(lambda: {("store", "ingest"), ("query", "index")} <= audited(), 60, step=0.5)


def test_no_request_of_the_archive_was_refused_by_kafka(hstack: tuple[Stack, tls.Pki]) -> None:
    """Last in this module: every service and CLI command above ran as its own principal,
    and the broker (which logs each request its ACLs refuse) refused none of them."""
    s, _ = hstack
    denied = [
        line
        for line in (s.home / "logs" / "kafka.log").read_text().splitlines()
        if "Denied" in line
    ]
    assert denied == []
