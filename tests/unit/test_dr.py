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
    # the follower's own groups are never synced from the peer (a peer that once followed has
    # a copier group whose positions would skip this site's copier ahead)
    excluded = [re.compile(g.strip()) for g in props["A->B.groups.exclude"].split(",")]
    for g in ("strata-dr-copier", "strata-dr-sync-site-a", "strata-dr-status-1"):
        assert any(x.fullmatch(g) for x in excluded), g
    for g in ("strata-router", "strata-index"):
        assert not any(x.fullmatch(g) for x in excluded), g


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
        # switchover: epoch 3 is written into B's log (the peer's, seen from A) and mirrored
        # to A later; the highest epoch wins wherever it is read
        (_epoch(2, "B"), _epoch(3, "A"), "A", True),
        (_epoch(3, "A"), _epoch(2, "B"), "B", False),  # B reads epoch 3 in its own log
        (_epoch(2, "B"), _epoch(3, "A"), "B", False),
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


# ------------------------------------------------------------------ fail-back refusals


def _at(monkeypatch: pytest.MonkeyPatch, s: Settings, here, peer) -> None:  # noqa: ANN001
    def fake(cluster: kafka.Cluster, topic: str, timeout: float = 10.0):  # noqa: ANN202
        return here if kafka.bootstrap_of(cluster) == s.kafka_bootstrap else peer

    monkeypatch.setattr(dr, "current_epoch", fake)


def _nothing_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from strata.stack import local

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("the stack was touched")

    monkeypatch.setattr(local, "down", boom)
    monkeypatch.setattr(local, "up", boom)


