"""MirrorMaker 2 (dedicated mode): the peer site's source-of-truth topics into this site's Kafka.

Runs at the follower (the secondary): source = the peer (``STRATA_DR_PEER_BOOTSTRAP``), target
= this site. IdentityReplicationPolicy (topic names kept), one direction at a time; exactly-once
source support at the target (transactions) and read_committed consumers; checkpoints and group
offset sync. docs/dr.md explains why, and how the direction is switched on fail-back.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from strata.common.errors import Unavailable
from strata.common.settings import Settings
from strata.stack.maven import fetch_jars
from strata.stack.procs import Proc

POM = Path(__file__).with_name("mirror.pom.xml")
MAIN = "org.apache.kafka.connect.mirror.MirrorMaker"


def jars_dir(settings: Settings) -> Path:
    return Path.home() / ".cache" / "strata" / f"mirror-{settings.kafka_version}" / "libs"


def ensure_jars(settings: Settings) -> Path:
    """Fetch connect-mirror (same version as the broker) once from Maven Central."""
    v = settings.kafka_version
    return fetch_jars(
        POM,
        jars_dir(settings),
        f"connect-mirror-{v}.jar",
        f"MirrorMaker 2 {v}",
        {"kafka.version": v},
    )


def topics(settings: Settings) -> list[str]:
    """The topics mirrored: every source-of-truth topic (common.kafka.source_of_truth_topics)."""
    from strata.common.kafka import source_of_truth_topics

    return [t.name for t in source_of_truth_topics(settings)]


def properties(settings: Settings, source: str, target: str) -> str:
    """mm2.properties: ``source`` (the peer's name) -> ``target`` (this site's name)."""
    if not settings.dr_peer_bootstrap:
        raise Unavailable("STRATA_DR_PEER_BOOTSTRAP is not set: no peer site to follow")
    iv = settings.dr_mirror_interval_ms
    regex = "|".join(re.escape(t) for t in topics(settings))
    flow = f"{source}->{target}"
    lines = [
        f"clusters={source},{target}",
        f"{source}.bootstrap.servers={settings.dr_peer_bootstrap}",
        f"{target}.bootstrap.servers={settings.kafka_bootstrap}",
        f"{flow}.enabled=true",
        f"{flow}.topics={regex}",
        f"{target}->{source}.enabled=false",
        # Same topic names at both sites: the same processors read them; never both directions
        # at once (the identity policy cannot stop a cycle: docs/dr.md).
        "replication.policy.class=org.apache.kafka.connect.mirror.IdentityReplicationPolicy",
        # Exactly-once source at the target; only committed records of the source are read.
        f"{target}.exactly.once.source.support=enabled",
        f"{flow}.consumer.isolation.level=read_committed",
        f"{source}.consumer.isolation.level=read_committed",
        f"{flow}.consumer.auto.offset.reset=earliest",
        "emit.checkpoints.enabled=true",
        "sync.group.offsets.enabled=true",
        # Not the site-local groups: a copier's or a sync watcher's positions in the peer's log
        # are facts about the peer's own following (a peer that followed once has them), and
        # synced here they would move this site's copier past events it has not examined.
        f"{flow}.groups.exclude=console-consumer-.*, connect-.*, __.*, "
        f"{re.escape(settings.dr_copy_group)}, strata-dr-.*",
        "emit.heartbeats.enabled=true",
        "sync.topic.configs.enabled=false",  # the target created its topics itself
        "sync.topic.acls.enabled=false",
        "plugin.discovery=service_load",  # no classpath scan (tens of seconds on a busy machine)
        "refresh.topics.interval.seconds=5",
        "refresh.groups.interval.seconds=5",
        f"emit.checkpoints.interval.seconds={max(1, iv // 1000)}",
        f"sync.group.offsets.interval.seconds={max(1, iv // 1000)}",
        f"emit.heartbeats.interval.seconds={max(1, iv // 1000)}",
        f"offset.flush.interval.ms={iv}",
        "offset-syncs.topic.location=target",
        "offset.lag.max=10",
        f"{flow}.producer.linger.ms=5",
        f"{flow}.consumer.fetch.max.wait.ms={min(iv, 500)}",
        f"{flow}.producer.acks=all",
        "tasks.max=1",  # a small machine: one task
        "replication.factor=1",
        "checkpoints.topic.replication.factor=1",
        "heartbeats.topic.replication.factor=1",
        "offset-syncs.topic.replication.factor=1",
        "offset.storage.replication.factor=1",
        "status.storage.replication.factor=1",
        "config.storage.replication.factor=1",
        "dedicated.mode.enable.internal.rest=true",
        f"listeners=http://{settings.bind_host}:{settings.dr_mirror_port}",
        *_security(settings, source, target),
        "",
    ]
    return "\n".join(lines)


def _security(settings: Settings, source: str, target: str) -> list[str]:
    """SASL_SSL (SCRAM-SHA-512) to both sites' brokers as the mirror's principal, when Kafka
    security is on (docs/security.md); the password is the mirror's password file's."""
    from strata.common import kafka
    from strata.stack.kafka import security

    sec = kafka.security(security.as_principal(settings, security.MIRROR))
    if not sec.sasl:
        return []
    out = []
    for c in (source, target):
        out += [
            f"{c}.security.protocol=SASL_SSL",
            f"{c}.sasl.mechanism={kafka.SCRAM_MECHANISM}",
            f"{c}.sasl.jaas.config={security.jaas(sec.user, sec.password())}",
            f"{c}.ssl.truststore.type=PEM",
            f"{c}.ssl.truststore.location={sec.ca}",
            f"{c}.ssl.endpoint.identification.algorithm=https",
        ]
    return out


def proc(settings: Settings) -> Proc:
    return Proc("mirror", settings.run_dir, settings.log_dir)


def start(settings: Settings) -> int:
    """Start MirrorMaker 2 at this site, following the peer (this site is the target)."""
    source = settings.dr_peer_site or "peer"
    target = settings.dr_site or "local"
    libs = ensure_jars(settings)
    d = settings.home / "mirror"
    d.mkdir(parents=True, exist_ok=True)
    props = d / "mm2.properties"
    fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # may hold a password
    with os.fdopen(fd, "w") as f:
        f.write(properties(settings, source, target))
    log4j = d / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=WARN, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.org.apache.kafka.connect.mirror=INFO\n"
    )
    argv = [
        "java",
        f"-Xms{settings.dr_mirror_heap}",
        f"-Xmx{settings.dr_mirror_heap}",
        "-XX:+UseSerialGC",
        "-XX:ActiveProcessorCount=1",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        f"{libs}/*",
        MAIN,
        str(props),
        "--clusters",  # only the herders that write to this site (no disabled reverse flow)
        target,
    ]
    return proc(settings).start(argv)


def stop(settings: Settings) -> bool:
    return proc(settings).stop(grace=20.0)
