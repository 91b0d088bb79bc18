"""The embedded Kafka broker: genuine Apache Kafka (KRaft, single node) from Maven Central."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from common.errors import Unavailable
from common.settings import Settings
from stack.procs import Proc

POM = Path(__file__).with_name("pom.xml")


def jars_dir(settings: Settings) -> Path:
    return Path.home() / ".cache" / "strata" / f"kafka-{settings.kafka_version}" / "libs"


def ensure_jars(settings: Settings) -> Path:
    """Fetch the broker jars once (Maven Central), then reuse the cache."""
    libs = jars_dir(settings)
    if (libs / f"kafka_2.13-{settings.kafka_version}.jar").is_file():
        return libs
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            raise Unavailable(
                f"'{tool}' not found: the embedded Kafka broker needs Java 17+ and Maven "
                "(Debian: apt-get install default-jre-headless maven)"
            )
    print(
        f"fetching Apache Kafka {settings.kafka_version} from Maven Central (once)...",
        file=sys.stderr,
    )
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    r = subprocess.run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
            f"-Dkafka.version={settings.kafka_version}",
        ],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise Unavailable(
            f"mvn could not fetch the Kafka jars:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"
        )
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    return libs


def _properties(settings: Settings) -> str:
    host = settings.bind_host
    port = int(settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)[1])
    ctl = settings.kafka_controller_port
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@{host}:{ctl}",
            f"listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{ctl}",
            f"advertised.listeners=PLAINTEXT://{host}:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={settings.kafka_dir / 'data'}",
            # One broker: internal topics cannot have more replicas than brokers.
            "offsets.topic.replication.factor=1",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "min.insync.replicas=1",
            "default.replication.factor=1",
            "num.partitions=3",
            "group.initial.rebalance.delay.ms=0",
            # Topics are created deliberately (with their retention), never by a typo.
            "auto.create.topics.enable=false",
            "num.network.threads=2",
            "num.io.threads=4",
            # Durability: the OS page cache plus acks=all is Kafka's model; on one node we also
            # flush each message so an acknowledged event survives power loss, not just kill -9.
            "log.flush.interval.messages=1",
            "",
        ]
    )


def proc(settings: Settings) -> Proc:
    return Proc("kafka", settings.run_dir, settings.log_dir)


def start(settings: Settings) -> int:
    libs = ensure_jars(settings)
    kdir = settings.kafka_dir
    kdir.mkdir(parents=True, exist_ok=True)
    props = kdir / "server.properties"
    props.write_text(_properties(settings))
    log4j = kdir / "log4j.properties"
    log4j.write_text(
        "log4j.rootLogger=WARN, stdout\n"
        "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
        "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
        "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        "log4j.logger.kafka.server.KafkaServer=INFO\n"
        "log4j.logger.kafka.server.BrokerServer=INFO\n"
    )
    cp = f"{libs}/*"
    if not (kdir / "data" / "meta.properties").exists():
        r = subprocess.run(
            [
                "java",
                "-cp",
                cp,
                "kafka.tools.StorageTool",
                "format",
                "-t",
                _cluster_id(kdir),
                "-c",
                str(props),
                "--ignore-formatted",
            ],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise Unavailable(f"kafka storage format failed: {r.stdout}{r.stderr}")
    argv = [
        "java",
        f"-Xms{settings.kafka_heap}",
        f"-Xmx{settings.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:ActiveProcessorCount=2",
        "-Djava.awt.headless=true",
        f"-Dlog4j.configuration=file:{log4j}",
        "-cp",
        cp,
        "kafka.Kafka",
        str(props),
    ]
    return proc(settings).start(argv)


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
    from confluent_kafka.admin import AdminClient

    host, port = settings.kafka_bootstrap.split(",")[0].rsplit(":", 1)
    deadline = time.monotonic() + timeout
    p = proc(settings)
    while time.monotonic() < deadline:
        if not p.pid():
            raise Unavailable(f"Kafka broker exited; log tail:\n{p.tail()}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                pass
            md = AdminClient({"bootstrap.servers": settings.kafka_bootstrap}).list_topics(timeout=5)
            if md.brokers:
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise Unavailable(f"Kafka broker not ready after {timeout:.0f}s; log tail:\n{p.tail()}")