@pytest.mark.parametrize(
    ("here", "peer"),
    [
        (_epoch(2, "B"), _epoch(1, "A")),  # B is the primary
        (_epoch(2, "B"), None),  # the peer unreachable: its newer epoch cannot be known
    ],
)
def test_rebuild_refused_at_the_primary(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path,  # noqa: ANN001
    here,  # noqa: ANN001
    peer,  # noqa: ANN001
) -> None:
    from strata.cli.main import main

    env = {
        "STRATA_HOME": str(tmp_path),
        "STRATA_DR_SITE": "B",
        "STRATA_DR_PEER_SITE": "A",
        "STRATA_DR_PEER_BOOTSTRAP": "127.0.0.1:1",
        "STRATA_KAFKA_BOOTSTRAP": "127.0.0.1:2",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    _at(monkeypatch, Settings.from_env(), here, peer)
    _nothing_stopped(monkeypatch)
    assert main(["dr", "rebuild"]) == 2
    err = capsys.readouterr().err
    assert "rebuild refused: site B is the primary of epoch 2" in err, err
    assert main(["dr", "switchover"]) == 2
    assert "switchover refused" in capsys.readouterr().err
    assert not (tmp_path / "set-aside").exists()


@pytest.fixture
def fenced_a(monkeypatch: pytest.MonkeyPatch, tmp_path) -> Settings:  # noqa: ANN001
    """Site A, fenced (B is primary of epoch 2), whose stack must not be touched."""
    s = _settings(dr_site="A", dr_peer_site="B", home=tmp_path)
    _at(monkeypatch, s, _epoch(1, "A"), _epoch(2, "B"))
    _nothing_stopped(monkeypatch)
    return s


def test_rebuild_refused_while_this_site_has_orphans(
    monkeypatch: pytest.MonkeyPatch,
    fenced_a: Settings,
    tmp_path,  # noqa: ANN001
) -> None:
    from strata.common.errors import StrataError

    s = fenced_a
    lost = pb.InstanceStored(sop_instance_uid="1.2.3.4", sha256="ab")
    monkeypatch.setattr(dr, "orphans", lambda _s, timeout=60.0: [lost])
    with pytest.raises(StrataError, match=r"1 instances .* not at B \(first: 1\.2\.3\.4\)"):
        dr.rebuild(s)
    with pytest.raises(StrataError, match="failback --resend"):
        dr.rebuild(s)
    assert not (tmp_path / "set-aside").exists()


def test_rebuild_refused_while_the_outbox_holds_unpublished_events(
    monkeypatch: pytest.MonkeyPatch,
    fenced_a: Settings,
) -> None:
    from strata.common.errors import StrataError
    from strata.ingest.outbox import Outbox

    s = fenced_a
    monkeypatch.setattr(dr, "orphans", lambda _s, timeout=60.0: [])
    ob = Outbox(s.outbox_path)
    ob.append(
        event_id="e1", topic=s.study_topic, key="1.2", value=b"x", sop_uid="1.2.3", sha256="ab"
    )
    ob.close()
    with pytest.raises(StrataError, match="1 events in this site's ingest outbox"):
        dr.rebuild(s)


def test_set_aside_moves_the_log_and_the_index_and_keeps_the_rest(tmp_path) -> None:  # noqa: ANN001
    s = _settings(dr_site="A", dr_peer_site="B", home=tmp_path)
    for d in ("kafka/data", "index", "hot/ab", "ingest", "kafka/credentials"):
        (tmp_path / d).mkdir(parents=True)
        (tmp_path / d / "f").write_text(d)
    dest = dr.set_aside(s, stamp="20261202T110000Z")
    assert dest == tmp_path / "set-aside" / "20261202T110000Z"
    assert (dest / "kafka" / "data" / "f").read_text() == "kafka/data"
    assert (dest / "index" / "f").read_text() == "index"
    assert not (tmp_path / "kafka" / "data").exists() and not (tmp_path / "index").exists()
    for kept in ("hot/ab", "ingest", "kafka/credentials"):
        assert (tmp_path / kept / "f").read_text() == kept


def _env(payload, event_id: str) -> bytes:  # noqa: ANN001
    from strata.common.events import envelope

    return envelope(
        payload, study_uid="1.2", service="t", node="n", event_id=event_id
    ).SerializeToString()


def test_orphans_counts_a_copy_by_the_peer_or_its_own_arrival_as_held(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What only this site (A) has: not copied by B (InstanceReplicated by B of that event),
    and not arrived at B itself with the same bytes (what failback --resend C-STOREs)."""
    s = _settings(dr_site="A", dr_peer_site="B")

    def stored(sop: str, sha: str = "s") -> pb.InstanceStored:
        return pb.InstanceStored(sop_instance_uid=sop, sha256=sha)

    here = [
        _env(stored("1"), "a1"),  # copied by B
        _env(stored("2"), "a2"),  # re-sent: B's own arrival, same bytes
        _env(stored("3"), "a3"),  # mirrored to B, bytes never copied (only A's copy record)
        _env(stored("4"), "a4"),  # B has other bytes of it (a new version)
        _env(stored("5"), "a5"),  # never mirrored
    ]
    peer = [
        _env(pb.InstanceReplicated(source_event_id="a1", site="B"), "b1"),
        _env(stored("2"), "b2"),
        _env(stored("3"), "a3"),
        _env(pb.InstanceReplicated(source_event_id="a3", site="A"), "b3"),
        _env(stored("4", "other"), "b4"),
    ]

    def fake(
        cluster: kafka.Cluster, topic: str, timeout: float = 10.0, strict: bool = False
    ) -> list[bytes]:
        return here if kafka.bootstrap_of(cluster) == s.kafka_bootstrap else peer

    monkeypatch.setattr(dr, "read_all", fake)
    assert [o.sop_instance_uid for o in dr.orphans(s)] == ["3", "4", "5"]


def test_mirrored_offsets_are_the_source_connectors_only() -> None:
    """MirrorMaker 2's offsets topic holds the source connector's positions in the peer's log
    and the checkpoint connector's (per consumer group) under keys naming the same topic and
    partition: only the first say how far the log is mirrored."""
    src = (
        b'["MirrorSourceConnector",{"cluster":"B","partition":0,"topic":"strata.study-events.v1"}]'
    )
    chk = (
        b'["MirrorCheckpointConnector",{"partition":0,"topic":"strata.study-events.v1",'
        b'"group":"strata-processors"}]'
    )
    assert dr.source_offset(src, b'{"offset":5}') == ("strata.study-events.v1", 0, 6)
    assert dr.source_offset(chk, b'{"offset":0}') is None
    assert dr.source_offset(src, None) is None  # a tombstone
    assert dr.source_offset(b"not json", b"{}") is None


def test_orphans_unreadable_log_is_an_error_not_an_empty_answer() -> None:
    """Neither log may be taken as empty when it cannot be read: rebuild would then set aside
    a log whose instances were never compared with the peer's."""
    from strata.common.errors import Unavailable

    s = _settings(dr_site="A", dr_peer_site="B", kafka_bootstrap="127.0.0.1:1")
    with pytest.raises(Unavailable):
        dr.orphans(s, timeout=1.0)


def test_strata_dr_drill_is_the_drill_with_its_own_arguments(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """`strata dr drill ...` runs benchmarks/dr.py of the source tree with every argument
    after it, --help included (here only --help: the drill itself is tests/e2e/test_dr.py)."""
    from strata.cli.main import main

    assert main(["dr", "drill", "--help"]) == 0
    out = capfd.readouterr().out
    assert "--kill-after" in out and "--mode" in out
