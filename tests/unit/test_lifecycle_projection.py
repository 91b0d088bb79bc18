"""Projection of the tier events: pure rows from event contents and log positions."""

from __future__ import annotations

from strata.processors.index.projection import rows_for
from strata.proto.strata.v1 import events_pb2 as pb
from tests.unit.test_projection import SERIES, SOP, STUDY, stored


def wrap(field: str, payload: object, event_id: str = "e") -> pb.Envelope:
    env = pb.Envelope(event_id=event_id, event_type=type(payload).__name__)
    env.study_instance_uid = STUDY
    env.occurred_at.FromSeconds(1_700_000_000)
    getattr(env, field).CopyFrom(payload)
    return env


def moved(target: str = "cold") -> pb.Envelope:
    inst = stored().instance_stored
    return wrap(
        "tier_transitioned",
        pb.TierTransitioned(
            sop_instance_uid=SOP,
            series_instance_uid=SERIES,
            sha256=inst.sha256,
            size_bytes=inst.size_bytes,
            source=inst.location,
            target=pb.StorageLocation(tier=target, key=inst.location.key),
            policy="cold30",
            instance=inst,
        ),
        "move-1",
    )


def test_a_move_changes_only_location_and_log_position() -> None:
    before = rows_for(stored(), 1, 10)["instances"][0]
    rows = rows_for(moved(), 1, 20)
    after = rows["instances"][0]
    assert after["tier"] == "cold" and after["storage_key"] == before["storage_key"]
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {"tier", "log_offset", "log_version", "event_id"}
    assert rows["instance_versions"][0]["tier"] == "cold"
    assert "series" not in rows and "studies" not in rows  # study attributes stay as they were
    [t] = rows["tier_transitions"]
    assert (t["source_tier"], t["target_tier"], t["policy"], t["event_id"]) == (
        "hot",
        "cold",
        "cold30",
        "move-1",
    )
    assert rows_for(moved(), 1, 20) == rows  # deterministic


def test_deletion_writes_tombstones_keyed_like_the_rows() -> None:
    d = pb.InstanceDeleted(
        sop_instance_uid=SOP, series_instance_uid=SERIES, sha256="ab" * 32, policy="retention"
    )
    rows = rows_for(wrap("instance_deleted", d), 1, 30)
    assert set(rows) == {"events", "instances", "instance_versions"}
    [i] = rows["instances"]
    assert (i["study_uid"], i["series_uid"], i["sop_uid"], i["is_deleted"]) == (
        STUDY,
        SERIES,
        SOP,
        1,
    )
    assert rows["instance_versions"][0]["sha256"] == "ab" * 32
    d.series_emptied = d.study_emptied = True
    rows = rows_for(wrap("instance_deleted", d), 1, 31)
    assert rows["series"][0]["is_deleted"] == rows["studies"][0]["is_deleted"] == 1
    assert rows["studies"][0]["study_uid"] == STUDY
    # a stored instance is alive
    assert rows_for(stored(), 1, 1)["studies"][0]["is_deleted"] == 0


def test_holds_and_accesses() -> None:
    placed = rows_for(
        wrap("legal_hold_placed", pb.LegalHoldPlaced(hold_id="h1", reason="lit", placed_by="op")),
        0,
        5,
    )["legal_holds"][0]
    released = rows_for(
        wrap("legal_hold_released", pb.LegalHoldReleased(hold_id="h1", released_by="op2")), 0, 9
    )["legal_holds"][0]
    assert (placed["active"], released["active"]) == (1, 0)
    assert (placed["study_uid"], placed["hold_id"]) == (released["study_uid"], released["hold_id"])
    assert released["log_version"] > placed["log_version"]
    acc = pb.StudyAccessed(via="c-get")
    acc.accessed_at.FromSeconds(1_700_000_100)
    [a] = rows_for(wrap("study_accessed", acc), 0, 11)["study_access"]
    assert a["via"] == "c-get" and a["last_accessed_at"].timestamp() == 1_700_000_100
