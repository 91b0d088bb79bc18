"""Retrieve read-ahead: objects are made local concurrently, served in order, errors per object."""

from __future__ import annotations

import threading
from pathlib import Path

from strata.common.errors import NotFound
from strata.query.retrieve import Located, local_paths


def loc(i: int) -> Located:
    return Located("st", "se", f"sop{i}", "cls", "ts", "cold", f"k{i}", 1, "0" * 64)


class SlowSource:
    """Fetches that overlap when they can: the first waits (bounded) until a second one runs
    beside it, so concurrent fetching shows as two active at once, deterministically, and
    one-at-a-time fetching as ``most == 1`` after the wait times out."""

    def __init__(self) -> None:
        self.active = 0
        self.most = 0
        self.calls = 0
        self.cond = threading.Condition()

    def local_path(self, loc: Located) -> Path:
        with self.cond:
            self.calls += 1
            self.active += 1
            self.most = max(self.most, self.active)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.most > 1, timeout=5)
            self.active -= 1
        if loc.sop_uid == "sop3":
            raise NotFound("gone")
        return Path("/objects") / loc.storage_key

    def chunks(self, loc: Located, size: int = 1 << 20):  # noqa: ANN201 - protocol filler
        raise NotImplementedError


def test_in_order_concurrent_and_errors_per_object() -> None:
    src = SlowSource()
    out = list(local_paths(src, [loc(i) for i in range(10)], ahead=8, workers=4))
    assert [lo.sop_uid for lo, _ in out] == [f"sop{i}" for i in range(10)]
    assert isinstance(out[3][1], NotFound)
    assert out[4][1] == Path("/objects/k4")
    assert src.most > 1  # fetched concurrently


def test_an_abandoned_retrieve_does_not_fetch_everything() -> None:
    src = SlowSource()
    gen = local_paths(src, [loc(i) for i in range(100)], ahead=4, workers=2)
    next(gen)
    gen.close()
    assert src.active == 0
    assert src.calls < 100
