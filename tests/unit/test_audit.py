"""The audit trail's pure parts: the spool, the emitter's no-loss rules (against a stand-in
producer), per-study store records, the index row, the PS3.15 message and its syslog frame."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from strata.cli.audit import parse_time
from strata.common import audit
from strata.common.events import envelope
from strata.ingest.store import Outcome
from strata.processors.audit_export import audit_message, syslog_frame
from strata.processors.index.audit import COLUMNS, row
from strata.proto.strata.v1 import events_pb2 as pb
from tests.support.wait import wait_for


class FakeProducer:
    """Delivers (or fails) on poll, like librdkafka's callbacks; ``up`` says which."""

    def __init__(self) -> None:
        self.up = False
        self.pending: list[tuple[bytes, Any]] = []
        self.delivered: list[bytes] = []

    def produce(self, topic: str, value: bytes, on_delivery: Any) -> None:
        self.pending.append((value, on_delivery))

    def poll(self, timeout: float = 0) -> int:
        pending, self.pending = self.pending, []
        for value, cb in pending:
            if self.up:
                self.delivered.append(value)
                cb(None, None)
            else:
                cb("broker down", None)
        return len(pending)

    def flush(self, timeout: float = 0) -> int:
        self.poll()
        return 0

    def list_topics(self, topic: str, timeout: float = 0) -> Any:
        if not self.up:
            raise RuntimeError("down")
        return {}


def test_spool_round_trip_and_a_torn_tail(tmp_path: Path) -> None:
    sp = audit.Spool(tmp_path, "svc-1")
    sp.append([b"one", b"two"])
    sp.append([b"three"])
    assert sp.claim() == []  # held by this process's open file
    sp.rotate()
    (p, f), *rest = sp.claim()
    assert not rest
    assert audit.Spool.read(f) == [b"one", b"two", b"three"]
    audit.Spool.done(p, f, remove=True)
    assert sp.depth() == 0
    torn = tmp_path / "dead.spool"
    torn.write_bytes(b"\x00\x00\x00\x03abc\x00\x00\x00\x09ab")  # a crash mid-append
    (p, f), *_ = sp.claim()
    assert audit.Spool.read(f) == [b"abc"]
    f.close()


def test_emitter_spools_while_kafka_is_down_and_replays_when_back(tmp_path: Path) -> None:
    fake = FakeProducer()
    em = audit.Emitter("x", "t", audit.Spool(tmp_path, "svc"), 100, lambda _b: fake)
    try:
        for i in range(5):
            em.put(f"ev{i}".encode())
        wait_for(lambda: em.spool.depth() == 1 and not fake.pending, 10, "the spooled events")
        assert fake.delivered == []
        fake.up = True
        audit._REPLAY_EVERY = 0.05
        wait_for(lambda: em.spool.depth() == 0, 15, "the spool to be replayed")
        assert sorted(fake.delivered) == [f"ev{i}".encode() for i in range(5)]
    finally:
        audit._REPLAY_EVERY = 5.0
        em.close(timeout=1)


def test_emitter_never_blocks_a_full_queue_spools(tmp_path: Path) -> None:
    fake = FakeProducer()
    em = audit.Emitter("x", "t", audit.Spool(tmp_path, "svc"), 1, lambda _b: fake)
    em._stop.set()  # the background thread stops: the queue fills at once
    em._thread.join()
    for i in range(3):
        em.put(f"ev{i}".encode())  # the first fills the queue, the next two are spooled
    em.spool.rotate()
    (p, f), *_ = em.spool.claim()
    assert audit.Spool.read(f) == [b"ev1", b"ev2"]
    f.close()


def _stored(study: str, patient: str, ok: bool = True) -> Outcome:
    env = pb.Envelope(
        instance_stored=pb.InstanceStored(
            study_instance_uid=study, patient=pb.PatientRef(patient_id=patient)
        )
    )
    return Outcome(status=0 if ok else 0xA700, event=env)


def test_transfers_make_one_record_per_study(monkeypatch: Any) -> None:
    got: list[tuple[str, str, pb.AuditWhat, int]] = []
    monkeypatch.setattr(
        audit,
        "record",
        lambda action, outcome, *, what, dicom_status=0, **kw: got.append(
            (action, outcome, what, dicom_status)
        ),
    )
    t = audit.Transfers("dicom", "127.0.0.1:1", pb.AuditWho(calling_ae_title="CT1"))
    for _ in range(3):
        t.add(_stored("1.2.1", "P1"))
    t.add(_stored("1.2.2", "P2"))
    t.add(_stored("1.2.2", "P2", ok=False))
    t.emit()
    t.emit()  # once only
    assert [(a, o, list(w.study_instance_uids), w.instances, s) for a, o, w, s in got] == [
        ("store", "success", ["1.2.1"], 3, 0),
        ("store", "minor-failure", ["1.2.2"], 2, 0xA700),
    ]


