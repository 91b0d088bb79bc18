"""The two paths through the real Kafka broker: the relay and the replay.

- The relay (ingest/relay.py) publishes the ingest outbox (ingest/outbox.py) in order and
  exactly once, also when it crashes after Kafka acknowledged a batch but before the outbox
  recorded that (the restarted relay finds those records in the topic and does not publish
  them again).
- The replay (processors/replay.py) rebuilds, from that log, into a fresh chDB database,
  exactly the index the live projection wrote (the same rows, checksums and log positions).

The broker is the embedded one of ``strata up`` (stack/kafka/broker.py), on free ports.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from strata.common.events import decode
from strata.common.kafka import read_log, record
from strata.common.settings import Settings
from strata.ingest.outbox import Outbox
from strata.ingest.relay import Relay
from strata.processors.index import checksum
from strata.processors.index.store import IndexStore
from strata.processors.replay import end_positions, replay
from strata.proto.strata.v1 import events_pb2 as pb
from tests.integration.conftest import other_database
from tests.integration.test_find_chdb import instance, uid
from tests.support.broker import standalone
from tests.support.rows import batch
from tests.support.wait import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A real single-node KRaft broker with the archive's topics (3 study partitions)."""
    with standalone(tmp_path_factory.mktemp("kafka-home")) as settings:
        yield settings


class _Crash(BaseException):
    """The relay process dying: not an Exception, so the relay's retry loop does not catch it."""


