"""The Kafka adapter: every Kafka client of every Strata process is built here.

Producers, consumers and the admin client (confluent-kafka), and the broker settings of the
index node's faust app, all start from one base, ``client_config``: adding security settings
(SASL_SSL, TLS) is a change to that function alone. The rest of the module: topic
administration, end offsets, and reading a whole topic. Vendor errors are translated into
common.errors here.

A *cluster* is the process's ``Settings`` (product code: the base config comes from them), or a
bare bootstrap list, for tests and tools that talk to a local plaintext broker.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from strata.common.errors import Unavailable
from strata.common.settings import Settings

log = logging.getLogger(__name__)

# ------------------------------------------------------------------ clients

Cluster = Settings | str  # the process's Settings, or a bare bootstrap list (module docstring)
Positions = dict[str, dict[int, int]]  # topic -> partition -> offset


def cluster_settings(cluster: Cluster) -> Settings:
    """The settings a client of ``cluster`` is built from (a bare bootstrap list: the defaults
    with that bootstrap)."""
    return cluster if isinstance(cluster, Settings) else Settings(kafka_bootstrap=cluster)


def bootstrap_of(cluster: Cluster) -> str:
    """The bootstrap list of ``cluster``, for messages."""
    return cluster_settings(cluster).kafka_bootstrap


def peer(settings: Settings) -> Settings:
    """The DR peer site's cluster (docs/dr.md): this site's settings with the peer's bootstrap.
    The one place to set the peer's own connection settings, should they ever differ."""
    return dataclasses.replace(settings, kafka_bootstrap=settings.dr_peer_bootstrap)


# ------------------------------------------------------------------ security

SECURITY_MODES = ("plaintext", "sasl_ssl")
SCRAM_MECHANISM = "SCRAM-SHA-512"
OPERATOR = "strata-operator"  # the principal of a process given none (the CLI's)


@dataclass(frozen=True)
class KafkaSecurity:
    """How a process connects to Kafka (docs/security.md, "Kafka: SASL_SSL and ACLs")."""

    mode: str  # plaintext | sasl_ssl
    user: str = ""
    password_file: str = ""
    ca: str = ""

    @property
    def sasl(self) -> bool:
        return self.mode == "sasl_ssl"

    def password(self) -> str:
        try:
            return Path(self.password_file).read_text().strip()
        except OSError as exc:
            raise Unavailable(
                f"Kafka password of {self.user} unreadable ({self.password_file}): {exc}"
            ) from exc


def credentials_dir(settings: Settings) -> Path:
    """Where the local stack keeps the generated SCRAM passwords, one file per principal."""
    return settings.kafka_dir / "credentials"


def password_file(settings: Settings, user: str) -> Path:
    return credentials_dir(settings) / f"{user}.password"


def security(cluster: Cluster) -> KafkaSecurity:
    """The connection security of ``cluster``'s settings: STRATA_KAFKA_SECURITY (auto:
    sasl_ssl in the hardened profile), the process's principal and its password file, the CA
    the brokers are verified against. A bare bootstrap list is the plaintext default."""
    s = cluster_settings(cluster)
    mode = s.kafka_security.strip().lower()
    if mode == "auto":
        mode = "sasl_ssl" if s.profile == "hardened" else "plaintext"
    if mode not in SECURITY_MODES:
        raise ValueError(
            f"STRATA_KAFKA_SECURITY={s.kafka_security!r}: expected auto|plaintext|sasl_ssl"
        )
    if mode == "plaintext":
        return KafkaSecurity(mode)
    user = s.kafka_user or OPERATOR
    return KafkaSecurity(
        mode,
        user,
        s.kafka_password_file or str(password_file(s, user)),
        s.kafka_ca or str(s.home / "pki" / "ca.pem"),
    )


def client_config(cluster: Cluster, role: str) -> dict[str, Any]:
    """The base librdkafka config of every client: where the cluster is and who is asking
    (``client.id`` strata-<node>-<role>, in the broker's logs and request metrics). Connection
    security (security.protocol, sasl.*, ssl.*) belongs here and nowhere else."""
    s = cluster_settings(cluster)
    base = {"bootstrap.servers": s.kafka_bootstrap, "client.id": f"strata-{s.node_name}-{role}"}
    sec = security(s)
    if not sec.sasl:
        return base
    return {
        **base,
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": SCRAM_MECHANISM,
        "sasl.username": sec.user,
        "sasl.password": sec.password(),
        "ssl.ca.location": sec.ca,
        # the broker's certificate must name the host connected to (librdkafka's default, stated)
        "ssl.endpoint.identification.algorithm": "https",
    }


# Every producer is idempotent with acks=all: an event is acknowledged only once every in-sync
# replica has it, and retries never duplicate or reorder it (docs/design.md, 4.1).
_DURABLE: dict[str, Any] = {"enable.idempotence": True, "acks": "all"}

