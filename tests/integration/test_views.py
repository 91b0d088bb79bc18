"""The curated views (processors/index/views.py) on a known data set, written through the
projection and IndexStore into a database of their own on the real chDB engine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from strata.common.events import envelope, timestamp
from strata.processors.index.store import IndexStore
from strata.proto.strata.v1 import events_pb2 as pb
from tests.integration.test_find_chdb import instance, uid
from tests.integration.test_index_batch import other_database
from tests.support.rows import batch_of

pytestmark = pytest.mark.integration

DAY1 = datetime(2024, 1, 15, 10, 15, tzinfo=UTC)
DAY2 = datetime(2024, 1, 16, 9, 0, tzinfo=UTC)


def _arrival(study: str, series: str, modality: str, site: str, size: int, at: datetime) -> Any:
    env = instance(patient_id="VIEWS1", study_uid=study, series_uid=series, modality=modality)
    e = env.instance_stored
    e.calling_ae_title, e.size_bytes = site, size
    e.received_at.CopyFrom(timestamp(at))
    env.occurred_at.CopyFrom(timestamp(at))
    return env


@pytest.fixture(scope="module")
def idx(chdb_index: IndexStore) -> IndexStore:
    index = other_database(chdb_index)
    study_a, study_b, series_a, series_b = uid(), uid(), uid(), uid()
    a1 = _arrival(study_a, series_a, "CT", "SITE1", 1000, DAY1)
    a2 = _arrival(study_a, series_a, "CT", "SITE1", 3000, DAY1)
    b1 = _arrival(study_b, series_b, "MR", "SITE2", 500, DAY2)
    envs = [a1, a2, b1]
    # a1 moves to cold on day 2
    tt = pb.TierTransitioned(
        sop_instance_uid=a1.instance_stored.sop_instance_uid,
        series_instance_uid=series_a,
        sha256=a1.instance_stored.sha256,
        size_bytes=1000,
        source=pb.StorageLocation(tier="hot", key="k"),
        target=pb.StorageLocation(tier="cold", key="k"),
        policy="to-cold",
        study_instance_uid=study_a,
        instance=a1.instance_stored,
    )
    envs.append(envelope(tt, study_uid=study_a, service="processors", node="n", occurred_at=DAY2))
    # routes to PACS2: one delivered 2 s after its decision, one dead-lettered, one open
    for rid, end in (("r1", "delivered"), ("r2", "dead"), ("r3", None)):
        d = pb.RouteDecided(route_id=rid, matched=True, rule="all", destination="PACS2")
        envs.append(envelope(d, study_uid=study_a, service="router", node="n", occurred_at=DAY1))
        at = DAY1 + timedelta(seconds=2)
        if end == "delivered":
            p: Any = pb.RouteDelivered(route_id=rid, destination="PACS2", instances=2, attempts=2)
        elif end == "dead":
            p = pb.RouteDeadLettered(route_id=rid, destination="PACS2", reason="rejected")
        else:
            continue
        envs.append(envelope(p, study_uid=study_a, service="router", node="n", occurred_at=at))
    # two quarantined arrivals for one reason, one with its bytes dropped
    for dropped in (False, True):
        q = pb.InstanceQuarantined(
            reason="missing-uid", calling_ae_title="SITE3", size_bytes=700, bytes_dropped=dropped
        )
        envs.append(envelope(q, study_uid="", service="ingest", node="n", occurred_at=DAY1))
    for offset, env in enumerate(envs, start=1):
        topic = "t.quarantine" if env.WhichOneof("payload") == "instance_quarantined" else "t.s"
        index.write(batch_of(env, 0, offset, topic))
    return index


def rows(index: IndexStore, sql: str) -> list[tuple[Any, ...]]:
    return index.query(sql.replace("{db}", index.database))


def test_ingest_daily(idx: IndexStore) -> None:
    got = rows(
        idx,
        "SELECT toString(day), modality, site, studies, instances, bytes "
        "FROM {db}.v_ingest_daily ORDER BY day, modality",
    )
    assert got == [
        ("2024-01-15", "CT", "SITE1", 1, 2, 4000),
        ("2024-01-16", "MR", "SITE2", 1, 1, 500),
    ]


def test_routing_sla(idx: IndexStore) -> None:
    got = rows(
        idx,
        "SELECT destination, routes, delivered, dead_letters, open, p50_seconds, max_seconds "
        "FROM {db}.v_routing_sla",
    )
    assert got == [("PACS2", 3, 1, 1, 1, 2.0, 2.0)]


def test_tiers(idx: IndexStore) -> None:
    occ = rows(idx, "SELECT tier, instances, bytes FROM {db}.v_tier_occupancy ORDER BY tier")
    assert occ == [("cold", 1, 1000), ("hot", 2, 3500)]
    moves = rows(
        idx,
        "SELECT toString(day), source_tier, target_tier, policy, instances, bytes "
        "FROM {db}.v_tier_transitions_daily",
    )
    assert moves == [("2024-01-16", "hot", "cold", "to-cold", 1, 1000)]


def test_storage_growth(idx: IndexStore) -> None:
    got = rows(
        idx,
        "SELECT toString(day), instances, bytes, total_bytes FROM {db}.v_storage_growth "
        "ORDER BY day",
    )
    assert got == [("2024-01-15", 2, 4000, 4000), ("2024-01-16", 1, 500, 4500)]


def test_quarantine_and_event_rates(idx: IndexStore) -> None:
    q = rows(
        idx,
        "SELECT toString(day), reason, site, arrivals, bytes_dropped, bytes "
        "FROM {db}.v_quarantine_daily",
    )
    assert q == [("2024-01-15", "missing-uid", "SITE3", 2, 1, 1400)]
    rates = rows(
        idx,
        "SELECT toString(hour), event_type, events FROM {db}.v_event_rates_hourly "
        "ORDER BY hour, event_type",
    )
    assert rates == [
        ("2024-01-15 10:00:00", "InstanceQuarantined", 2),
        ("2024-01-15 10:00:00", "InstanceStored", 2),
        ("2024-01-15 10:00:00", "RouteDeadLettered", 1),
        ("2024-01-15 10:00:00", "RouteDecided", 3),
        ("2024-01-15 10:00:00", "RouteDelivered", 1),
        ("2024-01-16 09:00:00", "InstanceStored", 1),
        ("2024-01-16 09:00:00", "TierTransitioned", 1),
    ]