def _audit_env(action: str = "store", outcome: str = "success") -> pb.Envelope:
    ev = pb.AuditEvent(
        action=action,
        outcome=outcome,
        who=pb.AuditWho(user="dr-x", client_id="viewer", calling_ae_title=""),
        where=pb.AuditWhere(peer_address="ipv4:10.0.0.7:5555", node="node-1", interface="grpc"),
        what=pb.AuditWhat(
            patient_ids=["P1"], study_instance_uids=["1.2.3"], instances=4, query_level="STUDY"
        ),
    )
    ev.what.query_keys["PatientID"] = "P1"
    return envelope(
        ev,
        study_uid="1.2.3",
        service="index",
        node="node-1",
        occurred_at=datetime(2026, 12, 1, tzinfo=UTC),
    )


def test_index_row_is_a_function_of_the_record() -> None:
    env = _audit_env()
    r = row(env, 0, 42)
    assert r is not None and len(r) == len(COLUMNS)
    d = dict(zip(COLUMNS, r, strict=True))
    assert d["event_id"] == env.event_id and d["patient_ids"] == ["P1"]
    assert d["query_keys"] == '{"PatientID": "P1"}' and d["log_offset"] == 42
    assert row(env, 0, 42) == r
    assert row(pb.Envelope(event_id="x"), 0, 1) is None


def test_ps3_15_message_names_event_participants_source_and_objects() -> None:
    root = ET.fromstring(audit_message(_audit_env("retrieve")))
    assert root.tag == "AuditMessage"
    ev = root.find("EventIdentification")
    assert ev is not None and ev.get("EventActionCode") == "R"
    assert ev.get("EventOutcomeIndicator") == "0" and ev.get("EventDateTime", "").startswith("2026")
    assert ev.find("EventID").get("csd-code") == "110104"  # type: ignore[union-attr]
    aps = root.findall("ActiveParticipant")
    assert [a.get("UserIsRequestor") for a in aps] == ["true", "false"]
    assert aps[0].get("UserID") == "dr-x" and aps[0].get("NetworkAccessPointID") == "10.0.0.7"
    assert root.find("AuditSourceIdentification").get("AuditSourceID") == "node-1"  # type: ignore[union-attr]
    objs = {
        o.find("ParticipantObjectIDTypeCode").get("csd-code"): o.get("ParticipantObjectID")  # type: ignore[union-attr]
        for o in root.findall("ParticipantObjectIdentification")
    }
    assert objs == {"110180": "1.2.3", "2": "P1"}


def test_syslog_frame_is_octet_counted_rfc5424() -> None:
    frame = syslog_frame(_audit_env("auth-failure", "serious-failure"), "host-a")
    n, _, msg = frame.partition(b" ")
    assert int(n) == len(msg)
    assert msg.startswith(
        b"<84>1 2026-12-01T00:00:00.000000Z host-a strata - IHE+RFC-3881 [strata@"
    )
    xml = msg[msg.index(b"\xef\xbb\xbf") + 3 :]
    assert ET.fromstring(xml).find("EventIdentification/EventID").get("csd-code") == "110114"  # type: ignore[union-attr]


def test_since_forms() -> None:
    now = datetime(2026, 12, 15, 10, 30, tzinfo=UTC)
    assert parse_time("month", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_time("2d", now) == datetime(2026, 12, 13, 10, 30, tzinfo=UTC)
    assert parse_time("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)


def test_lifecycle_deletes_make_one_record_per_study(monkeypatch: Any) -> None:
    from strata.processors.index import audit as audit_index

    got: list[pb.AuditWhat] = []
    monkeypatch.setattr(audit, "enabled", lambda: True)
    monkeypatch.setattr(audit, "record", lambda action, *, what, **kw: got.append(what))
    monkeypatch.setattr(audit_index, "patients_of", lambda index, studies: ["P-" + studies[0]])

    def env(payload: Any, study: str) -> Any:
        return envelope(payload, study_uid=study, service="index", node="n")

    events = [
        (None, env(pb.InstanceDeleted(sop_instance_uid=s, policy="r10y"), st))
        for st, s in (("1.1", "a"), ("1.1", "b"), ("1.2", "c"))
    ] + [(None, env(pb.TierTransitioned(), "1.3"))]
    record = audit_index.deletes_recorder(object(), events)
    assert got == []  # only once Kafka acknowledged the deletions
    record()
    assert [(list(w.study_instance_uids), list(w.patient_ids), w.instances) for w in got] == [
        (["1.1"], ["P-1.1"], 2),
        (["1.2"], ["P-1.2"], 1),
    ]
