"""The relay's poison handling (finding #15.1): an event Kafka refuses for good is set aside in
the outbox and never blocks the events after it. A fake producer stands in for librdkafka: it
refuses records over its own limit at produce() (as librdkafka's message.max.bytes does) and
fails a whole delivered batch holding a record over the broker's limit (as a broker's
max.message.bytes does); the outbox is the real SQLite one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from strata.ingest.outbox import Outbox
from strata.ingest.relay import Relay


class FakeProducer:
    def __init__(self, local_max: int = 1000, broker_max: int = 1000) -> None:
        self.local_max, self.broker_max = local_max, broker_max
        self.queued: list[tuple[bytes, Callable[..., None]]] = []
        self.log: list[bytes] = []  # what the broker accepted, in order

    def produce(
        self, topic: str, key: bytes, value: bytes, on_delivery: Callable[..., None]
    ) -> None:
        if len(value) > self.local_max:
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        self.queued.append((value, on_delivery))

    def poll(self, _timeout: float = 0) -> int:
        batch, self.queued = self.queued, []
        refused = any(len(v) > self.broker_max for v, _ in batch)
        for v, cb in batch:
            if refused:
                cb(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE), None)
            else:
                self.log.append(v)
                cb(None, None)
        return len(batch)

    def flush(self, _timeout: float = 0) -> int:
        self.poll()
        return 0

    def list_topics(self, timeout: float = 0) -> Any:
        return type("Md", (), {"brokers": {1: "b"}})()


def relay_with(tmp_path: Path, producer: FakeProducer) -> tuple[Relay, Outbox, list[int]]:
    outbox = Outbox(tmp_path / "ob.sqlite")
    aside: list[int] = []
    relay = Relay(
        outbox,
        "unused:9092",
        on_set_aside=lambda: aside.append(1),
        producer_factory=lambda _conf: producer,
    )
    return relay, outbox, aside


def append(outbox: Outbox, name: str, size: int) -> None:
    value = name.encode() + b"." * (size - len(name))
    outbox.append(event_id=name, topic="t", key="k", value=value, sop_uid=name, sha256="s")


def names(log: list[bytes]) -> list[str]:
    return [v.rstrip(b".").decode() for v in log]


def test_an_event_the_producer_refuses_is_set_aside_and_the_rest_published(
    tmp_path: Path,
) -> None:
    producer = FakeProducer(local_max=1000)
    relay, outbox, aside = relay_with(tmp_path, producer)
    for name, size in (("a", 10), ("huge", 5000), ("c", 10)):
        append(outbox, name, size)
    assert relay._publish_batch()
    assert names(producer.log) == ["a", "c"]
    assert outbox.depth() == 0 and outbox.set_aside_count() == 1 and aside == [1]
    [e] = outbox.set_aside_events()
    assert e.event_id == "huge" and e.size == 5000 and "MSG_SIZE_TOO_LARGE" in e.error
    assert not relay._publish_batch()  # nothing pending: it never comes back by itself


def test_a_batch_the_broker_refuses_is_retried_record_by_record(tmp_path: Path) -> None:
    """A broker refuses the whole batch holding one record over its limit: the innocent
    records of that batch are published on their own; only the culprit is set aside."""
    producer = FakeProducer(local_max=10_000, broker_max=1000)
    relay, outbox, aside = relay_with(tmp_path, producer)
    for name, size in (("a", 10), ("huge", 5000), ("c", 10), ("d", 10)):
        append(outbox, name, size)
    assert relay._publish_batch()
    assert names(producer.log) == ["a", "c", "d"]
    assert outbox.depth() == 0 and [e.event_id for e in outbox.set_aside_events()] == ["huge"]
    append(outbox, "e", 10)
    assert relay._publish_batch() and names(producer.log)[-1] == "e"


def test_redrive_publishes_a_set_aside_event_once_kafka_takes_it(tmp_path: Path) -> None:
    producer = FakeProducer(local_max=1000)
    relay, outbox, aside = relay_with(tmp_path, producer)
    append(outbox, "huge", 5000)
    relay._publish_batch()
    assert outbox.set_aside_count() == 1
    assert outbox.redrive() == 1 and outbox.depth() == 1
    relay._publish_batch()  # still too large: set aside again, with the error
    assert outbox.set_aside_count() == 1 and aside == [1, 1]
    producer.local_max = producer.broker_max = 10_000  # the operator raised the limits
    assert outbox.redrive([outbox.set_aside_events()[0].seq]) == 1
    relay._publish_batch()
    assert names(producer.log) == ["huge"] and outbox.set_aside_count() == 0
    assert outbox.depth() == 0


def test_an_outbox_made_before_set_aside_existed_is_upgraded(tmp_path: Path) -> None:
    import sqlite3

    db = sqlite3.connect(tmp_path / "ob.sqlite")
    db.executescript(
        """CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL
        UNIQUE, topic TEXT NOT NULL, key TEXT NOT NULL, value BLOB, sop_uid TEXT, sha256 TEXT,
        created_ms INTEGER NOT NULL, published INTEGER NOT NULL DEFAULT 0);
        CREATE UNIQUE INDEX outbox_arrival ON outbox (sop_uid, sha256)
            WHERE sop_uid IS NOT NULL AND sha256 IS NOT NULL;
        INSERT INTO outbox (event_id, topic, key, value, sop_uid, sha256, created_ms)
            VALUES ('e1', 't', 'k', x'00', '1.2', 'a', 0);"""
    )
    db.close()
    outbox = Outbox(tmp_path / "ob.sqlite")
    assert outbox.set_aside(outbox.pending()[0].seq, "MSG_SIZE_TOO_LARGE")
    again = outbox.append(
        event_id="e2", topic="t", key="k", value=b"1", sop_uid="1.2", sha256="a", again_after="e1"
    )
    assert again.new and outbox.set_aside_count() == 1 and outbox.depth() == 1
