"""Kafka SASL_SSL (SCRAM-SHA-512) and ACLs of the local stack (docs/security.md, "Kafka:
SASL_SSL and ACLs"): one principal per service, its generated password, the broker's TLS
keystore from the project CA, and the least-privilege ACLs ``strata up`` applies.

Kafka ACLs are per topic, not per event type: the table below is what the broker enforces;
what it cannot (which event types a writer of the study topic writes) is said in the docs.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka.admin import (
    AclBinding,
    AclOperation,
    AclPermissionType,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialAlteration,
    UserScramCredentialUpsertion,
)

from strata.common import kafka
from strata.common.errors import Unavailable
from strata.common.pki import ensure_pki
from strata.common.settings import Settings

ADMIN = "strata-admin"  # super user: creates topics, users and ACLs ('strata up')
INGEST = "strata-ingest"
INDEX = "strata-index"  # the index node, with its stability and lifecycle processors
ROUTER = "strata-router"
DR_COPIER = "strata-dr-copier"
MIRROR = "strata-mirror"
OPERATOR = kafka.OPERATOR  # the CLI: emit, holds, redrive, dr promote/status, rebuilds

PRINCIPALS = (ADMIN, INGEST, INDEX, ROUTER, DR_COPIER, MIRROR, OPERATOR)

# The local stack's services and the principal each runs as.
SERVICE_PRINCIPALS = {
    "ingest": INGEST,
    "index": INDEX,
    "router": ROUTER,
    "dr-copier": DR_COPIER,
    "mirror": MIRROR,
    "audit-export": OPERATOR,  # strata audit export under strata up (stack/local.py)
}


def enabled(settings: Settings) -> bool:
    return kafka.security(settings).sasl


# ------------------------------------------------------------------ passwords


def ensure_passwords(settings: Settings) -> dict[str, Path]:
    """A random password per principal under <home>/kafka/credentials (directory 0700, files
    0600), made once; principal -> password file."""
    d = kafka.credentials_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    out = {}
    for name in PRINCIPALS:
        f = kafka.password_file(settings, name)
        if not f.exists():
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
        out[name] = f
    return out


def as_principal(settings: Settings, user: str) -> Settings:
    """``settings`` for a process running as ``user`` (its generated password file); as
    they are when Kafka security is off."""
    if not enabled(settings):
        return settings
    return dataclasses.replace(
        settings, kafka_user=user, kafka_password_file=str(kafka.password_file(settings, user))
    )


def principal_env(settings: Settings, service: str) -> dict[str, str]:
    """The STRATA_KAFKA_* settings of a local service's process (its own principal)."""
    if not enabled(settings):
        return {}
    user = SERVICE_PRINCIPALS[service]
    return {
        "STRATA_KAFKA_USER": user,
        "STRATA_KAFKA_PASSWORD_FILE": str(kafka.password_file(settings, user)),
    }


# ------------------------------------------------------------------ broker


def keystore(settings: Settings) -> tuple[Path, Path]:
    """The broker's PEM keystore (private key + certificate of the project CA's server
    certificate, 0600) and truststore (the CA): (keystore, truststore)."""
    pki = ensure_pki(settings.home / "pki")
    d = settings.kafka_dir / "tls"
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    ks = d / "keystore.pem"
    fd = os.open(ks, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(pki.server_key.read_text() + pki.server_cert.read_text())
    return ks, pki.ca


def jaas(user: str, password: str) -> str:
    return (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f'username="{user}" password="{password}";'
    )


def broker_properties(settings: Settings) -> list[str]:
    """The security lines of a broker's server.properties (the client listener's name is
    SASL_SSL; the controller listener is SASL_PLAINTEXT on loopback with PLAIN, the admin
    alone: docs/security.md)."""
    ks, ts = keystore(settings)
    admin_pw = kafka.password_file(settings, ADMIN).read_text().strip()
    # KRaft controllers cannot use SCRAM (its credentials live in the metadata they serve):
    # PLAIN with the admin's password, the one user the controller listener knows.
    plain = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{ADMIN}" password="{admin_pw}" user_{ADMIN}="{admin_pw}";'
    )
    return [
        f"sasl.enabled.mechanisms={kafka.SCRAM_MECHANISM}",
        f"sasl.mechanism.inter.broker.protocol={kafka.SCRAM_MECHANISM}",
        f"listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config={jaas(ADMIN, admin_pw)}",
        "sasl.mechanism.controller.protocol=PLAIN",
        "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
        f"listener.name.controller.plain.sasl.jaas.config={plain}",
        "ssl.keystore.type=PEM",
        f"ssl.keystore.location={ks}",
        "ssl.truststore.type=PEM",
        f"ssl.truststore.location={ts}",
        "ssl.client.auth=none",
        "ssl.endpoint.identification.algorithm=https",
        "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        "allow.everyone.if.no.acl.found=false",
        f"super.users=User:{ADMIN}",
    ]


