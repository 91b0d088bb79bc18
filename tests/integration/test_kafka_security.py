"""Kafka SASL_SSL and ACLs against a real broker (docs/security.md, "Kafka: SASL_SSL and ACLs"):
the local broker as 'strata up' starts it with STRATA_KAFKA_SECURITY=sasl_ssl, its users and
ACL table applied by stack/kafka/security.py. Clients without credentials, with a wrong
password, or with a valid principal that has no ACL for the topic, must not write a record;
the principals that own a topic must. (The whole hardened stack, storing by C-STORE and
finding by C-FIND over SASL_SSL with these ACLs, is tests/e2e/test_dicom_tls.py.)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Producer

from strata.common import kafka
from strata.common.settings import Settings
from strata.stack.kafka import broker, security
from strata.stack.procs import free_port

pytestmark = pytest.mark.integration


@contextlib.contextmanager
def running_secured(s: Settings, ready_within: float) -> Iterator[Settings]:
    """The broker(s) of ``s`` up with SASL_SSL, the credentials and ACLs applied, the topics
    made; stopped afterwards."""
    broker.start(s)
    try:
        broker.wait_ready(s, ready_within)
        security.apply(s)
        kafka.ensure_topics(security.as_principal(s, security.ADMIN))
        yield s
    finally:
        broker.stop(s)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    home = tmp_path_factory.mktemp("kafka-sasl")
    s = Settings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        kafka_controller_port=free_port(),
        kafka_security="sasl_ssl",
        node_name="sasl-test",
    )
    with running_secured(s, 120):
        yield s


def produce(config: dict[str, Any], topic: str, timeout: float = 20) -> tuple[Any, list[Any]]:
    """Produce one record; (its delivery error or None, the client's own errors)."""
    errors: list[Any] = []
    delivered: list[Any] = []
    p = Producer({**config, "message.timeout.ms": int(timeout * 1000), "error_cb": errors.append})
    p.produce(topic, b"not an event", b"k", on_delivery=lambda e, _m: delivered.append(e))
    p.flush(timeout + 10)
    assert len(delivered) == 1, "no delivery report within the message timeout"
    return delivered[0], errors


def end(s: Settings, topic: str) -> int:
    admin = security.as_principal(s, security.ADMIN)
    return sum(kafka.end_positions(admin, [topic]).get(topic, {}).values())


def config_of(s: Settings, user: str) -> dict[str, Any]:
    return kafka.producer_config(security.as_principal(s, user), "durable", "acl-test")


def test_the_brokers_secrets_are_private(secured: Settings) -> None:
    import stat

    k = secured.kafka_dir
    for f in (k / "server.properties", k / "tls" / "keystore.pem", *k.glob("credentials/*")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    admin_pw = (k / "credentials" / "strata-admin.password").read_text().strip()
    assert admin_pw in (k / "server.properties").read_text()  # the brokers' own logins


def test_the_broker_takes_no_plaintext_client(secured: Settings) -> None:
    before = end(secured, secured.study_topic)
    # the bare bootstrap list: a plaintext client, as every client was before
    err, errors = produce(
        kafka.producer_config(secured.kafka_bootstrap, "durable", "anon"),
        secured.study_topic,
        timeout=8,
    )
    assert err is not None and err.code() == KafkaError._MSG_TIMED_OUT
    assert errors, "the client saw its connections fail"
    assert end(secured, secured.study_topic) == before


def test_a_wrong_password_is_refused(secured: Settings, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    s = dataclasses.replace(secured, kafka_user=security.INGEST, kafka_password_file=str(wrong))
    before = end(secured, secured.study_topic)
    err, errors = produce(kafka.producer_config(s, "durable", "wrong"), secured.study_topic, 8)
    assert err is not None
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors
    assert end(secured, secured.study_topic) == before


def test_an_unknown_principal_is_refused(secured: Settings, tmp_path: Path) -> None:
    pw = tmp_path / "mallory.password"
    pw.write_text("whatever\n")
    s = dataclasses.replace(secured, kafka_user="mallory", kafka_password_file=str(pw))
    err, errors = produce(kafka.producer_config(s, "durable", "x"), secured.quarantine_topic, 8)
    assert err is not None
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


@pytest.mark.parametrize(
    ("user", "topic"),
    [
        (security.ROUTER, "quarantine"),  # the router writes route events, never refusals
        (security.INDEX, "dr"),  # only the operator (dr promote) writes the sites' epochs
        (security.DR_COPIER, "quarantine"),
        (security.OPERATOR, "quarantine"),  # refusals are the ingest node's alone
    ],
)
def test_a_principal_without_the_acl_cannot_write(secured: Settings, user: str, topic: str) -> None:
    name = {"quarantine": secured.quarantine_topic, "dr": secured.dr_topic}[topic]
    before = end(secured, name)
    err, _ = produce(config_of(secured, user), name)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    assert end(secured, name) == before


@pytest.mark.parametrize(
    ("user", "topic"),
    [
        (security.INGEST, "study"),
        (security.INGEST, "quarantine"),
        (security.ROUTER, "study"),
        (security.OPERATOR, "dr"),
    ],
)
def test_the_owners_of_a_topic_write_it(secured: Settings, user: str, topic: str) -> None:
    name = {
        "study": secured.study_topic,
        "quarantine": secured.quarantine_topic,
        "dr": secured.dr_topic,
    }[topic]
    before = end(secured, name)
    err, _ = produce(config_of(secured, user), name)
    assert err is None
    assert end(secured, name) == before + 1


def test_a_principal_cannot_join_another_services_group(secured: Settings) -> None:
    # the index principal in the router's group would take the router's partitions
    c = kafka.consumer(
        security.as_principal(secured, security.INDEX), secured.router_group, "intruder"
    )
    try:
        c.subscribe([secured.study_topic])
        err = None
        for _ in range(40):  # each poll waits up to 0.5 s for the group's answer
            m = c.poll(0.5)
            if m is not None and m.error():
                err = m.error()
                break
        assert err is not None and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err
    finally:
        c.close()


@pytest.mark.parametrize(
    ("user", "group"),
    [
        (security.ROUTER, "router_group"),
        (security.DR_COPIER, "dr_copy_group"),
        (security.INDEX, "index_group"),
    ],
)
def test_each_service_reads_in_its_own_group(secured: Settings, user: str, group: str) -> None:
    err, _ = produce(config_of(secured, security.INGEST), secured.study_topic)
    assert err is None  # a record to read, whatever ran before
    assigned: list[Any] = []
    c = kafka.consumer(
        security.as_principal(secured, user),
        getattr(secured, group),
        "member",
        {"auto.offset.reset": "earliest"},
    )
    try:
        c.subscribe([secured.study_topic], on_assign=lambda _c, ps: assigned.extend(ps))
        for _ in range(60):  # each poll waits up to 0.5 s for the group's answer
            m = c.poll(0.5)
            assert m is None or not m.error() or m.error().code() == KafkaError._PARTITION_EOF, (
                m.error()
            )
            if assigned and m is not None and not m.error():
                break
        assert {p.partition for p in assigned} == set(range(secured.study_partitions))
        assert m is not None and not m.error()  # a record of the study topic was read
        # and its position committed in its group (READ on the group)
        c.commit(m, asynchronous=False)
    finally:
        c.close()


def test_a_cluster_replicates_over_sasl_ssl(tmp_path: Path) -> None:
    """Three nodes (docs/ha.md): the brokers replicate to each other on the SASL_SSL listener
    as strata-admin; an acks=all write needs 2 in-sync replicas, so its success is the proof."""
    s = Settings(
        home=tmp_path,
        kafka_bootstrap=",".join(f"127.0.0.1:{free_port()}" for _ in range(3)),
        kafka_controller_ports=",".join(str(free_port()) for _ in range(3)),
        kafka_nodes=3,
        kafka_security="sasl_ssl",
        node_name="sasl-cluster",
    )
    with running_secured(s, 180):
        err, _ = produce(config_of(s, security.INGEST), s.study_topic, 60)
        assert err is None
        err, _ = produce(config_of(s, security.ROUTER), s.quarantine_topic)
        assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
