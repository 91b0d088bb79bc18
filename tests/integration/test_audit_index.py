"""The audit table on real chDB: a redelivered or republished event is one row (by event id),
and the searches `strata audit` makes (patient, user, action, time range) find what they
should."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest

from strata.common.events import envelope
from strata.processors.index.audit import AuditIndex, row
from strata.processors.index.store import IndexStore
from strata.proto.strata.v1 import events_pb2 as pb
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


def _env(action: str, user: str, patient: str, day: int) -> pb.Envelope:
    ev = pb.AuditEvent(
        action=action,
        outcome="success",
        who=pb.AuditWho(user=user),
        where=pb.AuditWhere(peer_address="127.0.0.1:1", node="n", interface="dicomweb"),
        what=pb.AuditWhat(patient_ids=[patient], study_instance_uids=[f"1.2.{day}"]),
    )
    ev.what.query_keys["PatientID"] = patient
    return envelope(
        ev, study_uid="", service="index", node="n", occurred_at=datetime(2026, 11, day, tzinfo=UTC)
    )


def test_audit_rows_collapse_by_event_id_and_search(chdb_index: IndexStore) -> None:
    audit = AuditIndex(chdb_index, "strata_audit_it")
    audit.migrate()
    try:
        _rows_collapse_and_search(audit)
    finally:
        audit.close()


def _rows_collapse_and_search(audit: AuditIndex) -> None:
    envs = [
        _env("view", "dr-a", "AUD-IT-1", 3),
        _env("retrieve", "dr-b", "AUD-IT-1", 10),
        _env("query", "dr-a", "AUD-IT-2", 20),
    ]
    rows = [row(e, 0, i) for i, e in enumerate(envs)]
    audit.write([r for r in rows if r is not None])
    # the same events again (a redelivered batch, a republished spool): same ids
    again = [row(e, 0, 10 + i) for i, e in enumerate(envs)]
    audit.write([r for r in again if r is not None])
    everything = audit.search(limit=100)
    assert sorted(e["event_id"] for e in everything) == sorted(e.event_id for e in envs)
    opened = audit.search(patient="AUD-IT-1", action="view,retrieve")
    assert [(e["action"], e["user"]) for e in opened] == [("view", "dr-a"), ("retrieve", "dr-b")]
    assert opened[0]["query_keys"] == {"PatientID": "AUD-IT-1"}
    since = audit.search(patient="AUD-IT-1", since=datetime(2026, 11, 5, tzinfo=UTC))
    assert [e["user"] for e in since] == ["dr-b"]
    until = audit.search(user="dr-a", until=datetime(2026, 11, 15, tzinfo=UTC))
    assert [e["action"] for e in until] == ["view"]


def test_audit_writes_and_reads_never_wait_for_the_index(chdb_index: IndexStore) -> None:
    """The audit table is written on a chDB handle of its own: an audit insert (and an
    ``/audit`` search) completes while the projection holds its write lock and while the
    index store's own handle is busy (its handle lock held, as during a long C-FIND or a
    projection insert). Before, both waited for the projection's lock and the store's handle."""
    audit = AuditIndex(chdb_index, "strata_audit_lock_it")
    audit.migrate()
    env = _env("query", "dr-lock", "AUD-IT-LOCK", 12)
    r = row(env, 0, 1)
    assert r is not None
    done = threading.Event()

    def write_and_read() -> None:
        audit.write([r])
        if [e["event_id"] for e in audit.search(user="dr-lock")] == [env.event_id]:
            done.set()

    handle_lock = chdb_index.client._backend._handle.lock  # the driver's lock of its handle
    try:
        with chdb_index.write_lock, handle_lock:
            t = threading.Thread(target=write_and_read, daemon=True)
            t.start()
            wait_for(done.is_set, 60, "the audit write and read while the index is busy")
        t.join()
    finally:
        audit.close()
