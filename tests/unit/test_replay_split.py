"""processors.replay: the partitions of a replay split between projector processes."""

from __future__ import annotations

from strata.processors.replay import _split, projector_count


def test_split_covers_every_partition_once_and_balances() -> None:
    todo = {
        ("study", 0): (0, 100_200),
        ("study", 1): (0, 99_500),
        ("study", 2): (10, 100_300),
        ("quarantine", 0): (0, 7),
    }
    parts = _split(todo, 2)
    assert len(parts) == 2
    merged: dict = {}
    for p in parts:
        assert not set(p) & set(merged)  # disjoint: a partition is read by one process only
        merged.update(p)
    assert merged == todo
    sizes = sorted(sum(hi - lo for lo, hi in p.values()) for p in parts)
    assert sizes[1] <= 2 * 100_300 + 7


def test_split_never_makes_empty_parts() -> None:
    assert _split({("t", 0): (0, 5)}, 2) == [{("t", 0): (0, 5)}]
    assert _split({("t", 0): (0, 5), ("t", 1): (0, 5)}, 1) == [{("t", 0): (0, 5), ("t", 1): (0, 5)}]


def _todo(*sizes: int) -> dict[tuple[str, int], tuple[int, int]]:
    return {("t", i): (10, 10 + n) for i, n in enumerate(sizes)}


def test_projector_count_gives_each_projector_an_equal_share_when_it_can() -> None:
    # The default 3 partitions: 2 projectors would split them 2:1 and one would idle half the
    # replay; 3 finish together.
    assert projector_count(_todo(100, 99, 101), limit=3) == 3
    assert projector_count(_todo(1, 1, 1, 1, 1, 1), limit=3) == 3
    # Nothing to gain from a third one: the fewest that balance as well.
    assert projector_count(_todo(100, 100, 100, 100), limit=3) == 2
    assert projector_count(_todo(300, 10, 10), limit=3) == 2
    # Never more than the limit, or than there are partitions.
    assert projector_count(_todo(100, 100, 100), limit=2) == 2
    assert projector_count(_todo(100, 100), limit=8) == 2
    assert projector_count(_todo(100), limit=8) == 1
