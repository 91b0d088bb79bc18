"""The Kafka adapter (common/kafka.py): every Kafka client is built there, from one base config,
so that connection settings (security) are one change. The exact config of every profile is
pinned here: a change to a profile is a change to this file too."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from strata.common import kafka
from strata.common.settings import Settings
from strata.ingest.outbox import Outbox
from strata.ingest.relay import Relay

ROOT = Path(__file__).resolve().parents[2]
# Where Kafka clients may be used: the product packages and the benchmarks (tests/ builds its own
# clients against the test brokers as it likes).
SCANNED = (
    "common", "dicomnet", "ingest", "processors", "query", "cli", "stack", "archive", "benchmarks"
)
ADAPTER = ROOT / "common" / "kafka.py"
CLIENTS = frozenset({"Producer", "Consumer", "AdminClient"})

S = Settings(kafka_bootstrap="k1:9092,k2:9092", node_name="n1", dr_peer_bootstrap="p1:9092")
BASE = {"bootstrap.servers": "k1:9092,k2:9092"}


def client_constructions(source: str) -> list[int]:
    """Lines of ``source`` that construct a confluent-kafka Producer, Consumer or AdminClient
    (by a name imported from confluent_kafka, or as an attribute of the module)."""
    tree = ast.parse(source)
    names: set[str] = set()  # local names of the client classes
    modules: set[str] = set()  # local names of confluent_kafka and confluent_kafka.admin
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("confluent_kafka"):
            for a in node.names:
                if a.name in CLIENTS:
                    names.add(a.asname or a.name)
                elif a.name == "admin":
                    modules.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("confluent_kafka"):
                    modules.add(a.asname or a.name.split(".")[0])
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in names:
            lines.append(node.lineno)
        elif isinstance(f, ast.Attribute) and f.attr in CLIENTS:
            base = f.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in modules:
                lines.append(node.lineno)
    return sorted(lines)


def test_the_scan_finds_every_form_of_construction() -> None:
    src = """
from confluent_kafka import Consumer, Producer as P
from confluent_kafka.admin import AdminClient
import confluent_kafka
import confluent_kafka.admin as ka
from strata.proto.strata.v1 import events_pb2 as pb