def format_args(settings: Settings) -> list[str]:
    """kafka-storage format arguments adding the admin's SCRAM credential (the brokers
    authenticate to each other with it before any admin request can be made)."""
    pw = kafka.password_file(settings, ADMIN).read_text().strip()
    return ["--add-scram", f"{kafka.SCRAM_MECHANISM}=[name={ADMIN},password={pw}]"]


# ------------------------------------------------------------------ ACLs


@dataclass(frozen=True)
class Grant:
    """ALLOW ``ops`` on a resource to ``principal`` (resource: topic, group, transactional_id
    or cluster; pattern literal or prefixed)."""

    principal: str
    resource: str
    name: str
    ops: tuple[str, ...]
    prefixed: bool = False


R, W, D, C, DC = "READ", "WRITE", "DESCRIBE", "CREATE", "DESCRIBE_CONFIGS"


def acl_table(settings: Settings, mirror_source: str = "") -> list[Grant]:
    """Every ACL of the archive (docs/security.md has the same table, with the reasons).
    Idempotent producers need no cluster IDEMPOTENT_WRITE since Kafka 3.0 (KIP-679: WRITE
    on a topic implies it)."""
    study, quar, dr = settings.study_topic, settings.quarantine_topic, settings.dr_topic
    audit = settings.audit_topic
    g = []

    def topic(p: str, name: str, *ops: str, prefixed: bool = False) -> None:
        g.append(Grant(p, "topic", name, ops, prefixed))

    def group(p: str, name: str, *ops: str, prefixed: bool = False) -> None:
        g.append(Grant(p, "group", name, ops or (R,), prefixed))

    # ingest: publishes arrivals (study topic) and refusals (quarantine); reads the tails
    # back after a crash (relay recovery) and the sites' epochs (fencing, docs/dr.md).
    topic(INGEST, study, W, R, D)
    topic(INGEST, quar, W, R, D)
    topic(INGEST, dr, R, D)
    topic(INGEST, audit, W, D)  # its audit events (common/audit.py)
    group(INGEST, "strata-relay-recovery", prefixed=True)
    group(INGEST, "strata-dr-read", prefixed=True)
    # DR synchronous mode (ingest/peersync.py): it reads the peer's study topic in these groups
    # (at the peer: the same principal and password, docs/security.md)
    group(INGEST, "strata-dr-sync", prefixed=True)
    # index node: reads both topics into the index (faust, its group and internal topics
    # named after STRATA_INDEX_GROUP), writes its decisions (StudyStable, tier moves, deletes,
    # access records) on the study topic; an index replica relays its own STOW outbox (study
    # and quarantine topics).
    topic(INDEX, study, R, W, D)
    topic(INDEX, quar, R, W, D)
    topic(INDEX, dr, R, D)
    topic(INDEX, audit, R, W, D)  # its readers' audit events; the audit agent indexes them
    topic(INDEX, settings.index_group, R, W, D, C, DC, prefixed=True)
    group(INDEX, settings.index_group, prefixed=True)
    for p in ("strata-index-probe", "strata-lifecycle-probe", "strata-replay", "strata-watch",
              "strata-pit", "strata-relay-recovery", "strata-read", "strata-dr-read"):  # fmt: skip
        group(INDEX, p, prefixed=True)
    # router: reads the study topic in its group, writes route-state events there.
    topic(ROUTER, study, R, W, D)
    group(ROUTER, settings.router_group)
    # DR copier: reads the (mirrored) study topic in its group, writes InstanceReplicated there.
    topic(DR_COPIER, study, R, W, D)
    group(DR_COPIER, settings.dr_copy_group)
    # operator (CLI): events (holds, redrive, emit), the sites' epochs (dr promote), reads.
    topic(OPERATOR, study, R, W, D)
    topic(OPERATOR, quar, R, D)
    topic(OPERATOR, dr, R, W, D)
    # its own audit events (reading the audit trail is audited), and 'strata audit export'
    # (processors/audit_export.py) reads the trail
    topic(OPERATOR, audit, R, W, D)
    group(OPERATOR, settings.audit_export_group)
    for p in ("strata-dr-read", "strata-dr-status", "strata-read", "strata-replay",
              "strata-pit", "strata-replay-probe"):  # fmt: skip
        group(OPERATOR, p, prefixed=True)
    group(OPERATOR, settings.dr_copy_group, D)  # dr status: the copier's committed offsets
    # MirrorMaker 2 (stack/mirror.py): at the source it reads the source-of-truth topics; at
    # the target it writes them, its own internal topics (mm2-*, heartbeats, checkpoints,
    # offset syncs) transactionally (exactly-once source), and syncs the groups' offsets.
    for spec in kafka.source_of_truth_topics(settings):
        topic(MIRROR, spec.name, R, W, D, DC)
    for t in ("mm2-", "heartbeats", f"{mirror_source or settings.dr_peer_site or 'peer'}."):
        topic(MIRROR, t, R, W, D, C, DC, prefixed=True)
    group(MIRROR, "*", R, D)  # offset sync: every group of the archive's topics
    g.append(Grant(MIRROR, "transactional_id", "*", (W, D)))
    g.append(Grant(MIRROR, "cluster", "kafka-cluster", (D, DC)))
    return g


