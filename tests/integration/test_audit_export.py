"""The audit exporter against a real syslog receiver: rsyslog (Debian's rsyslogd with its
GnuTLS driver) listening for RFC 5425 syslog over mutual TLS with the project CA, fed from the
audit topic of a real Kafka broker by the emitter every service uses.

Checked: each audit event arrives once as an RFC 5424 message whose body is a PS3.15 A.5
AuditMessage with the elements A.5 requires; a restarted exporter resumes after its committed
offset (nothing re-sent); with the receiver down, nothing is lost: the exporter rewinds and
sends once it is back."""

from __future__ import annotations

import dataclasses
import re
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest

from strata.common import audit
from strata.common.pki import Pki, ensure_pki
from strata.common.settings import Settings
from strata.processors.audit_export import Exporter, wait_sent
from strata.proto.strata.v1 import events_pb2 as pb
from strata.stack.procs import free_port
from tests.integration.test_kafka_paths import kafka  # noqa: F401 - fixture
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration

HEADER = re.compile(
    rb"^<(\d+)>1 (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z) (\S+) strata - IHE\+RFC-3881 "
    rb'\[strata@32473 eventId="([^"]+)"\] \xef\xbb\xbf(.*)$'
)


class Rsyslog:
    def __init__(self, work: Path, port: int, pki: Pki) -> None:
        exe = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
        if not Path(exe).exists() or not any(Path("/usr/lib").glob("*/rsyslog/lmnsd_gtls.so")):
            raise AssertionError(
                "rsyslog with TLS is needed (apt-get install rsyslog rsyslog-gnutls)"
            )
        self.exe, self.work, self.port = exe, work, port
        self.out = work / "received.log"
        self.conf = work / "rsyslog.conf"
        work.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(
            f"""
global(workDirectory="{work}" maxMessageSize="64k"
       defaultNetstreamDriver="gtls"
       defaultNetstreamDriverCAFile="{pki.ca}"
       defaultNetstreamDriverCertFile="{pki.server_cert}"
       defaultNetstreamDriverKeyFile="{pki.server_key}")
module(load="imtcp" streamDriver.name="gtls" streamDriver.mode="1"
       streamDriver.authMode="x509/certvalid")
input(type="imtcp" address="127.0.0.1" port="{port}")
template(name="raw" type="string" string="%rawmsg%\\n")
*.* action(type="omfile" file="{self.out}" template="raw")
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-n", "-f", str(self.conf), "-i", str(self.work / "rsyslogd.pid")],
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / "rsyslogd.err", "ab"),  # noqa: SIM115 - the child keeps it
        )

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                self.work / "rsyslogd.err"
            ).read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

        wait_for(listening, 30, "rsyslogd to listen")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def messages(self) -> list[bytes]:
        if not self.out.exists():
            return []
        return [line for line in self.out.read_bytes().split(b"\n") if line]


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Rsyslog, Pki]]:
    base = tmp_path_factory.mktemp("syslog")
    pki = ensure_pki(base / "pki")
    r = Rsyslog(base / "rsyslog", free_port(), pki)
    r.start()
    try:
        yield r, pki
    finally:
        r.stop()


def _emit(settings: Settings, events: list[pb.AuditEvent]) -> None:
    audit.configure(settings, "test")
    try:
        for ev in events:
            audit.record(
                ev.action,
                ev.outcome,
                interface=ev.where.interface,
                peer=ev.where.peer_address,
                who=ev.who,
                what=ev.what,
                dicom_status=ev.dicom_status,
                http_status=ev.http_status,
                grpc_code=ev.grpc_code,
            )
        assert audit.flush(30), "Kafka did not acknowledge the audit events"
    finally:
        audit.close()


def _check_message(raw: bytes) -> tuple[str, ET.Element]:
    m = HEADER.match(raw)
    assert m, raw[:200]
    assert int(m.group(1)) in (84, 85)  # facility 10 (security), notice or warning
    root = ET.fromstring(m.group(5))
    # PS3.15 A.5.1: the elements every audit message has
    assert root.tag == "AuditMessage"
    ev = root.find("EventIdentification")
    assert ev is not None
    for attr in ("EventActionCode", "EventDateTime", "EventOutcomeIndicator"):
        assert ev.get(attr), attr
    code = ev.find("EventID")
    assert code is not None and code.get("csd-code") and code.get("codeSystemName") == "DCM"
    aps = root.findall("ActiveParticipant")
    assert aps and all(a.get("UserID") and a.get("UserIsRequestor") for a in aps)
    src = root.find("AuditSourceIdentification")
    assert src is not None and src.get("AuditSourceID")
    for o in root.findall("ParticipantObjectIdentification"):
        assert o.get("ParticipantObjectID") and o.get("ParticipantObjectTypeCode")
        assert o.find("ParticipantObjectIDTypeCode") is not None
    return m.group(4).decode(), root


def _events(n: int, tag: str) -> list[pb.AuditEvent]:
    out = []
    for i in range(n):
        action = ("store", "query", "auth-failure")[i % 3]
        out.append(
            pb.AuditEvent(
                action=action,
                outcome="success" if action != "auth-failure" else "serious-failure",
                who=pb.AuditWho(calling_ae_title=f"CT{i}", user=f"user-{tag}-{i}"),
                where=pb.AuditWhere(peer_address=f"127.0.0.1:{1000 + i}", interface="dicom"),
                what=pb.AuditWhat(
                    patient_ids=[f"PAT-{tag}-{i}"],
                    study_instance_uids=[f"1.2.826.0.1.{i}"],
                    instances=i + 1,
                    query_level="STUDY" if action == "query" else "",
                ),
            )
        )
    return out


def test_audit_events_reach_rsyslog_as_dicom_audit_messages(
    kafka: Settings,  # noqa: F811
    receiver: tuple[Rsyslog, Pki],
) -> None:
    rs, pki = receiver
    cert, key = pki.client("strata-audit")
    settings = dataclasses.replace(
        kafka,
        audit_syslog=f"127.0.0.1:{rs.port}",
        audit_syslog_ca=str(pki.ca),
        audit_syslog_cert=str(cert),
        audit_syslog_key=str(key),
    )
    _emit(settings, _events(3, "a"))
    ex = Exporter(settings)
    try:
        assert wait_sent(ex, 3) == 3
    finally:
        ex.close()
    msgs = wait_for(lambda: len(rs.messages()) >= 3 and rs.messages(), 30, "3 syslog messages")
    seen: dict[str, ET.Element] = dict(_check_message(m) for m in msgs)
    assert len(seen) == 3
    by_user: dict[str, Any] = {
        r.findall("ActiveParticipant")[0].get("UserID"): r for r in seen.values()
    }
    store = by_user["user-a-0"]
    assert store.find("EventIdentification/EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    objs = {
        o.find("ParticipantObjectIDTypeCode").get("csd-code"): o.get("ParticipantObjectID")  # type: ignore[union-attr]
        for o in store.findall("ParticipantObjectIdentification")
    }
    assert objs == {"110180": "1.2.826.0.1.0", "2": "PAT-a-0"}
    failed = by_user["user-a-2"].find("EventIdentification")
    assert failed is not None and failed.get("EventOutcomeIndicator") == "8"

    # a restarted exporter resumes after its committed offset
    _emit(settings, _events(1, "b"))
    ex = Exporter(settings)
    try:
        assert wait_sent(ex, 1) == 1
        wait_for(lambda: len(rs.messages()) >= 4, 30, "the 4th message")
        assert wait_sent(ex, 2, timeout=3) == 1  # nothing else: the first three were committed

        # the receiver down: the exporter fails, rewinds, and sends once it is back
        rs.stop()
        _emit(settings, _events(1, "c"))
        with pytest.raises(OSError):
            for _ in range(60):
                ex.run_once(timeout=0.5)
        rs.start()
        assert wait_sent(ex, 2) == 2
    finally:
        ex.close()
    msgs = wait_for(lambda: len(rs.messages()) >= 5 and rs.messages(), 30, "5 syslog messages")
    ids = [_check_message(m)[0] for m in msgs]
    assert len(ids) == len(set(ids)) == 5, ids
