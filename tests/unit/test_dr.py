"""Geo-redundancy pieces that need no running site: MirrorMaker 2's configuration and the
fence's decision (docs/dr.md)."""

from __future__ import annotations

import pytest

from strata.cli import dr
from strata.common import kafka
from strata.common.settings import Settings
from strata.proto.strata.v1 import events_pb2 as pb
from strata.stack import mirror
from tests.support.wait import wait_for


def _settings(**kw: object) -> Settings:
    base: dict[str, object] = {
        "dr_site": "B",
        "dr_peer_site": "A",
        "dr_peer_bootstrap": "127.0.0.1:1",
        "kafka_bootstrap": "127.0.0.1:2",
    }
    base.update(kw)
    return Settings(**base)  # type: ignore[arg-type]


def test_mirror_properties_one_way_identity_exactly_once() -> None:
    props = dict(
        line.split("=", 1)
        for line in mirror.properties(_settings(), "A", "B").splitlines()
        if line and not line.startswith("#")
    )
    assert props["A.bootstrap.servers"] == "127.0.0.1:1"
    assert props["B.bootstrap.servers"] == "127.0.0.1:2"
    assert props["A->B.enabled"] == "true" and props["B->A.enabled"] == "false"
    assert props["replication.policy.class"].endswith("IdentityReplicationPolicy")
    assert props["B.exactly.once.source.support"] == "enabled"
    assert props["A->B.consumer.isolation.level"] == "read_committed"
    assert props["emit.checkpoints.enabled"] == "true"
    # every source-of-truth topic, and nothing else (the regex is anchored by MirrorMaker)
    import re

    rx = re.compile(props["A->B.topics"])
    for t in ("strata.study-events.v1", "strata.quarantine.v1", "strata.dr-control.v1"):
        assert rx.fullmatch(t)
    assert not rx.fullmatch("strataXstudy-events.v1")
    assert not rx.fullmatch("__consumer_offsets")


def test_mirror_needs_a_peer() -> None:
    from strata.common.errors import Unavailable

    with pytest.raises(Unavailable):
        mirror.properties(_settings(dr_peer_bootstrap=""), "A", "B")


def _epoch(n: int, primary: str) -> pb.SiteEpoch:
    return pb.SiteEpoch(epoch=n, primary_site=primary)


@pytest.mark.parametrize(
    ("here", "peer", "site", "ok"),
    [
        (None, None, "B", True),  # no epoch yet: not in a DR pair's life yet
        (_epoch(1, "A"), None, "B", False),  # B follows A: fenced
        (_epoch(1, "A"), None, "A", True),
        (_epoch(1, "A"), _epoch(2, "B"), "A", False),  # A came back after B's promotion
        (_epoch(2, "B"), _epoch(1, "A"), "B", True),
        (_epoch(3, "A"), _epoch(2, "B"), "A", True),  # A promoted again after fail-back
    ],
)
def test_fence(monkeypatch: pytest.MonkeyPatch, here, peer, site, ok) -> None:  # noqa: ANN001
    s = _settings(dr_site=site)

    def fake(cluster: kafka.Cluster, topic: str, timeout: float = 10.0):  # noqa: ANN202
        return here if kafka.bootstrap_of(cluster) == s.kafka_bootstrap else peer

    monkeypatch.setattr(dr, "current_epoch", fake)
    got, why = dr.accepts_ingest(s)
    assert got is ok
    assert (why == "") is ok


def test_standalone_is_never_fenced() -> None:
    assert dr.accepts_ingest(Settings()) == (True, "")


@pytest.mark.parametrize(
    ("epoch", "site", "last", "decides"),
    [
        (_epoch(1, "A"), "B", True, False),  # B follows A: no decisions of its own
        (_epoch(1, "A"), "A", False, True),
        (_epoch(2, "B"), "B", False, True),  # promoted: B decides, without a restart
        (_epoch(2, "B"), "A", True, False),  # A came back after B's promotion
        (None, "B", False, False),  # no epoch read (unreachable, or before set-up): as before
        (None, "A", True, True),
    ],
)
def test_only_the_primary_takes_decisions(epoch, site, last, decides) -> None:  # noqa: ANN001
    assert dr.takes_decisions(_settings(dr_site=site), epoch, last) is decides


def test_standalone_always_takes_decisions() -> None:
    assert dr.takes_decisions(Settings(), None, False) is True
    role = dr.Role(Settings())  # no thread, no Kafka
    assert role.primary() and role.describe() == "standalone"


def test_role_follows_the_epoch_without_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """The role is re-read in the background: a follower starts deciding once an epoch names
    it, and stops again when a newer one names the peer."""
    import threading

    epochs = [_epoch(1, "A")]
    read = threading.Event()

    def fake(settings: Settings):  # noqa: ANN202
        read.set()
        return epochs[-1]

    monkeypatch.setattr(dr, "latest_epoch", fake)
    role = dr.Role(_settings(dr_site="B", dr_fence_check_seconds=0.01))
    assert not role.primary() and role.describe() == "follower (epoch 1)"
    epochs.append(_epoch(2, "B"))
    assert wait_for(role.primary, 10)
    epochs.append(_epoch(3, "A"))
    assert wait_for(lambda: not role.primary(), 10)


def test_rpo_windows_is_the_age_of_the_oldest_acknowledged_instance_not_at_b() -> None:
    from benchmarks.dr import rpo_windows

    acked = {"a": 10.0, "b": 11.0, "c": 12.0}
    at_b = {"a": 10.5, "b": 13.0}  # c never reached B
    w = rpo_windows(acked, at_b, 10.0, 14.0, step=0.5)
    #        t: 10   10.5 11   11.5 12   12.5 13   13.5 14
    assert w == [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 1.0, 1.5, 2.0]
