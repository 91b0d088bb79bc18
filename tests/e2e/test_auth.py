"""OAuth2/OIDC on every interface of one stack with STRATA_AUTH_MODE=oidc, against a real
identity provider (mock-oauth2-server): refusals (no token, expired, wrong audience, wrong
issuer, wrong signature, missing scope) with precise statuses, and valid tokens that work for
gRPC search, DICOMweb QIDO/WADO/metadata, STOW with the write scope and the admin endpoints
(and the CLI through them) with the admin scope."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pydicom
import pytest
import requests
from grpc_health.v1 import health_pb2, health_pb2_grpc

from strata.common.settings import Settings
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from tests.support.idp import IdP, idp, other_idp  # noqa: F401 - fixtures
from tests.support.stack import make_stack
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

AUD = "strata"
CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
VIEWER = Path(__file__).parent / "viewer"
READ, WRITE, ADMIN = "strata:read", "strata:write", "strata:admin"


@pytest.fixture(scope="module")
def a(tmp_path_factory: pytest.TempPathFactory, idp: IdP) -> Iterator[dict]:  # noqa: F811
    s = make_stack(tmp_path_factory.mktemp("auth-home"))
    s.env.update(
        {
            "STRATA_AUTH_MODE": "oidc",
            "STRATA_OIDC_ISSUER": idp.issuer,  # JWKS URL from its discovery document
            "STRATA_OIDC_AUDIENCE": AUD,
        }
    )
    s.settings = Settings.from_env(s.env)
    s.cli("viewer", "install", timeout=900, check=False)  # for the login test; cached
    s.up()
    s.cli("send", "-q", str(CT))  # a study OHIF renders (as in test_viewer)
    files = ct_series(tmp_path_factory.mktemp("auth-data") / "s", 2, patient_id="AUTH-PAT")
    s.cli("send", "-q", *map(str, files))
    ds = pydicom.dcmread(str(files[0]))
    channel = grpc.insecure_channel(f"127.0.0.1:{s.settings.grpc_port}")
    stub = q_grpc.QueryServiceStub(channel)
    read = idp.token(READ)

    def indexed() -> bool:
        md = (("authorization", f"Bearer {read}"),)
        r = stub.SearchStudies(q.SearchRequest(match={"PatientID": "AUTH-PAT"}), metadata=md)
        return r.total == 1 and json.loads(r.matches[0])["00201208"]["Value"][0] == 2

    wait_for(indexed, 60, "the study to be indexed")
    try:
        yield {
            "stack": s,
            "stub": stub,
            "channel": channel,
            "web": f"http://127.0.0.1:{s.settings.dicomweb_port}{s.settings.dicomweb_prefix}",
            "admin": f"http://127.0.0.1:{s.settings.index_http_port}",
            "study": str(ds.StudyInstanceUID),
            "series": str(ds.SeriesInstanceUID),
            "sop": str(ds.SOPInstanceUID),
            "read": read,
        }
    finally:
        channel.close()
        s.down()


# Each bad credential: (how to get it, the words the refusal names). None = no header at all.
BAD: dict[str, tuple[Callable[[IdP, IdP], str | None], str]] = {
    "no token": (lambda i, o: None, "bearer token is required"),
    "expired": (lambda i, o: i.token(READ, client_id="expired"), "expired"),
    "wrong audience": (lambda i, o: i.token(READ, audience="another-service"), "audience"),
    "wrong issuer": (lambda i, o: i.token(READ, client_id="wrong-issuer"), "issuer"),
    # another provider's key under the same kid (both name their key after the issuer id)
    "wrong signature": (lambda i, o: o.token(READ), "signature"),
    "not a JWT": (lambda i, o: "abc.def", "not a JWT"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_grpc_refuses_bad_tokens_unauthenticated(
    a: dict,
    idp: IdP,  # noqa: F811
    other_idp: IdP,  # noqa: F811
    case: str,
) -> None:
    get, words = BAD[case]
    token = get(idp, other_idp)
    md = () if token is None else (("authorization", f"Bearer {token}"),)
    with pytest.raises(grpc.RpcError) as e:
        a["stub"].SearchStudies(q.SearchRequest(match={"PatientID": "AUTH-PAT"}), metadata=md)
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert words in e.value.details()
    assert token is None or token not in e.value.details()


@pytest.mark.parametrize("case", list(BAD))
def test_dicomweb_refuses_bad_tokens_401(
    a: dict,
    idp: IdP,  # noqa: F811
    other_idp: IdP,  # noqa: F811
    case: str,
) -> None:
    get, words = BAD[case]
    token = get(idp, other_idp)
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    for url in (
        f"{a['web']}/studies?PatientID=AUTH-PAT",
        f"{a['web']}/studies/{a['study']}/metadata",
    ):
        r = requests.get(url, headers=headers, timeout=10)
        assert r.status_code == 401
        assert r.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        assert r.headers["Cache-Control"] == "no-store"
        assert words in r.json()["error"]
        assert "AUTH-PAT" not in r.text and (token is None or token not in r.text)


def test_missing_scope_is_permission_denied_and_403(a: dict, idp: IdP) -> None:  # noqa: F811
    write_only = idp.token(WRITE)
    md = (("authorization", f"Bearer {write_only}"),)
    with pytest.raises(grpc.RpcError) as e:
        a["stub"].SearchStudies(q.SearchRequest(match={"PatientID": "AUTH-PAT"}), metadata=md)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert READ in e.value.details()
    # a streaming method is refused the same way (the interceptor matches the method's kind)
    with pytest.raises(grpc.RpcError) as e2:
        list(a["stub"].RetrieveInstances(q.RetrieveRequest(study_instance_uid=a["study"])))
    assert e2.value.code() == grpc.StatusCode.UNAUTHENTICATED
    r = requests.get(
        f"{a['web']}/studies",
        headers={"Authorization": f"Bearer {write_only}"},
        timeout=10,
    )
    assert r.status_code == 403
    assert r.headers["WWW-Authenticate"].startswith(
        f'Bearer error="insufficient_scope", scope="{READ}"'
    )


def test_grpc_health_stays_open(a: dict) -> None:
    health = health_pb2_grpc.HealthStub(a["channel"])
    r = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert r.status == health_pb2.HealthCheckResponse.SERVING


def test_valid_read_token_for_grpc_and_dicomweb(a: dict) -> None:
    md = (("authorization", f"Bearer {a['read']}"),)
    r = a["stub"].SearchStudies(q.SearchRequest(match={"PatientID": "AUTH-PAT"}), metadata=md)
    assert r.total == 1
    chunks = list(
        a["stub"].RetrieveInstances(
            q.RetrieveRequest(study_instance_uid=a["study"]), metadata=md, timeout=30
        )
    )
    assert chunks
    h = {"Authorization": f"Bearer {a['read']}"}
    qido = requests.get(f"{a['web']}/studies?PatientID=AUTH-PAT", headers=h, timeout=10)
    assert qido.status_code == 200 and len(qido.json()) == 1
    meta = requests.get(f"{a['web']}/studies/{a['study']}/metadata", headers=h, timeout=10)
    assert meta.status_code == 200 and len(meta.json()) == 2
    wado = requests.get(
        f"{a['web']}/studies/{a['study']}/series/{a['series']}/instances/{a['sop']}",
        headers={**h, "Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=30,
    )
    assert wado.status_code == 200 and len(wado.content) > 1000
    rendered = requests.get(
        f"{a['web']}/studies/{a['study']}/series/{a['series']}/instances/{a['sop']}/rendered",
        headers=h,
        timeout=30,
    )
    assert rendered.status_code == 200
    for resp in (qido, meta, wado, rendered):  # PHI: never kept by a cache
        assert resp.headers["Cache-Control"] == "no-store"


def _stow_body(ds: pydicom.Dataset) -> tuple[bytes, str]:
    import io

    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    b = "AUTHB0UNDARY"
    body = (
        f"--{b}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + buf.getvalue()
        + f"\r\n--{b}--\r\n".encode()
    )
    return body, f'multipart/related; type="application/dicom"; boundary={b}'


def test_a_second_sites_copier_fetches_with_its_token(
    a: dict,
    idp: IdP,  # noqa: F811
    tmp_path: Path,
) -> None:
    """A DR follower's object copier against this site (tokens required): without a token it
    is refused and says which setting is missing; with STRATA_DR_PEER_TOKEN_FILE holding a
    read token it fetches the study's objects by key (FetchObjects), byte-identical, and
    records each copy in the log."""
    from strata.common.errors import Unavailable
    from strata.processors.replicate import Copier
    from tests.support.events import read_all

    stack = a["stack"]
    envs = [
        e
        for e in read_all(stack.settings)
        if e.WhichOneof("payload") == "instance_stored"
        and e.instance_stored.study_instance_uid == a["study"]
    ]
    assert envs

    def copier(home: Path, token_file: str) -> Copier:
        return Copier(
            Settings(
                home=home,
                kafka_bootstrap=stack.settings.kafka_bootstrap,  # records go to this log
                dr_site="B",
                dr_peer_site="A",
                dr_peer_grpc=f"127.0.0.1:{stack.settings.grpc_port}",
                dr_peer_token_file=token_file,
                dr_copy_workers=2,
            )
        )

    def run(c: Copier, batch: list) -> None:
        try:
            c.copy_batch(batch)
        finally:
            c.pool.shutdown()
            c.channel.close()
            if c._producer is not None:
                c._producer.flush(10)

    with pytest.raises(Unavailable, match="UNAUTHENTICATED.*STRATA_DR_PEER_TOKEN_FILE"):
        run(copier(tmp_path / "no-token", ""), envs)
    token = tmp_path / "token"
    token.write_text(idp.token(READ) + "\n")
    c = copier(tmp_path / "b", str(token))
    run(c, envs)
    assert c.result.copied == len(envs) and c._by_key  # by key (FetchObjects), not via the index
    for e in envs:
        st = e.instance_stored
        with (
            c.hot.open(st.location.key) as f,
            open(stack.settings.hot_dir / st.location.key, "rb") as g,
        ):
            assert f.read() == g.read()
    mine = {e.event_id for e in envs}
    recorded = [
        e.instance_replicated.source_event_id
        for e in read_all(stack.settings)
        if e.WhichOneof("payload") == "instance_replicated"
    ]
    assert sorted(x for x in recorded if x in mine) == sorted(mine)


def test_stow_needs_the_write_scope(a: dict, idp: IdP, tmp_path: Path) -> None:  # noqa: F811
    f = ct_series(tmp_path / "stow", 1, patient_id="AUTH-STOW")[0]
    ds = pydicom.dcmread(str(f))
    body, ctype = _stow_body(ds)
    url = f"{a['web']}/studies"
    refused = requests.post(
        url,
        data=body,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {a['read']}"},
        timeout=30,
    )
    assert refused.status_code == 403
    assert 'error="insufficient_scope"' in refused.headers["WWW-Authenticate"]
    assert (
        requests.post(url, data=body, headers={"Content-Type": ctype}, timeout=30).status_code
        == 401
    )
    ok = requests.post(
        url,
        data=body,
        headers={"Content-Type": ctype, "Authorization": f"Bearer {idp.token(WRITE)}"},
        timeout=60,
    )
    assert ok.status_code == 200, ok.text
    assert ok.headers["Cache-Control"] == "no-store"


def test_admin_endpoints_need_the_admin_scope(a: dict, idp: IdP) -> None:  # noqa: F811
    url = f"{a['admin']}/holds"
    none = requests.get(url, timeout=10)  # loopback is no credential once auth is on
    assert none.status_code == 401
    assert none.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
    read = requests.get(url, headers={"Authorization": f"Bearer {a['read']}"}, timeout=10)
    assert read.status_code == 403 and ADMIN in read.json()["error"]
    ok = requests.get(url, headers={"Authorization": f"Bearer {idp.token(ADMIN)}"}, timeout=10)
    assert ok.status_code == 200 and ok.json() == []
    assert requests.get(f"{a['admin']}/healthz", timeout=10).status_code == 200  # probe: open


def test_cli_passes_its_token_to_admin_endpoints(a: dict, idp: IdP) -> None:  # noqa: F811
    s = a["stack"]
    refused = s.cli("hold", "list", check=False)
    assert refused.returncode != 0 and "bearer token is required" in refused.stderr
    admin = idp.token(ADMIN)
    by_flag = s.cli("--token", admin, "hold", "list")
    assert "0 active holds" in by_flag.stdout
    s.env["STRATA_TOKEN"] = admin
    try:
        assert "0 active holds" in s.cli("hold", "list").stdout
    finally:
        del s.env["STRATA_TOKEN"]
    assert admin not in refused.stderr + by_flag.stdout + by_flag.stderr


def test_ohif_logs_in_through_the_provider_and_opens_a_study(a: dict, tmp_path: Path) -> None:
    """Authorization code + PKCE in a real browser: the viewer sends the user to the provider's
    login page, comes back with a token, and every DICOMweb request it makes carries it."""
    import subprocess

    if not shutil.which("node") or not Path("/usr/bin/chromium").exists():
        raise AssertionError("node and Debian's chromium are needed (make deps)")
    if not (VIEWER / "node_modules" / "playwright-core").is_dir():
        raise AssertionError("playwright-core is not installed (make deps: npm ci)")
    s = a["stack"]
    base = f"http://127.0.0.1:{s.settings.dicomweb_port}"
    config = requests.get(f"{base}/app-config.js", timeout=10)
    assert config.status_code == 200, "the OHIF viewer is not installed (strata viewer install)"
    assert "oidc:" in config.text
    ct = pydicom.dcmread(str(CT), stop_before_pixels=True)
    out = tmp_path / "viewport.png"
    r = subprocess.run(
        [
            "node",
            str(VIEWER / "ohif.mjs"),
            base,
            str(ct.PatientName).split("^")[0],
            str(ct.StudyInstanceUID),
            str(out),
            "--login",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=VIEWER,
    )
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in report, report["error"]
    assert report["login_page"] is True  # the provider's own page, not the archive's
    assert report["failed"] == [], report["failed"]
    assert report["dicomweb"] >= 3 and report["with_token"] == report["dicomweb"], report
    assert report["lit_pixels"] > 1000, report
