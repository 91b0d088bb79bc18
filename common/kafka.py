"""Kafka adapter: topic administration (confluent-kafka). The producer is ingest.relay.

Vendor errors are translated into common.errors here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka.admin import AdminClient, NewTopic

from common.errors import Unavailable
from common.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """A consumed event record: where it sits in the log and its bytes."""

    topic: str
    partition: int
    offset: int
    value: bytes


def record(m: Message) -> Record:
    """The position and bytes of a consumed record (``m.error()`` is None). The client types
    them optional because error messages carry none; the archive's topics hold no null values
    (no tombstones: they are never compacted), so an empty value stands in for one."""
    topic, partition, offset = m.topic(), m.partition(), m.offset()
    if topic is None or partition is None or offset is None:
        raise ValueError("not a consumed record (an error or a produced message)")
    return Record(topic, partition, offset, m.value() or b"")


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def source_of_truth_topics(settings: Settings) -> list[TopicSpec]:
    """Topics that ARE the truth: never expire, never compact (docs/design.md, invariants)."""
    forever = {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        "min.insync.replicas": str(min(2, settings.topic_replicas)),
        "unclean.leader.election.enable": "false",
    }
    return [
        TopicSpec(settings.study_topic, settings.study_partitions, forever),
        TopicSpec(settings.quarantine_topic, 1, forever),
        TopicSpec(settings.dr_topic, 1, forever),  # geo-redundancy epochs (docs/dr.md)
        TopicSpec(settings.audit_topic, 1, forever),  # the audit trail (common/audit.py)
    ]


# create_topics errors that a retry cannot fix (the request itself is wrong).
_FINAL_TOPIC_ERRORS = frozenset(
    {
        KafkaError.INVALID_REPLICATION_FACTOR,
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_CONFIG,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.POLICY_VIOLATION,
    }
)


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    specs = source_of_truth_topics(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise Unavailable(f"Kafka unreachable at {settings.kafka_bootstrap}: {exc}") from exc
    todo = {
        s.name: NewTopic(s.name, s.partitions, settings.topic_replicas, config=s.config)
        for s in specs
        if s.name not in existing
    }
    created: list[str] = []
    # A cluster that has just formed may drop a request (a broker handle reset while the
    # controller settles): retry what failed that way until the deadline.
    deadline = time.monotonic() + timeout
    while todo:
        failed: dict[str, KafkaException] = {}
        for name, fut in admin.create_topics(list(todo.values()), request_timeout=timeout).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if err.code() in _FINAL_TOPIC_ERRORS or time.monotonic() > deadline:
                    raise Unavailable(f"cannot create topic {name}: {exc}") from exc
                failed[name] = exc
        todo = {n: t for n, t in todo.items() if n in failed}
        if todo:
            time.sleep(0.5)
    return created


def read_log(bootstrap: str, topic: str, timeout: float = 60.0) -> list[bytes]:
    """Every record value of ``topic`` from offset 0 up to its end at the time of the call,
    in per-partition order (an auditor's or a test's read of the whole log; committed records
    only). Raises Unavailable when the end is not reached within ``timeout`` seconds."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"strata-read-{time.time_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    out: list[bytes] = []
    try:
        meta = c.list_topics(topic, timeout=10).topics[topic]
        parts = list(meta.partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done = {p for p, e in ends.items() if e == 0}
        deadline = time.monotonic() + timeout
        while len(done) < len(parts):
            if time.monotonic() > deadline:
                raise Unavailable(f"reading {topic} did not reach its end in {timeout:.0f}s")
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            r = record(m)
            out.append(r.value)
            if r.offset + 1 >= ends[r.partition]:
                done.add(r.partition)
    except KafkaException as exc:
        raise Unavailable(f"cannot read {topic}: {exc}") from exc
    finally:
        c.close()
    return out