PRODUCER_PROFILES: Mapping[str, Mapping[str, Any]] = {
    # One event at a time, each flushed before going on: the CLI's events, the DR copier.
    "durable": _DURABLE,
    # The write path's one producer (ingest/relay.py): a record is never given up on (the
    # outbox keeps it until Kafka takes it), small batches sent at once, lz4 on the wire.
    "relay": {
        **_DURABLE,
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": 0,
        "socket.nagle.disable": True,
        "reconnect.backoff.max.ms": 1000,
    },
    # The router's route-state events (processors/router/service.py).
    "router": {**_DURABLE, "linger.ms": 2, "socket.nagle.disable": True},
    # Decisions of the index node: study-stable announcements, lifecycle moves and deletes.
    "decisions": {**_DURABLE, "linger.ms": 5, "socket.nagle.disable": True},
    # Access records (processors/lifecycle/emitter.py, AccessRecorder): many, none waited on.
    "access": {**_DURABLE, "linger.ms": 50},
    # The audit trail (common/audit.py): never waited on by the audited operation; a record
    # not acknowledged in 10 s is given back (its delivery report fails) and kept in the
    # process's local spool until Kafka takes it.
    "audit": {
        **_DURABLE,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 10_000,
        "socket.nagle.disable": True,
        "reconnect.backoff.max.ms": 1000,
    },
    # A log loaded as fast as the broker takes it (benchmarks): big batches, errors reported.
    "bulk": {
        **_DURABLE,
        "compression.type": "lz4",
        "linger.ms": 50,
        "batch.size": 900_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "queue.buffering.max.messages": 200_000,
        "delivery.report.only.error": True,
    },
}


def producer_config(
    cluster: Cluster,
    profile: str,
    role: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config of a producer of ``profile`` (PRODUCER_PROFILES); ``role`` names the client
    (default: the profile)."""
    return {
        **client_config(cluster, role or profile),
        **PRODUCER_PROFILES[profile],
        **(overrides or {}),
    }


def new_producer(config: dict[str, Any]) -> Producer:
    """A producer of a config built by producer_config (ingest/relay.py takes this as a
    factory, so its unit tests can pass a fake)."""
    return Producer(config)


def producer(
    cluster: Cluster,
    profile: str,
    role: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Producer:
    return new_producer(producer_config(cluster, profile, role, overrides))


def consumer_config(
    cluster: Cluster, group: str, role: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The config of a consumer in ``group``: offsets are committed by the caller, if at all
    (auto-commit off), and only committed records are read (read_committed, librdkafka's
    default, stated). ``extra``: the caller's fetch tuning, offset reset, EOF events."""
    return {
        **client_config(cluster, role),
        "group.id": group,
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
        **(extra or {}),
    }


def consumer(
    cluster: Cluster, group: str, role: str, extra: Mapping[str, Any] | None = None
) -> Consumer:
    return Consumer(consumer_config(cluster, group, role, extra))


def fresh_group(prefix: str) -> str:
    """A consumer group of its own, for a reader that assigns partitions and commits nothing."""
    return f"{prefix}-{time.time_ns()}"


def admin(cluster: Cluster, role: str = "admin") -> AdminClient:
    return AdminClient(client_config(cluster, role))


def high_watermarks(c: Consumer, topic: str, timeout: float = 10) -> dict[int, int]:
    """Partition -> end offset of every partition of ``topic`` ({} when it does not exist)."""
    meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
    if meta is None or meta.error is not None:
        return {}
    return {p: end_offset(c, TopicPartition(topic, p), timeout) for p in meta.partitions}


# Errors a partition answers while its leader is elected or moves (librdkafka does not mark
# them retriable on this call's KafkaError, so they are named).
_LEADER_MOVING = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._TRANSPORT,
        KafkaError._TIMED_OUT,
    }
)


def end_offset(c: Consumer, tp: TopicPartition, timeout: float = 30) -> int:
    """The end offset of one partition (see ``watermarks``)."""
    return watermarks(c, tp, timeout)[1]