class CrashBeforeMark(Outbox):
    """An outbox whose relay dies after Kafka acknowledged a batch, before it is marked."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.crashed = threading.Event()

    def mark_published(self, seqs: list[int]) -> None:
        if seqs:
            self.crashed.set()
            raise _Crash()
        super().mark_published(seqs)


def _append(outbox: Outbox, topic: str, studies: list[str], n: int) -> list[pb.Envelope]:
    """``n`` InstanceStored events, round robin over ``studies``, in the outbox as ingest
    puts them there (keyed by StudyInstanceUID)."""
    out = []
    for i in range(n):
        study = studies[i % len(studies)]
        env = instance(patient_id="KP", study_uid=study, series_uid=study + ".1", sop_uid=uid())
        sop = env.instance_stored
        outbox.append(
            event_id=env.event_id,
            topic=topic,
            key=study,
            value=env.SerializeToString(),
            sop_uid=sop.sop_instance_uid,
            sha256=sop.sha256,
        )
        out.append(env)
    return out


def _study_log(settings: Settings, studies: set[str]) -> list[pb.Envelope]:
    """The events of ``studies`` in the study topic, each partition in offset order."""
    return [
        env
        for env in map(decode, read_log(settings.kafka_bootstrap, settings.study_topic))
        if env.study_instance_uid in studies
    ]


def _by_study(envs: list[pb.Envelope]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for env in envs:
        out[env.study_instance_uid].append(env.event_id)
    return dict(out)


def _published(relay: Relay, outbox: Outbox) -> None:
    relay.start()
    assert wait_for(lambda: outbox.depth() == 0, 60), "the relay did not drain the outbox"
    relay.stop()


def test_relay_publishes_in_order_exactly_once_across_a_crash(
    kafka: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.sqlite"
    studies = [uid() for _ in range(4)]
    topic = kafka.study_topic

    # 1. a running relay publishes what is in the outbox
    outbox = Outbox(path)
    written = _append(outbox, topic, studies, 20)
    _published(Relay(outbox, kafka.kafka_bootstrap), outbox)
    outbox.close()

    # 2. a relay that dies after Kafka acknowledged its batch, before marking it published
    default_hook = threading.excepthook
    monkeypatch.setattr(
        threading,
        "excepthook",
        lambda a: None if isinstance(a.exc_value, _Crash) else default_hook(a),
    )
    crashing = CrashBeforeMark(path)
    written += _append(crashing, topic, studies, 12)
    dead = Relay(crashing, kafka.kafka_bootstrap)
    dead.start()
    assert crashing.crashed.wait(60), "the relay never acknowledged a batch"
    assert crashing.depth() > 0  # acknowledged by Kafka, still pending in the outbox
    crashing.close()

    # 3. after the restart: more arrivals, and a new relay on the same outbox file
    outbox = Outbox(path)
    written += _append(outbox, topic, studies, 8)
    _published(Relay(outbox, kafka.kafka_bootstrap), outbox)
    outbox.close()

    log = _study_log(kafka, set(studies))
    counts = Counter(env.event_id for env in log)
    assert set(counts) == {env.event_id for env in written}  # nothing lost
    assert [e for e, n in counts.items() if n > 1] == []  # nothing published twice
    assert _by_study(log) == _by_study(written)  # each study's events in outbox order


def _consume(settings: Settings, studies: set[str]) -> list[tuple[int, int, pb.Envelope]]:
    """(partition, offset, event) of the study topic up to its end, for ``studies``."""
    ends = end_positions(settings.kafka_bootstrap, [settings.study_topic])[settings.study_topic]
    c = Consumer({"bootstrap.servers": settings.kafka_bootstrap, "group.id": "kafka-paths"})
    out = []
    try:
        c.assign([TopicPartition(settings.study_topic, p, 0) for p in ends])
        todo = {p for p, end in ends.items() if end > 0}
        while todo:
            for m in c.consume(500, timeout=1.0):
                if m.error():
                    continue
                r = record(m)
                env = decode(r.value)
                if env.study_instance_uid in studies:
                    out.append((r.partition, r.offset, env))
                if r.offset + 1 >= ends[r.partition]:
                    todo.discard(r.partition)
    finally:
        c.close()
    return out


def test_replay_rebuilds_the_index_the_live_projection_wrote(
    kafka: Settings, tmp_path: Path, chdb_index: IndexStore
) -> None:
    # A small log, written the real way (outbox -> relay -> Kafka): three studies, one instance
    # stored again with other bytes (a new version), in the archive's own topic.
    studies = [uid() for _ in range(3)]
    outbox = Outbox(tmp_path / "outbox.sqlite")
    written = _append(outbox, kafka.study_topic, studies, 15)
    again = instance(
        patient_id="KP",
        study_uid=studies[0],
        series_uid=studies[0] + ".1",
        sop_uid=written[0].instance_stored.sop_instance_uid,
        patient_name="Doe^Jane",
    )
    again.event_id += ".v2"  # another fact about the same instance
    outbox.append(
        event_id=again.event_id,
        topic=kafka.study_topic,
        key=studies[0],
        value=again.SerializeToString(),
    )
    _published(Relay(outbox, kafka.kafka_bootstrap), outbox)
    outbox.close()

    # The live projection's writes (processors/agents.py: a Batch of the records, IndexStore.write),
    # in batches of four records as they come off the log.
    live = other_database(chdb_index)
    records = _consume(kafka, set(studies))
    assert len(records) == 16
    for i in range(0, len(records), 4):
        live.write(batch((env, p, off, kafka.study_topic) for p, off, env in records[i : i + 4]))

    # The replay: every record of the log (the other tests' studies too) into a fresh database;
    # the live index above saw only this test's studies, so compare those.
    rebuilt = other_database(chdb_index)
    until = end_positions(kafka.kafka_bootstrap, [kafka.study_topic])
    result = replay(kafka.kafka_bootstrap, rebuilt, until)
    assert result.events == sum(until[kafka.study_topic].values())
    assert checksum.positions(rebuilt) == {
        kafka.study_topic: {p: end for p, end in until[kafka.study_topic].items() if end}
    }
    live_studies = checksum.study_checksums(live)
    rebuilt_studies = checksum.study_checksums(rebuilt)
    assert set(live_studies) == set(studies)
    assert {s: rebuilt_studies.get(s) for s in studies} == live_studies

    # and what the rebuilt index answers is what was written: 15 instances, the latest version
    rows = rebuilt.query(
        f"SELECT sop_uid, patient_name FROM {rebuilt.database}.instances FINAL "
        "WHERE study_uid IN {s:Array(String)} ORDER BY sop_uid",
        {"s": studies},
    )
    assert sorted(r[0] for r in rows) == sorted(e.instance_stored.sop_instance_uid for e in written)
    names = {r[0]: r[1] for r in rows}
    assert names[again.instance_stored.sop_instance_uid] == "Doe^Jane"


def test_tails_see_past_a_transaction_marker(kafka: Settings) -> None:
    """A partition written by a transactional producer (as MirrorMaker 2 writes a following
    site's log) ends with a marker no record is delivered at: an index that applied every
    record is caught up there (common/kafka.py Tails; the index node's barrier uses it)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import NewTopic

    from strata.common.kafka import Tails, admin, client_config

    topic = "strata.test-tails"
    adm = admin(kafka)  # held: its futures fail when the client is collected
    for f in adm.create_topics([NewTopic(topic, 1, 1)]).values():
        f.result(30)
    p = Producer({**client_config(kafka, "test-tx"), "transactional.id": "test-tails"})
    p.init_transactions(60)
    p.begin_transaction()
    p.produce(topic, key=b"k", value=b"one record")
    p.commit_transaction(60)
    ends = end_positions(kafka, [topic])
    assert ends == {topic: {0: 2}}  # the record at 0, the commit marker at 1
    tails = Tails(kafka, "test")
    try:
        assert tails.lowered(ends, {topic: {0: 1}}) == {topic: {0: 1}}  # only the marker left
        assert tails.lowered(ends, {topic: {0: 0}}) == ends  # the record not applied: behind
        assert tails.lowered(ends, {}) == ends
    finally:
        tails.close()
