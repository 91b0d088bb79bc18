"""The sync-mode watcher (ingest/peersync.py) against a real Kafka broker standing for the peer
site: it records the peer's confirmations (InstanceReplicated of this site's events) with its
positions, and when the peer's topic is another log (deleted and made again, as `strata dr
rebuild` does to a follower in a fail-back) it reads the new log from its start instead of
resuming at an offset of the old one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from strata.common import kafka
from strata.common.events import envelope
from strata.common.settings import Settings
from strata.ingest.peersync import Confirmations, Watcher
from strata.proto.strata.v1 import events_pb2 as pb
from tests.support.broker import standalone
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration
TOPIC = "peer.study-events.v1"  # topic_prefix "peer"


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real single-node KRaft broker: the peer site's Kafka."""
    with standalone(tmp_path_factory.mktemp("peer-kafka"), with_topics=False) as s:
        yield s


def _make_topic(s: Settings) -> None:
    a = kafka.admin(s)
    for f in a.create_topics([NewTopic(TOPIC, 1, 1)]).values():
        f.result(30)
    wait_for(lambda: TOPIC in a.list_topics(timeout=5).topics, 30, "the topic")


def _drop_topic(s: Settings) -> None:
    a = kafka.admin(s)
    for f in a.delete_topics([TOPIC]).values():
        f.result(30)
    wait_for(lambda: TOPIC not in a.list_topics(timeout=5).topics, 60, "the topic gone")


def _write(s: Settings, sources: list[str]) -> None:
    """One record per source event id: its InstanceReplicated, or ("-") another event."""
    p = kafka.producer(s, "durable", "test")
    for src in sources:
        if src == "-":
            payload: object = pb.StudyAccessed(via="c-get")
        else:
            payload = pb.InstanceReplicated(
                sop_instance_uid="1.2.3", source_site="A", source_event_id=src, site="B"
            )
        env = envelope(payload, study_uid="1.2", service="dr-copier", node="site-b")
        p.produce(TOPIC, key=b"1.2", value=env.SerializeToString())
    assert p.flush(30) == 0


def test_a_rebuilt_peer_log_is_read_from_its_start(peer: Settings, tmp_path: Path) -> None:
    here = dataclasses.replace(
        peer,
        home=tmp_path / "site-a",
        dr_site="A",
        dr_peer_site="B",
        dr_peer_bootstrap=peer.kafka_bootstrap,
        topic_prefix="peer",
        node_name="site-a",
    )
    conf = Confirmations(tmp_path / "peer-confirmed.sqlite")
    _make_topic(peer)
    _write(peer, ["e0", "e1", "e2", "e3", "e4"])
    w = Watcher(here, conf)
    w.start()
    try:
        assert wait_for(lambda: all(conf.has(f"e{i}") for i in range(5)), 60, "e0-e4")
        _write(peer, ["e5"])  # the live tail
        assert wait_for(lambda: conf.has("e5"), 60, "e5")
        assert wait_for(lambda: conf.positions() == {(TOPIC, 0): 6}, 30, "the position")
    finally:
        w.stop()
    # The peer is rebuilt: its topic made again, longer than before, a confirmation of this
    # site's event x1 at offset 2, before the old position (6).
    _drop_topic(peer)
    _make_topic(peer)
    _write(peer, ["-", "-", "x1", "-", "-", "-", "-", "-", "-"])
    w = Watcher(here, conf)
    w.start()
    try:
        assert wait_for(lambda: conf.has("x1"), 60, "x1, before the old position")
        _write(peer, ["x2"])
        assert wait_for(lambda: conf.has("x2"), 60, "x2, the live tail of the new log")
    finally:
        w.stop()
    assert all(conf.has(f"e{i}") for i in range(6))  # what was confirmed stays confirmed
