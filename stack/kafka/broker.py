"""The embedded Kafka: genuine Apache Kafka (KRaft) from Maven Central, one node by default or
a cluster of STRATA_KAFKA_NODES broker+controller nodes (docs/ha.md)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from strata.common.errors import Invalid, Unavailable
from strata.common.settings import Settings
from strata.stack.kafka import security
from strata.stack.maven import fetch_jars
from strata.stack.procs import Proc

POM = Path(__file__).with_name("pom.xml")


def jars_dir(settings: Settings) -> Path:
    return Path.home() / ".cache" / "strata" / f"kafka-{settings.kafka_version}" / "libs"


def ensure_jars(settings: Settings) -> Path:
    """Fetch the broker jars once (Maven Central), then reuse the cache."""
    v = settings.kafka_version
    return fetch_jars(
        POM, jars_dir(settings), f"kafka_2.13-{v}.jar", f"Apache Kafka {v}", {"kafka.version": v}
    )


@dataclass(frozen=True)
class Node:
    """One local Kafka node (broker+controller). A single node keeps the embedded layout
    (<home>/kafka, run/kafka.pid); the nodes of a cluster are kafka-1, kafka-2, ..."""

    node_id: int
    name: str
    host: str
    port: int
    controller_port: int
    dir: Path


def nodes(settings: Settings) -> list[Node]:
    n = settings.kafka_nodes
    addrs = [a.strip() for a in settings.kafka_bootstrap.split(",") if a.strip()]
    if n < 1:
        raise Invalid(f"STRATA_KAFKA_NODES={n}: at least one node")
    if n > 1 and len(addrs) != n:
        raise Invalid(
            f"STRATA_KAFKA_NODES={n} needs one host:port per node in STRATA_KAFKA_BOOTSTRAP "
            f"(got {settings.kafka_bootstrap!r})"
        )
    if settings.kafka_controller_ports.strip():
        ctl = [int(p) for p in settings.kafka_controller_ports.split(",") if p.strip()]
        if len(ctl) != n:
            raise Invalid(
                f"STRATA_KAFKA_CONTROLLER_PORTS lists {len(ctl)} ports for {n} Kafka nodes"
            )
    else:
        ctl = [settings.kafka_controller_port + i for i in range(n)]
    if n == 1:
        host, port = addrs[0].rsplit(":", 1)
        return [Node(1, "kafka", settings.bind_host, int(port), ctl[0], settings.kafka_dir)]
    out = []
    for i, addr in enumerate(addrs):
        _, port = addr.rsplit(":", 1)
        out.append(
            Node(
                i + 1,
                f"kafka-{i + 1}",
                settings.bind_host,
                int(port),
                ctl[i],
                settings.kafka_dir / f"node-{i + 1}",
            )
        )
    return out


def _properties(settings: Settings, node: Node) -> str:
    all_nodes = nodes(settings)
    cluster = len(all_nodes) > 1
    host = node.host
    rf = settings.topic_replicas
    isr = min(2, rf)
    voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in all_nodes)
    sasl = security.enabled(settings)
    ln = "SASL_SSL" if sasl else "PLAINTEXT"
    lines = [
        "process.roles=broker,controller",
        f"node.id={node.node_id}",
        f"controller.quorum.voters={voters}",
        # The client listener: PLAINTEXT, or SASL_SSL (SCRAM-SHA-512) with ACLs when Kafka
        # security is on (stack/kafka/security.py); the brokers talk to each other on it too.
        f"listeners={ln}://{host}:{node.port},CONTROLLER://{host}:{node.controller_port}",
        f"advertised.listeners={ln}://{host}:{node.port}",
        "controller.listener.names=CONTROLLER",
        f"inter.broker.listener.name={ln}",
        f"listener.security.protocol.map={ln}:{ln},CONTROLLER:{'SASL_' if sasl else ''}PLAINTEXT",
        f"log.dirs={node.dir / 'data'}",
        # Internal topics cannot have more replicas than brokers; on a cluster they get the
        # source-of-truth topics' guarantees (3 replicas, 2 in sync for a write).
        f"offsets.topic.replication.factor={rf}",
        f"transaction.state.log.replication.factor={rf}",
        f"transaction.state.log.min.isr={isr}",
        f"min.insync.replicas={isr}",
        f"default.replication.factor={rf}",
        # A replica that was out of sync never becomes leader: no silent loss of acked writes.
        "unclean.leader.election.enable=false",
        "num.partitions=3",
        "group.initial.rebalance.delay.ms=0",
        # Topics are created deliberately (with their retention), never by a typo.
        "auto.create.topics.enable=false",
        "num.network.threads=2",
        f"num.io.threads={2 if cluster else 4}",
    ]
    if cluster:
        # Small nodes (three share one machine): measured 350-410 MB resident each.
        lines += [
            "num.recovery.threads.per.data.dir=1",
            "log.cleaner.threads=1",
            "num.replica.fetchers=1",
            "background.threads=2",
            # A dead broker stalls the log's writes until the controller fences it (its
            # partitions get new leaders; broker.session.timeout.ms, 9 s by default) and until
            # it leaves the ISRs it was a follower in (acks=all waits for it): 10 s here
            # instead of the default 30 s. Shorter (4 s and 5 s) was tried: on a heavily
            # loaded shared machine a restarted broker then did not get back into every ISR
            # within 2 minutes (docs/ha.md).
            "replica.lag.time.max.ms=10000",
        ]
    if settings.kafka_flush_each_message:
        # Durability: the OS page cache plus acks=all is Kafka's model; while the replicas
        # share one machine (the local stack) we also flush each message, so that an
        # acknowledged event survives power loss, not just kill -9 (docs/ha.md).
        lines.append("log.flush.interval.messages=1")
    if sasl:
        lines += security.broker_properties(settings)
    return "\n".join([*lines, ""])


def proc(settings: Settings, node: Node | None = None) -> Proc:
    return Proc(node.name if node else "kafka", settings.run_dir, settings.log_dir)


def procs(settings: Settings) -> list[Proc]:
    return [proc(settings, n) for n in nodes(settings)]


def start(settings: Settings) -> list[int]:
    """Start every local Kafka node (those already running are left as they are)."""
    libs = ensure_jars(settings)
    settings.kafka_dir.mkdir(parents=True, exist_ok=True)
    if security.enabled(settings):
        security.ensure_passwords(settings)
    cluster_id = _cluster_id(settings.kafka_dir)
    return [_start_node(settings, n, libs, cluster_id) for n in nodes(settings)]


def _start_node(settings: Settings, node: Node, libs: Path, cluster_id: str) -> int:
    kdir = node.dir
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    # 0600: with Kafka security on it holds the admin's password (the brokers' logins)
    fd = os.open(props, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(_properties(settings, node))
    os.chmod(props, 0o600)  # one written before by an older version
    log4j = kdir / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=WARN, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka.server.KafkaServer=INFO\n"
        "log4j.logger.kafka.server.BrokerServer=INFO\n"
        # Requests the ACLs refuse (allowed ones are logged at DEBUG only): docs/security.md
        "log4j.logger.kafka.authorizer.logger=INFO\n"
    )
    cp = f"{libs}/*"
    p = proc(settings, node)
    if p.pid():
        return int(p.pid() or 0)
    if not (kdir / "data" / "meta.properties").exists():
        r = subprocess.run(
            [
                "java",
                "-cp",
                cp,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
                "--ignore-formatted",
                *(security.format_args(settings) if security.enabled(settings) else []),
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise Unavailable(f"kafka storage format failed: {r.stdout}{r.stderr}")
    heap = settings.kafka_heap
    jvm = ["-XX:+UseG1GC", "-XX:ActiveProcessorCount=2"]
    if len(nodes(settings)) > 1:
        heap = settings.kafka_cluster_heap
        jvm += ["-XX:MaxGCPauseMillis=20", "-XX:MaxMetaspaceSize=128m"]
    argv = [
        "java",
        f"-Xms{heap}",
        f"-Xmx{heap}",
        *jvm,
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        cp,
        "kafka.Kafka",
        str(props),
    ]
    return p.start(argv)


def stop(settings: Settings, grace: float = 60.0) -> list[str]:
    """Stop every local Kafka node; returns the names stopped. On a cluster the last nodes
    have no controller quorum left and may ignore SIGTERM for long: after ``grace`` seconds
    (20 s on a cluster) they are killed (their log is flushed per message, or replicated)."""
    stopped = []
    ns = nodes(settings)
    wait = grace if len(ns) == 1 else min(grace, 20.0)
    for n in ns:
        if proc(settings, n).stop(grace=wait):
            stopped.append(n.name)
    return stopped


def _cluster_id(kdir: Path) -> str:
    f = kdir / "cluster.id"
    cid = f.read_text().strip() if f.exists() else ""
    # KRaft cluster ids are 16 random bytes, base64url without padding (22 chars). One that
    # starts with '-' is read as an option by the storage tool (about 1 start in 64 failed, and
    # kept failing with the id saved): draw again, as Kafka's own Uuid.randomUuid() does.
    while not cid or cid.startswith("-"):
        import base64

        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    f.write_text(cid)
    return cid


def wait_ready(settings: Settings, timeout: float = 60.0) -> None:
    """Until every local node is registered as a broker of the cluster."""
    from strata.common import kafka

    ns = nodes(settings)
    admin = security.as_principal(settings, security.ADMIN)
    deadline = time.monotonic() + timeout
    ps = [proc(settings, n) for n in ns]
    while time.monotonic() < deadline:
        for p in ps:
            if not p.pid():
                raise Unavailable(f"Kafka node {p.name} exited; log tail:\n{p.tail()}")
        try:
            for n in ns:
                with socket.create_connection((n.host, n.port), timeout=1):
                    pass
            md = kafka.admin(admin, "wait-ready").list_topics(timeout=5)
            if len(md.brokers) >= len(ns):
                return
        except Exception:
            pass
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n{p.tail()}" for p in ps)
    raise Unavailable(f"Kafka not ready after {timeout:.0f}s; log tails:\n{tails}")