def watermarks(c: Consumer, tp: TopicPartition, timeout: float = 30) -> tuple[int, int]:
    """The first and end offsets of one partition. A partition whose leader is still being
    elected (a topic created a moment ago, a broker that just died) answers with an error
    such as NOT_LEADER_FOR_PARTITION: asked again until ``timeout``, then the error is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            lo, hi = c.get_watermark_offsets(tp, timeout=max(deadline - time.monotonic(), 1))
            return int(lo), int(hi)
        except KafkaException as exc:
            if exc.args[0].code() not in _LEADER_MOVING or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def assign_from(c: Consumer, topic: str, offsets: Mapping[int, int]) -> None:
    """Read ``topic`` from the given offset of each partition (no group rebalancing)."""
    c.assign([TopicPartition(topic, p, o) for p, o in offsets.items()])


def end_positions(cluster: Cluster, topics: list[str], probe: Consumer | None = None) -> Positions:
    """Log end offsets per topic partition. A long-lived caller passes its own ``probe``
    consumer (the index node asks every second: a new client per tick is wasted work)."""
    c = probe or consumer(cluster, "strata-replay-probe", "end-offsets")
    try:
        md = c.list_topics(timeout=30)
        out: Positions = {}
        for t in topics:
            if t not in md.topics:
                continue
            for p in md.topics[t].partitions:
                out.setdefault(t, {})[p] = end_offset(c, TopicPartition(t, p))
        return out
    except KafkaException as exc:
        raise Unavailable(f"Kafka unreachable at {bootstrap_of(cluster)}: {exc}") from exc
    finally:
        if probe is None:
            c.close()


class Tails:
    """Log ends as far as records go. A log written by a transactional producer has a
    transaction marker after each committed batch: MirrorMaker 2 (exactly-once) writes one after
    every batch it mirrors into a following site (docs/dr.md). No record is delivered at a
    marker's offset, so a partition whose last entry is a marker ends one past the last
    record: an index that applied every record is at its last record + 1, never at the end.
    ``lowered(ends, done)`` lowers such an end to ``done`` when nothing but markers lies
    between the two (one read_committed fetch from ``done`` per partition that looks behind)."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster = cluster
        self.name = name
        self._c: Consumer | None = None

    def lowered(self, ends: Positions, done: Positions) -> Positions:
        out: Positions = {}
        for t, parts in ends.items():
            for p, end in parts.items():
                d = done.get(t, {}).get(p, 0)
                out.setdefault(t, {})[p] = d if d < end and not self._record_at(t, p, d) else end
        return out

    def _record_at(self, topic: str, partition: int, offset: int) -> bool:
        """Is there a committed record at or after ``offset``? (True when unsure: the caller
        then waits as it would without this.)"""
        if self._c is None:
            self._c = consumer(
                self.cluster,
                f"strata-{self.name}-tails",
                self.name,
                {"enable.partition.eof": True},
            )
        self._c.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            m = self._c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is None:
                return True
            if err.code() == KafkaError._PARTITION_EOF:
                return False
        return True

    def close(self) -> None:
        if self._c is not None:
            self._c.close()
            self._c = None


def faust_settings(settings: Settings) -> dict[str, Any]:
    """The Kafka side of the index node's faust app (processors/app.py), from the same settings:
    faust talks to the cluster through aiokafka, not librdkafka, so these are faust's names for
    the same things (security: faust's broker_credentials, from what client_config uses)."""
    out: dict[str, Any] = {
        "broker": [f"kafka://{b.strip()}" for b in settings.kafka_bootstrap.split(",")],
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": settings.topic_replicas,
        "broker_commit_interval": 1.0,
        # A dead index node's partitions move after 10 s rather than faust's default 60 s.
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 2.0,
        "producer_acks": -1,
    }
    sec = security(settings)
    if sec.sasl:
        import ssl

        import faust

        # TLS 1.2+, the brokers verified against the CA and their host name
        ctx = ssl.create_default_context(cafile=sec.ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        out["broker_credentials"] = faust.SASLCredentials(
            username=sec.user,
            password=sec.password(),
            mechanism=SCRAM_MECHANISM,
            ssl_context=ctx,
        )
    return out


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
_UNRETRYABLE_TOPIC_ERRORS = frozenset(
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
    a = admin(settings, "topics")
    specs = source_of_truth_topics(settings)
    try:
        existing = set(a.list_topics(timeout=timeout).topics)
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
        for name, fut in a.create_topics(list(todo.values()), request_timeout=timeout).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if err.code() in _UNRETRYABLE_TOPIC_ERRORS or time.monotonic() > deadline:
                    raise Unavailable(f"cannot create topic {name}: {exc}") from exc
                failed[name] = exc
        todo = {n: t for n, t in todo.items() if n in failed}
        if todo:
            time.sleep(0.5)
    return created


def read_log(
    cluster: Cluster, topic: str, timeout: float = 60.0, config: dict[str, Any] | None = None
) -> list[bytes]:
    """Every record value of ``topic`` (``read_keyed``)."""
    return [v for _k, v in read_keyed(cluster, topic, timeout, config)]


def read_keyed(
    cluster: Cluster, topic: str, timeout: float = 60.0, config: dict[str, Any] | None = None
) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of every record of ``topic`` from offset 0 up to its end, in per-partition
    order (an auditor's or a test's read of the whole log; committed records only; [] when the
    topic does not exist). The end of a partition is the client's end-of-partition event, not a
    record at the high watermark - 1: a mirrored topic (a DR site, docs/dr.md) may end with a
    transaction marker, an offset no record is delivered at. ``config``: more consumer
    settings. Raises Unavailable when the log cannot be read, or its end is not reached
    within ``timeout`` seconds."""
    c = consumer(
        cluster,
        fresh_group("strata-read"),
        "read-log",
        {"enable.partition.eof": True, **(config or {})},
    )
    out: list[tuple[bytes | None, bytes]] = []
    try:
        meta = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        parts = set(meta.partitions)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done: set[int] = set()
        deadline = time.monotonic() + timeout
        while done != parts:
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"reading {topic} at {bootstrap_of(cluster)} did not reach its end "
                    f"in {timeout:.0f}s"
                )
            m = c.poll(0.5)
            if m is None:
                continue
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    done.add(m.partition() or 0)
                continue
            out.append((m.key(), m.value() or b""))
    except KafkaException as exc:
        raise Unavailable(f"cannot read {topic} at {bootstrap_of(cluster)}: {exc}") from exc
    finally:
        c.close()
    return out
