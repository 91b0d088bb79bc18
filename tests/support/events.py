"""Reading the archive's event log directly (a plain Kafka consumer, as an auditor would)."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, TopicPartition

from common.settings import Settings
from proto.strata.v1 import events_pb2


def read_all(settings: Settings, topic: str | None = None) -> list[events_pb2.Envelope]:
    """Every event of the study topic up to its current end, in per-partition order."""
    topic = topic or settings.study_topic
    c = Consumer(
        {
            "bootstrap.servers": settings.kafka_bootstrap,
            "group.id": f"audit-{time.time_ns()}",
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        }
    )
    out = []
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done = {p for p, e in ends.items() if e == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(parts) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            env = events_pb2.Envelope()
            env.ParseFromString(m.value())
            out.append(env)
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
    finally:
        c.close()
    return out


def of_type(events: list[events_pb2.Envelope], kind: str) -> list[object]:
    """Payloads of one kind, e.g. of_type(evs, "route_attempted")."""
    return [getattr(e, kind) for e in events if e.WhichOneof("payload") == kind]