def bindings(grants: list[Grant]) -> list[AclBinding]:
    out: list[AclBinding] = []
    for gr in grants:
        pattern = ResourcePatternType.PREFIXED if gr.prefixed else ResourcePatternType.LITERAL
        if gr.name == "*" or gr.resource == "cluster":
            pattern = ResourcePatternType.LITERAL
        for op in gr.ops:
            out.append(
                AclBinding(
                    # the cluster resource is librdkafka's BROKER (Kafka's CLUSTER, 4)
                    ResourceType["BROKER" if gr.resource == "cluster" else gr.resource.upper()],
                    gr.name,
                    pattern,
                    f"User:{gr.principal}",
                    "*",
                    AclOperation[op],
                    AclPermissionType.ALLOW,
                )
            )
    return out


def apply(settings: Settings, timeout: float = 60.0) -> None:
    """As the admin: every principal's SCRAM credential (from its password file) and the
    ACL table. Both are upserts: run on every 'strata up' (a changed password file is a
    rotation: docs/security.md)."""
    files = ensure_passwords(settings)
    a = kafka.admin(as_principal(settings, ADMIN), "security")
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    ups: list[UserScramCredentialAlteration] = [
        UserScramCredentialUpsertion(u, info, f.read_text().strip().encode())
        for u, f in files.items()
    ]
    for user, fut in a.alter_user_scram_credentials(ups, request_timeout=timeout).items():
        try:
            fut.result()
        except Exception as exc:
            raise Unavailable(f"cannot set the SCRAM credential of {user}: {exc}") from exc
    for b, fut in a.create_acls(bindings(acl_table(settings)), request_timeout=timeout).items():
        try:
            fut.result()
        except Exception as exc:
            raise Unavailable(f"cannot create ACL {b}: {exc}") from exc
