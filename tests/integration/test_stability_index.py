"""Which studies the stability timer announces, read from a real (chDB) index: an announcement
covers the study's latest arrival by that arrival's event id, so a DR site whose log offsets
run ahead of the primary's (MirrorMaker 2's transaction markers) does not announce again what
the primary announced (processors/stability.py, docs/dr.md)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from strata.common.events import envelope, timestamp
from strata.processors.index.store import IndexStore
from strata.processors.stability import due
from strata.proto.strata.v1 import events_pb2 as pb
from tests.integration.conftest import other_database
from tests.support.rows import batch_of
from tests.unit.test_projection import RECEIVED, STUDY, stored

pytestmark = pytest.mark.integration
LATER = RECEIVED + timedelta(hours=1)  # "now": the study has been quiet long enough


@pytest.fixture
def index(chdb_index: IndexStore) -> IndexStore:
    return other_database(chdb_index, "strata_stability")


def _stable(offset: int, event_id: str) -> pb.Envelope:
    st = pb.StudyStable(
        study_instance_uid=STUDY,
        through_partition=0,
        through_offset=offset,
        through_event_id=event_id,
        quiet_seconds=30,
        last_arrival_at=timestamp(RECEIVED),
    )
    return envelope(st, study_uid=STUDY, service="processors", node="site-a", occurred_at=LATER)


def _arrival(event_id: str, sop_suffix: str = "") -> pb.Envelope:
    env = stored()
    env.event_id = event_id
    if sop_suffix:
        env.instance_stored.sop_instance_uid += sop_suffix
    return env


def test_the_primary_announces_a_burst_once(index: IndexStore) -> None:
    index.write(batch_of(_arrival("evt-1"), 0, 5))
    [(study, _p, offset, _at, event_id)] = due(index, 30, LATER)
    assert (study, offset, event_id) == (STUDY, 5, "evt-1")
    index.write(batch_of(_stable(5, "evt-1"), 0, 6))
    assert due(index, 30, LATER) == []


def test_a_mirrored_announcement_covers_the_same_arrival_at_other_offsets(
    index: IndexStore,
) -> None:
    """At B the arrival is at offset 9 and A's announcement names A's offset 5: covered all
    the same (same event id); a later arrival at B is a new burst."""
    index.write(batch_of(_arrival("evt-1"), 0, 9))
    index.write(batch_of(_stable(5, "evt-1"), 0, 11))
    assert due(index, 30, LATER) == []
    index.write(batch_of(_arrival("evt-2", ".2"), 0, 20))
    assert [(s, e) for s, _p, _o, _a, e in due(index, 30, LATER)] == [(STUDY, "evt-2")]


def test_an_announcement_without_an_event_id_is_compared_by_offset(index: IndexStore) -> None:
    """Made before announcements named event ids: covered by offset, as then."""
    index.write(batch_of(_arrival("evt-1"), 0, 9))
    index.write(batch_of(_stable(9, ""), 0, 10))
    assert due(index, 30, LATER) == []
    index.write(batch_of(_arrival("evt-2", ".2"), 0, 12))
    assert [e for _s, _p, _o, _a, e in due(index, 30, LATER)] == ["evt-2"]


def test_an_index_made_before_the_column_gets_it(index: IndexStore) -> None:
    index.client.command(
        f"ALTER TABLE {index.database}.study_stability DROP COLUMN through_event_id"
    )
    index._columns = {}
    index.migrate()
    index.write(batch_of(_arrival("evt-1"), 0, 9))
    index.write(batch_of(_stable(5, "evt-1"), 0, 11))
    assert due(index, 30, LATER) == []
