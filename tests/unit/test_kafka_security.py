"""The local broker's security settings and the ACL table (stack/kafka/security.py;
docs/security.md, "Kafka: SASL_SSL and ACLs"). The broker enforcing them is
tests/integration/test_kafka_security.py."""

from __future__ import annotations

import stat
from pathlib import Path

from strata.common.settings import Settings
from strata.stack.kafka import broker, security


def test_plaintext_broker_is_as_before(tmp_path: Path) -> None:
    s = Settings(home=tmp_path)
    props = broker._properties(s, broker.nodes(s)[0])
    assert "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in props
    assert "sasl" not in props and "authorizer" not in props
    assert security.principal_env(s, "ingest") == {}


def test_sasl_ssl_broker(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, profile="hardened")
    files = security.ensure_passwords(s)
    assert set(files) == set(security.PRINCIPALS)
    for f in files.values():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert stat.S_IMODE(files[security.ADMIN].parent.stat().st_mode) == 0o700
    assert security.ensure_passwords(s) == files  # made once
    props = broker._properties(s, broker.nodes(s)[0]).splitlines()
    for line in (
        "listeners=SASL_SSL://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093",
        "inter.broker.listener.name=SASL_SSL",
        "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:SASL_PLAINTEXT",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        "sasl.enabled.mechanisms=SCRAM-SHA-512",
        "ssl.keystore.type=PEM",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        "super.users=User:strata-admin",  # no ANONYMOUS: the controller listener asks too
    ):
        assert line in props
    ks = tmp_path / "kafka" / "tls" / "keystore.pem"
    assert stat.S_IMODE(ks.stat().st_mode) == 0o600
    assert "PRIVATE KEY" in ks.read_text() and "CERTIFICATE" in ks.read_text()
    assert security.principal_env(s, "router") == {
        "STRATA_KAFKA_USER": "strata-router",
        "STRATA_KAFKA_PASSWORD_FILE": str(files[security.ROUTER]),
    }


def writers(s: Settings, topic: str) -> set[str]:
    return {
        g.principal
        for g in security.acl_table(s)
        if g.resource == "topic" and g.name == topic and "WRITE" in g.ops and not g.prefixed
    }


def test_who_writes_which_topic() -> None:
    s = Settings()
    # the quarantine: the ingest node, an index replica's STOW relay, the mirror (DR copy)
    assert writers(s, s.quarantine_topic) == {security.INGEST, security.INDEX, security.MIRROR}
    # the sites' epochs: the operator (dr promote) and the mirror
    assert writers(s, s.dr_topic) == {security.OPERATOR, security.MIRROR}
    # the study topic: every service writes its own event types there (ACLs cannot tell them
    # apart: docs/security.md)
    assert writers(s, s.study_topic) == {
        security.INGEST,
        security.INDEX,
        security.ROUTER,
        security.DR_COPIER,
        security.OPERATOR,
        security.MIRROR,
    }
    # the audit trail: the processes that audit (ingest, index, the CLI) and the mirror
    assert writers(s, s.audit_topic) == {
        security.INGEST,
        security.INDEX,
        security.OPERATOR,
        security.MIRROR,
    }
    assert not writers(s, s.audit_topic) & {security.ROUTER, security.DR_COPIER}
    assert all(g.principal != security.ADMIN for g in security.acl_table(s))  # super user
    assert len(security.bindings(security.acl_table(s))) == sum(
        len(g.ops) for g in security.acl_table(s)
    )


def test_mirror_maker_connects_to_both_sites_as_its_principal(tmp_path: Path) -> None:
    from strata.stack import mirror

    s = Settings(home=tmp_path, dr_peer_bootstrap="127.0.0.1:9999", kafka_security="sasl_ssl")
    pw = security.ensure_passwords(s)[security.MIRROR].read_text().strip()
    props = mirror.properties(s, "A", "B").splitlines()
    for c in ("A", "B"):
        assert f"{c}.security.protocol=SASL_SSL" in props
        assert f"{c}.sasl.mechanism=SCRAM-SHA-512" in props
        assert (
            f"{c}.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule "
            f'required username="strata-mirror" password="{pw}";'
        ) in props
        assert f"{c}.ssl.truststore.type=PEM" in props
        assert f"{c}.ssl.truststore.location={tmp_path / 'pki' / 'ca.pem'}" in props
    plain = Settings(home=tmp_path, dr_peer_bootstrap="127.0.0.1:9999")
    assert "security.protocol" not in mirror.properties(plain, "A", "B")
