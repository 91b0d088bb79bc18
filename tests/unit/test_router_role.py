"""The router at a geo-redundancy follower (docs/dr.md, "Decisions: only at the primary"): it
does not join its consumer group, nor route, while its site follows, and starts once the
site is primary, without a restart. The Kafka consumer is replaced by a recorder (no broker)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from strata.common.settings import Settings
from strata.processors.router.rules import RouterConfig
from strata.processors.router.service import Router
from tests.support.wait import wait_for


class Consumer:
    def __init__(self) -> None:
        self.subscribed = threading.Event()
        self.consumes = 0
        self.closed = False

    def subscribe(self, topics: list[str], **_kw: Any) -> None:
        self.subscribed.set()

    def consume(self, n: int, timeout: float) -> list[Any]:
        self.consumes += 1
        threading.Event().wait(timeout)
        return []

    def close(self) -> None:
        self.closed = True


def _router() -> tuple[Router, Consumer]:
    r = Router(
        Settings(kafka_bootstrap="127.0.0.1:1"),
        "strata.study-events.v1",
        "strata-router",
        RouterConfig("at-least-once", {}, ()),
        lambda _inst: Path("/nonexistent"),
        "b",
    )
    c = Consumer()
    r.consumer = c  # type: ignore[assignment]
    return r, c


def test_a_follower_router_neither_subscribes_nor_routes_until_promoted() -> None:
    r, c = _router()
    primary = threading.Event()
    stop = threading.Event()
    t = threading.Thread(target=r.run, args=(stop, primary.is_set), daemon=True)
    t.start()
    try:
        assert not wait_for(c.subscribed.is_set, 1.5)  # following: not in the group
        assert c.consumes == 0
        primary.set()  # promoted (the Role re-read the epoch)
        assert wait_for(c.subscribed.is_set, 10)
        assert wait_for(lambda: c.consumes > 0, 10)
        primary.clear()  # demoted: a newer epoch names the peer
        n = c.consumes
        wait_for(lambda: False, 1.5)  # the loop ticks meanwhile
        assert c.consumes <= n + 1
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive() and c.closed


def test_a_follower_router_stopped_before_promotion_exits_cleanly() -> None:
    r, c = _router()
    stop = threading.Event()
    t = threading.Thread(target=r.run, args=(stop, lambda: False), daemon=True)
    t.start()
    stop.set()
    t.join(10)
    assert not t.is_alive() and c.closed and not c.subscribed.is_set()
