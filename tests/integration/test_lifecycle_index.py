"""The lifecycle processor's reads of a real (chDB) index: due instances with holds and
accesses joined in, and the InstanceStored it rebuilds from a row projects to the same row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from strata.archive.lifecycle import parse_policy
from strata.processors.index.store import IndexStore
from strata.processors.lifecycle import candidates, wrap
from strata.proto.strata.v1 import events_pb2 as pb
from tests.integration.conftest import other_database
from tests.support.rows import batch_of
from tests.unit.test_projection import RECEIVED, SERIES, SOP, STUDY, stored

pytestmark = pytest.mark.integration


@pytest.fixture
def index(chdb_index: IndexStore) -> IndexStore:
    return other_database(chdb_index, "strata_lifecycle")


POLICY = parse_policy(
    {
        "day_seconds": 1,
        "rules": [
            {"name": "idle", "action": "cold", "after_days": 10, "since": "last-access"},
            {"name": "retention", "action": "delete", "after_days": 100},
        ],
    }
)


def event(field: str, payload: object, study: str = STUDY) -> pb.Envelope:
    return wrap(payload, study, f"e-{field}", "n", RECEIVED)


def test_due_instances_follow_access_and_holds(index: IndexStore) -> None:
    index.write(batch_of(stored(), 0, 1))
    t = RECEIVED
    [(c, d)] = candidates(index, POLICY, t + timedelta(seconds=11), set(), 10)
    assert (c.sop_uid, d.action, d.rule, c.held, c.last_accessed_at) == (
        SOP,
        "cold",
        "idle",
        False,
        None,
    )
    acc = pb.StudyAccessed(via="c-get")
    acc.accessed_at.FromDatetime(t + timedelta(seconds=5))
    index.write(batch_of(event("a", acc), 0, 2))
    assert candidates(index, POLICY, t + timedelta(seconds=11), set(), 10) == []  # read lately
    [(c, d)] = candidates(index, POLICY, t + timedelta(seconds=15), set(), 10)
    assert c.last_accessed_at == t + timedelta(seconds=5)
    # retention: due at 100 s, unless held; skipped instances are not selected
    [(c, d)] = candidates(index, POLICY, t + timedelta(seconds=101), set(), 10)
    assert d.action == "delete"
    assert candidates(index, POLICY, t + timedelta(seconds=101), {SOP}, 10) == []
    index.write(batch_of(event("h", pb.LegalHoldPlaced(hold_id="h1", reason="r")), 0, 3))
    [(c, d)] = candidates(index, POLICY, t + timedelta(seconds=101), set(), 10)
    assert c.held and d.action == "cold"  # held: never deleted, may still move
    index.write(batch_of(event("r", pb.LegalHoldReleased(hold_id="h1", reason="r")), 0, 4))
    [(c, d)] = candidates(index, POLICY, t + timedelta(seconds=101), set(), 10)
    assert not c.held and d.action == "delete"


def test_a_move_rebuilt_from_the_index_row_projects_to_the_same_row(index: IndexStore) -> None:
    index.write(batch_of(stored(), 0, 1))
    [(c, _)] = candidates(index, POLICY, datetime.now(UTC), set(), 10)
    tt = pb.TierTransitioned(
        sop_instance_uid=c.sop_uid,
        series_instance_uid=c.series_uid,
        sha256=c.sha256,
        source=pb.StorageLocation(tier="hot", key=c.storage_key),
        target=pb.StorageLocation(tier="cold", key=c.storage_key),
        instance=c.instance_stored(),
    )
    index.write(batch_of(wrap(tt, c.study_uid, "m1", "n", RECEIVED), 0, 2))
    db = index.database
    for table in ("instances", "instance_versions"):
        before, after = (
            index.query(
                f"SELECT * EXCEPT (tier, log_offset, log_version, event_id) FROM {db}.{table} "
                f"WHERE log_offset = {o}"
            )
            for o in (1, 2)
        )
        assert before == after and len(before) == 1
    [(tier,)] = index.query(f"SELECT tier FROM {db}.instances FINAL")
    assert tier == "cold"
    # deleted: gone from every FINAL read, series and study included
    d = pb.InstanceDeleted(
        sop_instance_uid=SOP,
        series_instance_uid=SERIES,
        sha256=c.sha256,
        series_emptied=True,
        study_emptied=True,
    )
    index.write(batch_of(event("d", d), 0, 3))
    for table in ("instances", "instance_versions", "series", "studies"):
        assert index.query(f"SELECT count() FROM {db}.{table} FINAL") == [(0,)], table
