"""The audit trail end to end (issue #20): one stack with OIDC on, a known set of operations by
real peers (storescu, findscu, getscu, HTTP QIDO/WADO/STOW, a gRPC search, refused tokens, an
unknown calling AE, a legal hold), then every one of them is in the audit table EXACTLY ONCE
with the right who / what / outcome, every event of the audit topic is in the table once, and
no log file of the stack names the test patient. With STRATA_AUDIT_SYSLOG set, ``strata up``
runs the audit exporter too: every event of the topic reaches a real rsyslog receiver (RFC
5425, mutual TLS) as a PS3.15 A.5 message."""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pydicom
import pytest
import requests

from strata.common.events import decode
from strata.common.kafka import read_log
from strata.common.pki import ensure_pki
from strata.common.settings import Settings
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from strata.stack.procs import free_port
from tests.e2e.test_auth import _stow_body
from tests.integration.test_audit_export import Rsyslog, _check_message
from tests.support.dcmtk import dcmtk_env, findscu, storescu
from tests.support.idp import IdP, idp  # noqa: F401 - fixture
from tests.support.stack import make_stack, require_tool
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

READ, WRITE, ADMIN = "strata:read", "strata:write", "strata:admin"
PID, NAME = "AUDPAT-7731", "Quixote^Audita"  # the test patient: PHI that only the audit keeps
N = 3  # instances of the stored study


