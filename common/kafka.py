"""Kafka adapter: topic administration (confluent-kafka). The producer is ingest.relay.

Vendor errors are translated into common.errors here.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
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
    return [
        TopicSpec(settings.study_topic, settings.study_partitions, forever),
        TopicSpec(settings.quarantine_topic, 1, forever),
    ]


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