Consumer({})
P({})
AdminClient({})
confluent_kafka.Producer({})
ka.AdminClient({})
pb.Producer(service="x")
def f(c: Consumer) -> None: ...
"""
    assert client_constructions(src) == [8, 9, 10, 11, 12]


def test_kafka_clients_are_built_only_by_the_adapter() -> None:
    found = []
    for pkg in SCANNED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if path == ADAPTER:
                continue
            for line in client_constructions(path.read_text()):
                found.append(f"{path.relative_to(ROOT)}:{line}")
    assert found == [], "build Kafka clients with common.kafka (producer, consumer, admin)"


def test_client_config_is_the_base_of_every_client() -> None:
    assert kafka.client_config(S, "relay") == {**BASE, "client.id": "strata-n1-relay"}
    # A bare bootstrap list: the same base, with the default settings' node name.
    assert kafka.client_config("h:1", "x") == {
        "bootstrap.servers": "h:1",
        "client.id": f"strata-{Settings().node_name}-x",
    }
    assert kafka.bootstrap_of(S) == "k1:9092,k2:9092"
    assert kafka.bootstrap_of("h:1") == "h:1"


def test_the_peer_cluster_is_this_sites_settings_with_the_peers_bootstrap() -> None:
    p = kafka.peer(S)
    assert kafka.client_config(p, "dr")["bootstrap.servers"] == "p1:9092"
    assert p.node_name == S.node_name


DURABLE = {"enable.idempotence": True, "acks": "all"}

PROFILES: dict[str, dict[str, Any]] = {
    "durable": DURABLE,
    "relay": {
        **DURABLE,
        "linger.ms": 2,
        "compression.type": "lz4",
        "message.timeout.ms": 0,
        "socket.nagle.disable": True,
        "reconnect.backoff.max.ms": 1000,
    },
    "router": {**DURABLE, "linger.ms": 2, "socket.nagle.disable": True},
    "decisions": {**DURABLE, "linger.ms": 5, "socket.nagle.disable": True},
    "access": {**DURABLE, "linger.ms": 50},
    "audit": {
        **DURABLE,
        "linger.ms": 5,
        "compression.type": "lz4",
        "message.timeout.ms": 10_000,
        "socket.nagle.disable": True,
        "reconnect.backoff.max.ms": 1000,
    },
    "bulk": {
        **DURABLE,
        "compression.type": "lz4",
        "linger.ms": 50,
        "batch.size": 900_000,
        "batch.num.messages": 10_000,
        "queue.buffering.max.kbytes": 512 * 1024,
        "queue.buffering.max.messages": 200_000,
        "delivery.report.only.error": True,
    },
}


def test_the_profiles_are_exactly_these() -> None:
    assert set(kafka.PRODUCER_PROFILES) == set(PROFILES)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_producer_config_of_each_profile(profile: str) -> None:
    assert kafka.producer_config(S, profile) == {
        **BASE,
        "client.id": f"strata-n1-{profile}",
        **PROFILES[profile],
    }


def test_producer_config_role_and_overrides() -> None:
    got = kafka.producer_config(S, "durable", "bench", {"linger.ms": 2, "acks": "all"})
    assert got == {**BASE, "client.id": "strata-n1-bench", **DURABLE, "linger.ms": 2}


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(KeyError):
        kafka.producer_config(S, "fast")


def test_consumer_config() -> None:
    base = {
        **BASE,
        "client.id": "strata-n1-router",
        "group.id": "g",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",
    }
    assert kafka.consumer_config(S, "g", "router") == base
    extra = {"auto.offset.reset": "earliest", "enable.partition.eof": True}
    assert kafka.consumer_config(S, "g", "router", extra) == {**base, **extra}


def test_fresh_groups_differ() -> None:
    a, b = kafka.fresh_group("strata-read"), kafka.fresh_group("strata-read")
    assert a.startswith("strata-read-") and a != b


def test_faust_settings() -> None:
    assert kafka.faust_settings(S) == {
        "broker": ["kafka://k1:9092", "kafka://k2:9092"],
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": S.topic_replicas,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 2.0,
        "producer_acks": -1,
    }


def test_the_relay_produces_with_the_relay_profile(tmp_path: Path) -> None:
    seen: list[dict[str, Any]] = []

    def factory(conf: dict[str, Any]) -> object:
        seen.append(conf)
        return object()

    Relay(Outbox(tmp_path / "ob.sqlite"), S, producer_factory=factory)
    assert seen == [kafka.producer_config(S, "relay")]
    assert seen[0]["client.id"] == "strata-n1-relay"


# ------------------------------------------------------------------ security (SASL_SSL)


def secured(tmp_path: Path, **kw: Any) -> Settings:
    from strata.common.pki import ensure_pki

    ensure_pki(tmp_path / "pki")  # the project CA the default STRATA_KAFKA_CA points at
    creds = tmp_path / "kafka" / "credentials"
    creds.mkdir(parents=True)
    (creds / "strata-operator.password").write_text("op-secret\n")
    (creds / "strata-ingest.password").write_text("ingest-secret\n")
    return Settings(home=tmp_path, kafka_bootstrap="k1:9092", node_name="n1", **kw)


def test_the_security_mode_follows_the_profile_unless_set(tmp_path: Path) -> None:
    assert kafka.security(Settings()).mode == "plaintext"
    assert kafka.security(Settings(profile="hardened")).mode == "sasl_ssl"
    assert kafka.security(Settings(profile="hardened", kafka_security="plaintext")).mode == (
        "plaintext"
    )
    assert kafka.security(Settings(kafka_security="sasl_ssl")).mode == "sasl_ssl"
    assert kafka.security("h:1").mode == "plaintext"  # a bare bootstrap list
    with pytest.raises(ValueError, match="STRATA_KAFKA_SECURITY"):
        kafka.security(Settings(kafka_security="ssl"))


def test_client_config_under_sasl_ssl(tmp_path: Path) -> None:
    s = secured(tmp_path, kafka_security="sasl_ssl")
    sasl = {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "ssl.ca.location": str(tmp_path / "pki" / "ca.pem"),
        "ssl.endpoint.identification.algorithm": "https",
    }
    # no principal set: the operator's (the CLI), its generated password file
    assert kafka.client_config(s, "cli") == {
        "bootstrap.servers": "k1:9092",
        "client.id": "strata-n1-cli",
        **sasl,
        "sasl.username": "strata-operator",
        "sasl.password": "op-secret",
    }
    ingest = dataclasses.replace(s, kafka_user="strata-ingest")
    assert kafka.client_config(ingest, "relay")["sasl.username"] == "strata-ingest"
    assert kafka.client_config(ingest, "relay")["sasl.password"] == "ingest-secret"
    # every client is built on it: producers, consumers, the admin
    assert kafka.producer_config(ingest, "relay")["security.protocol"] == "SASL_SSL"
    assert kafka.consumer_config(ingest, "g", "r")["sasl.username"] == "strata-ingest"
    # a password file and a CA of their own (production: secret files)
    own = tmp_path / "own.password"
    own.write_text("own-secret")
    p = dataclasses.replace(s, kafka_user="x", kafka_password_file=str(own), kafka_ca="/ca.pem")
    c = kafka.client_config(p, "r")
    assert (c["sasl.username"], c["sasl.password"], c["ssl.ca.location"]) == (
        "x",
        "own-secret",
        "/ca.pem",
    )


def test_a_missing_password_file_is_said(tmp_path: Path) -> None:
    from strata.common.errors import Unavailable

    s = secured(tmp_path, kafka_security="sasl_ssl", kafka_user="strata-router")
    with pytest.raises(Unavailable, match="strata-router"):
        kafka.client_config(s, "router")


def test_plaintext_settings_add_nothing(tmp_path: Path) -> None:
    s = secured(tmp_path, kafka_security="plaintext", kafka_user="strata-ingest")
    assert kafka.client_config(s, "relay") == {
        "bootstrap.servers": "k1:9092",
        "client.id": "strata-n1-relay",
    }
    assert "broker_credentials" not in kafka.faust_settings(s)


def test_faust_settings_under_sasl_ssl(tmp_path: Path) -> None:
    import ssl

    import faust

    s = secured(tmp_path, profile="hardened", kafka_user="strata-ingest")
    f = kafka.faust_settings(s)
    cred = f.pop("broker_credentials")
    assert f == {
        "broker": ["kafka://k1:9092"],
        "consumer_auto_offset_reset": "earliest",
        "topic_replication_factor": s.topic_replicas,
        "broker_commit_interval": 1.0,
        "broker_session_timeout": 10.0,
        "broker_heartbeat_interval": 2.0,
        "producer_acks": -1,
    }
    assert isinstance(cred, faust.SASLCredentials)
    assert (cred.username, cred.password) == ("strata-ingest", "ingest-secret")
    assert cred.mechanism.value == "SCRAM-SHA-512"
    assert cred.protocol.value == "SASL_SSL"
    ctx = cred.ssl_context
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    # what faust hands aiokafka (faust/transport/drivers/aiokafka.py)
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    auth = credentials_to_aiokafka_auth(cred)
    assert auth["security_protocol"] == "SASL_SSL"
    assert auth["sasl_mechanism"] == "SCRAM-SHA-512"
    assert auth["sasl_plain_username"] == "strata-ingest"


class _ElectingPartition:
    """A consumer whose partition answers NOT_LEADER_FOR_PARTITION ``n`` times (a topic created a
    moment ago: its leader is not elected yet), then its offsets."""

    def __init__(self, n: int, code: int = 0) -> None:
        from confluent_kafka import KafkaError

        self.n = n
        self.code = code or KafkaError.NOT_LEADER_FOR_PARTITION
        self.calls = 0

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        from confluent_kafka import KafkaError, KafkaException

        self.calls += 1
        if self.calls <= self.n:
            raise KafkaException(KafkaError(self.code))
        return 0, 42


def test_end_offset_waits_for_a_leader_to_be_elected() -> None:
    from confluent_kafka import TopicPartition

    c = _ElectingPartition(3)
    assert kafka.end_offset(c, TopicPartition("t", 0), timeout=10) == 42  # type: ignore[arg-type]
    assert c.calls == 4
    assert kafka.watermarks(_ElectingPartition(1), TopicPartition("t", 0)) == (0, 42)  # type: ignore[arg-type]


def test_end_offset_raises_what_is_not_a_leader_change_and_gives_up_at_the_deadline() -> None:
    from confluent_kafka import KafkaError, KafkaException, TopicPartition

    denied = _ElectingPartition(1, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(KafkaException):
        kafka.end_offset(denied, TopicPartition("t", 0), timeout=10)  # type: ignore[arg-type]
    assert denied.calls == 1
    never = _ElectingPartition(10**6)
    with pytest.raises(KafkaException):
        kafka.end_offset(never, TopicPartition("t", 0), timeout=0.5)  # type: ignore[arg-type]