def _patient_files(out: Path, n: int) -> list[Path]:
    files = ct_series(out, n, patient_id=PID)
    for f in files:
        ds = pydicom.dcmread(str(f))
        ds.PatientName = NAME
        ds.save_as(str(f), enforce_file_format=True)
    return files


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, idp: IdP) -> Iterator[dict[str, Any]]:  # noqa: F811
    """The stack, and the operations of the run (each exactly once), in order."""
    home = tmp_path_factory.mktemp("audit-home")
    s = make_stack(home)
    ae_config = home.parent / "audit-aes.json"
    ae_config.write_text(json.dumps({"allow_unknown": False, "aes": {"MODALITY": {}}}))
    # the syslog receiver of the audit exporter that strata up starts (outside the home: its
    # messages are the audit trail, PHI by design, not a log of the stack)
    syslog = tmp_path_factory.mktemp("audit-syslog")
    pki = ensure_pki(syslog / "pki")
    receiver = Rsyslog(syslog / "rsyslog", free_port(), pki)
    receiver.start()
    cert, key = pki.client("strata-audit")
    s.env.update(
        {
            "STRATA_AUDIT_SYSLOG": f"127.0.0.1:{receiver.port}",
            "STRATA_AUDIT_SYSLOG_CA": str(pki.ca),
            "STRATA_AUDIT_SYSLOG_CERT": str(cert),
            "STRATA_AUDIT_SYSLOG_KEY": str(key),
            "STRATA_AUTH_MODE": "oidc",
            "STRATA_OIDC_ISSUER": idp.issuer,
            "STRATA_OIDC_AUDIENCE": "strata",
            "STRATA_AE_CONFIG": str(ae_config),
            "STRATA_TOKEN": idp.token(ADMIN, client_id="auditor"),  # strata audit (admin)
        }
    )
    s.settings = st = Settings.from_env(s.env)
    data = tmp_path_factory.mktemp("audit-data")
    files = _patient_files(data / "study", N)
    stow_file = _patient_files(data / "stow", 1)[0]
    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    stow_study = str(pydicom.dcmread(str(stow_file)).StudyInstanceUID)
    web = f"http://127.0.0.1:{st.dicomweb_port}{st.dicomweb_prefix}"
    channel = grpc.insecure_channel(f"127.0.0.1:{st.grpc_port}")
    stub = q_grpc.QueryServiceStub(channel)
    try:
        s.up()
    except BaseException:
        receiver.stop()
        raise
    out: dict[str, Any] = {
        "stack": s,
        "study": study,
        "stow_study": stow_study,
        "cli": [],
        "syslog": receiver,
    }
    try:
        # 1. C-STORE: one association, three instances of one study
        rc, statuses, text = storescu(st.ingest_port, st.ingest_ae_title, files)
        assert rc == 0 and len(statuses) == N, text
        # 2. an unknown calling AE: A-ASSOCIATE-RJ
        r = subprocess.run(
            ["storescu", "-aet", "INTRUDER", "-aec", st.ingest_ae_title, "127.0.0.1",
             str(st.ingest_port), str(files[0])],
            env=dcmtk_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode != 0
        # (waiting for the index: a gRPC search by another client, excluded below)
        poll = (("authorization", f"Bearer {idp.token(READ, client_id='poller')}"),)

        def indexed() -> bool:
            res = stub.SearchStudies(q.SearchRequest(match={"PatientID": PID}), metadata=poll)
            return res.total == 1

        wait_for(indexed, 90, "the study to be indexed")
        # 3. C-FIND (calling AE WORKSTATION)
        found = findscu(st.qr_port, st.qr_ae_title, "STUDY", {"PatientID": PID,
                                                              "StudyInstanceUID": ""})  # fmt: skip
        assert len(found) == 1
        # 4. C-GET (calling AE GETTER)
        require_tool("getscu")
        got = data / "got"
        got.mkdir()
        r = subprocess.run(
            ["getscu", "-S", "-aet", "GETTER", "-aec", st.qr_ae_title, "-od", str(got),
             "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
             "127.0.0.1", str(st.qr_port)],
            env=dcmtk_env(), capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert r.returncode == 0 and len(list(got.iterdir())) == N, r.stdout + r.stderr
        # 5. QIDO (dr-qido) and 6. WADO metadata (dr-view)
        h = {"Authorization": f"Bearer {idp.token(READ, client_id='dr-qido')}"}
        qido = requests.get(f"{web}/studies?PatientID={PID}", headers=h, timeout=30)
        assert qido.status_code == 200 and len(qido.json()) == 1
        h = {"Authorization": f"Bearer {idp.token(READ, client_id='dr-view')}"}
        meta = requests.get(f"{web}/studies/{study}/metadata", headers=h, timeout=30)
        assert meta.status_code == 200 and len(meta.json()) == N
        # 7. gRPC search (dr-grpc)
        md = (("authorization", f"Bearer {idp.token(READ, client_id='dr-grpc')}"),)
        assert stub.SearchStudies(q.SearchRequest(match={"PatientID": PID}), metadata=md).total
        # 8. refused tokens: gRPC and DICOMweb (tokens for another audience, named mallory-*)
        bad = idp.token(READ, audience="another-service", client_id="mallory-grpc")
        with pytest.raises(grpc.RpcError) as e:
            stub.SearchStudies(
                q.SearchRequest(match={"PatientID": PID}),
                metadata=(("authorization", f"Bearer {bad}"),),
            )
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bad = idp.token(READ, audience="another-service", client_id="mallory-web")
        refused = requests.get(
            f"{web}/studies?PatientID={PID}", headers={"Authorization": f"Bearer {bad}"}, timeout=30
        )
        assert refused.status_code == 401
        # 9. STOW-RS (dr-stow): one instance of another study
        body, ctype = _stow_body(pydicom.dcmread(str(stow_file)))
        stow = requests.post(
            f"{web}/studies",
            data=body,
            headers={"Content-Type": ctype,
                     "Authorization": f"Bearer {idp.token(WRITE, client_id='dr-stow')}"},
            timeout=60,
        )  # fmt: skip
        assert stow.status_code == 200, stow.text
        # 10. a legal hold, by an operator
        out["cli"].append(
            s.cli("hold", "place", study, "--reason", "litigation", "--by", "officer-kim")
        )
        yield out
    finally:
        channel.close()
        s.down()
        receiver.stop()


def _table(s: Any, *args: str) -> list[dict[str, Any]]:
    r = s.cli("audit", "--since", "month", "--json", *args)
    return list(json.loads(r.stdout))


def test_every_operation_is_in_the_audit_table_exactly_once(run: dict[str, Any]) -> None:
    s, study = run["stack"], run["study"]
    st: Settings = s.settings
    expected = {  # (action, interface, who) -> how many times
        ("store", "dicom", "MODALITY"): 1,
        ("association-rejected", "dicom", "INTRUDER"): 1,
        ("query", "dicom", "WORKSTATION"): 1,
        ("retrieve", "dicom", "GETTER"): 1,
        ("query", "dicomweb", "dr-qido"): 1,
        ("view", "dicomweb", "dr-view"): 1,
        ("query", "grpc", "dr-grpc"): 1,
        ("auth-failure", "grpc", "mallory-grpc"): 1,
        ("auth-failure", "dicomweb", "mallory-web"): 1,
        ("store", "dicomweb", "dr-stow"): 1,
        ("hold-place", "cli", "officer-kim"): 1,
    }

    def key(e: dict[str, Any]) -> tuple[str, str, str]:
        return (e["action"], e["interface"], e["user"] or e["calling_ae_title"])

    # Every record of the audit topic (read to its end now) reaches the table once, by id.
    def logged() -> list[Any]:
        return [decode(v) for v in read_log(st.kafka_bootstrap, st.audit_topic)]

    def complete() -> list[dict[str, Any]] | None:
        envs = logged()
        keys = {key_of(e) for e in envs}
        if not all(k in keys for k in expected):
            return None
        rows = _table(s, "--limit", "100000")
        return rows if {r["event_id"] for r in rows} >= {e.event_id for e in envs} else None

    def key_of(env: Any) -> tuple[str, str, str]:
        a = env.audit_event
        return (a.action, a.where.interface, a.who.user or a.who.calling_ae_title)

    rows = wait_for(complete, 90, "every audit event of the run in the audit table")
    ids = [r["event_id"] for r in rows]
    assert len(ids) == len(set(ids)), "an event id twice in the table"
    counts: dict[tuple[str, str, str], int] = {}
    for r in rows:
        counts[key(r)] = counts.get(key(r), 0) + 1
    for k, n in expected.items():
        assert counts.get(k, 0) == n, (k, counts.get(k, 0), sorted(counts))
    by = {key(r): r for r in rows}

    store = by[("store", "dicom", "MODALITY")]
    assert store["outcome"] == "success" and store["instances"] == N
    assert store["patient_ids"] == [PID] and store["study_uids"] == [study]
    assert store["called_ae_title"] == st.ingest_ae_title and store["node"] == "test-node"
    assert store["peer_address"].startswith("127.0.0.1:") and store["service"] == "ingest"

    rj = by[("association-rejected", "dicom", "INTRUDER")]
    assert rj["outcome"] == "serious-failure" and "reason 3" in rj["detail"]

    find = by[("query", "dicom", "WORKSTATION")]
    assert find["outcome"] == "success" and find["dicom_status"] == 0
    assert find["query_level"] == "STUDY" and find["query_keys"]["PatientID"] == PID
    assert find["patient_ids"] == [PID] and find["method"] == "C-FIND"

    get = by[("retrieve", "dicom", "GETTER")]
    assert get["outcome"] == "success" and get["method"] == "C-GET"
    assert get["instances"] == N and get["patient_ids"] == [PID] and get["study_uids"] == [study]

    qido = by[("query", "dicomweb", "dr-qido")]
    assert qido["http_status"] == 200 and qido["query_keys"] == {"PatientID": PID}
    assert qido["client_id"] == "" or qido["client_id"] == "dr-qido"

    view = by[("view", "dicomweb", "dr-view")]
    assert view["outcome"] == "success" and view["http_status"] == 200
    assert view["patient_ids"] == [PID] and view["study_uids"] == [study]

    g = by[("query", "grpc", "dr-grpc")]
    assert g["grpc_code"] == "OK" and g["query_keys"] == {"PatientID": PID}
    assert g["patient_ids"] == [PID] and g["method"] == "SearchStudies"

    bad_g = by[("auth-failure", "grpc", "mallory-grpc")]
    assert bad_g["grpc_code"] == "UNAUTHENTICATED" and "audience" in bad_g["detail"]
    bad_w = by[("auth-failure", "dicomweb", "mallory-web")]
    assert bad_w["http_status"] == 401 and bad_w["outcome"] == "serious-failure"

    stow = by[("store", "dicomweb", "dr-stow")]
    assert stow["outcome"] == "success" and stow["instances"] == 1
    assert stow["patient_ids"] == [PID] and stow["study_uids"] == [run["stow_study"]]

    hold = by[("hold-place", "cli", "officer-kim")]
    assert hold["study_uids"] == [study] and hold["service"] == "cli"

    # "who opened patient X's studies this month": the views and retrieves of the patient
    opened = _table(s, "--patient", PID, "--action", "view,retrieve")
    assert {(e["action"], e["user"] or e["calling_ae_title"]) for e in opened} == {
        ("view", "dr-view"),
        ("retrieve", "GETTER"),
    }
    table = s.cli("audit", "--patient", PID, "--since", "month").stdout
    assert "dr-view" in table and "GETTER" in table
    # and reading the audit trail is audited too (the auditor's token, the keys it searched by)
    reads = wait_for(
        lambda: [e for e in _table(s, "--action", "audit-read") if e["query_keys"].get("patient")],
        60,
        "the audit reads",
    )
    assert {(e["user"], e["interface"]) for e in reads} == {("auditor", "http")}
    assert {e["query_keys"]["patient"] for e in reads} == {PID} and reads[0]["patient_ids"] == [PID]


def test_strata_up_runs_the_audit_exporter(run: dict[str, Any]) -> None:
    """STRATA_AUDIT_SYSLOG set: ``strata up`` started ``strata audit export`` as a service of
    the stack, and every event of the audit topic arrives at the receiver (at least once: the
    exporter's contract; each checked as a PS3.15 A.5 message)."""
    s, receiver = run["stack"], run["syslog"]
    st: Settings = s.settings
    status = s.cli("status", check=False).stdout
    assert re.search(r"^audit-export +running ", status, re.M), status

    def delivered() -> set[str] | None:
        ids = {decode(v).event_id for v in read_log(st.kafka_bootstrap, st.audit_topic)}
        got = {_check_message(m)[0] for m in receiver.messages()}
        return got if ids and got >= ids else None

    got = wait_for(delivered, 90, "every audit event of the run at the syslog receiver")
    assert len(got) >= 11  # the run's operations (test_every_operation_...) at least


# Kafka's own data files are named *.log too: they hold the events (PHI by design), not logs.
_KAFKA_SEGMENT = re.compile(r".+-\d+$")


def test_no_patient_data_in_any_log(run: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    """After the run, no log file of the stack's home (and nothing this test process logged)
    names the test patient; the audit topic and table are where that belongs."""
    s = run["stack"]
    wait_for(lambda: _table(s, "--patient", PID), 60, "the run's audit events")
    logs = [
        p
        for p in Path(s.home).rglob("*")
        if p.is_file()
        and (p.suffix in (".log", ".out", ".err") or "log" in p.parent.name)
        and not _KAFKA_SEGMENT.match(p.parent.name)
    ]
    assert any(p.name.startswith("index") for p in logs), [p.name for p in logs]
    hits = []
    needles = [PID, NAME, NAME.split("^")[0], NAME.split("^")[1]]
    for p in logs:
        text = p.read_text(errors="replace")
        hits += [f"{p.relative_to(s.home)}: {n}" for n in needles if n in text]
    for r in run["cli"]:
        hits += [f"strata {r.args[3:5]}: {n}" for n in needles if n in r.stdout + r.stderr]
    hits += [f"test log: {n}" for n in needles if n in caplog.text]
    assert not hits, hits
