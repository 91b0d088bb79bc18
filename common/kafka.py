"""Kafka adapter: the idempotent event producer and topic administration (confluent-kafka).

Vendor errors are translated into common.errors here.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from common.errors import Unavailable
from common.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def source_of_truth_topics(settings: Settings) -> list[TopicSpec]:
    """Topics that ARE the truth: never expire, never compact (DESIGN.md invariant 3)."""
    forever = {
        "retention.ms": "-1",
        "retention.bytes": "-1",
        "cleanup.policy": "delete",
        "min.insync.replicas": str(min(2, settings.replication_factor)),
        "unclean.leader.election.enable": "false",
    }
    return [TopicSpec(settings.study_topic, settings.study_partitions, forever)]


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics; returns the names created. Existing topics are left as they are."""
    admin = AdminClient({"bootstrap.servers": settings.kafka_bootstrap})
    specs = source_of_truth_topics(settings)
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise Unavailable(f"Kafka unreachable at {settings.kafka_bootstrap}: {exc}") from exc
    todo = [
        NewTopic(s.name, s.partitions, settings.replication_factor, config=s.config)
        for s in specs
        if s.name not in existing
    ]
    created: list[str] = []
    if not todo:
        return created
    for name, fut in admin.create_topics(todo, request_timeout=timeout).items():
        try:
            fut.result()
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise Unavailable(f"cannot create topic {name}: {exc}") from exc
    return created


class EventPublisher:
    """Publishes events with an idempotent producer and acks=all; ``publish`` returns only once
    the broker has acknowledged the record as durable (all in-sync replicas)."""

    def __init__(self, settings: Settings) -> None:
        self._timeout = settings.event_timeout
        self._producer = Producer(
            {
                "bootstrap.servers": settings.kafka_bootstrap,
                "enable.idempotence": True,  # implies acks=all, bounded in-flight, retries
                "acks": "all",
                "linger.ms": 1,
                "compression.type": "lz4",
                # Give up when the caller gives up, so an answered failure is rarely a late
                # success (a late success is still safe: consumers deduplicate).
                "delivery.timeout.ms": int(self._timeout * 1000),
                "socket.nagle.disable": True,
            }
        )
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def publish(self, topic: str, key: str, value: bytes) -> tuple[int, int]:
        """Returns (partition, offset). Raises Unavailable if not durable within the timeout."""
        done = threading.Event()
        result: dict[str, object] = {}

        def on_delivery(err: KafkaError | None, msg: object) -> None:
            result["err"] = err
            result["msg"] = msg
            done.set()

        try:
            self._producer.produce(topic, value=value, key=key.encode(), on_delivery=on_delivery)
        except (KafkaException, BufferError) as exc:
            raise Unavailable(f"event log refused the event: {exc}") from exc
        if not done.wait(self._timeout + 1.0):
            raise Unavailable("event log did not confirm the event in time")
        err = result["err"]
        if err is not None:
            raise Unavailable(f"event log did not store the event: {err}")
        msg = result["msg"]
        return msg.partition(), msg.offset()  # type: ignore[attr-defined]

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._poller.join(timeout=2)
        self._producer.flush(timeout)
