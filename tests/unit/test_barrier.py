"""The index node's catch-up barrier: decisions (StudyStable, lifecycle) wait until the index
has applied the log as it was at some time T, and then judge as of T. Under continuous ingest
the log end keeps moving, so "no lag right now" may never be observed; the barrier still
passes every tick as long as the index keeps up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from strata.processors.app import Barrier, caught_up

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)


def at(s: int) -> datetime:
    return T0 + timedelta(seconds=s)


def test_caught_up_compares_every_partition() -> None:
    assert caught_up({"t": {0: 5, 1: 7}}, {"t": {0: 5, 1: 6}})
    assert not caught_up({"t": {0: 5}}, {"t": {0: 5, 1: 1}})
    assert caught_up({}, {"t": {0: 0}})


def test_passes_every_tick_under_continuous_ingest() -> None:
    b = Barrier()
    # the log end moves by 50 records a tick; the index is always ~10 records behind it
    results = []
    for tick in range(5):
        end = 100 + 50 * tick
        results.append(b.passed({"t": {0: end - 10}}, {"t": {0: end}}, at(tick)))
    # never lag-free, yet from the second tick on every tick decides, as of the previous one
    assert results == [None, at(0), at(1), at(2), at(3)]


def test_holds_while_the_index_is_behind_the_recorded_ends() -> None:
    b = Barrier()
    assert b.passed({"t": {0: 0}}, {"t": {0: 100}}, at(0)) is None
    assert b.passed({"t": {0: 50}}, {"t": {0: 120}}, at(1)) is None  # not yet at 100
    assert b.passed({"t": {0: 100}}, {"t": {0: 130}}, at(2)) == at(0)  # judged as of T0
    assert b.passed({"t": {0: 120}}, {"t": {0: 130}}, at(3)) is None  # 130 not reached yet
