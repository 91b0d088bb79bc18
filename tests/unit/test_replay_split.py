"""processors.replay: the partitions of a replay split between projector processes."""

from __future__ import annotations

from processors.replay import _split


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
