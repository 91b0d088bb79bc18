"""The embedded local stack: everything on loopback, data under one directory.

up:   Kafka broker (KRaft) and, for the cold tier, Ceph (mon, osd, radosgw over HTTPS) ->
      topics -> index node (processors + query SCP) -> ingest node
down: in reverse order, each drained gracefully (ingest first, so no association is cut)

Ceph is started when STRATA_S3_ENDPOINT is empty and STRATA_LOCAL_S3 allows it ('auto': when
its Debian packages are installed); the archive's processes then get the STRATA_S3_* settings
of the started gateway. Without it the stack runs with no cold tier.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from dataclasses import dataclass
from typing import Any

from strata.common.errors import Unavailable
from strata.common.kafka import ensure_topics
from strata.common.settings import Settings
from strata.dicomnet.tls import dicom_security
from strata.stack import ceph, haproxy, nodes
from strata.stack.kafka import broker
from strata.stack.kafka import security as kafka_security
from strata.stack.procs import Proc


@dataclass(frozen=True)
class Service:
    name: str
    proc: Proc
    endpoint: str


def services(settings: Settings) -> list[Service]:
    def p(name: str) -> Proc:
        return Proc(name, settings.run_dir, settings.log_dir)

    h = settings.bind_host
    router = p("router")
    exporter = p("audit-export")
    cold: list[Service] = []
    cp = ceph.procs(settings.ceph_dir)
    # shown when wanted, or when still running (so that down stops it whatever the settings)
    if embedded_s3(settings) == "ceph" or any(p.pid() for p in cp.values()):
        cold = [
            Service("ceph-mon", cp["ceph-mon"], f"v2:127.0.0.1:{settings.ceph_mon_port}"),
            Service("ceph-osd", cp["ceph-osd"], f"127.0.0.1:{settings.ceph_osd_ports}"),
            Service(
                "ceph-rgw",
                cp["ceph-rgw"],
                f"https://127.0.0.1:{settings.ceph_rgw_port}/{settings.s3_bucket}",
            ),
        ]
    return [
        *cold,
        *[
            Service(n.name, broker.proc(settings, n), f"kafka://{n.host}:{n.port}")
            for n in broker.nodes(settings)
        ],
        *_archive_nodes(settings),
        # shown when configured, or when still running (so that down stops it)
        *(
            [Service("router", router, f"http://{h}:{settings.router_http_port}/routes")]
            if settings.router_config or router.pid()
            else []
        ),
        # the audit trail to syslog (processors/audit_export.py), when a receiver is set
        *(
            [Service("audit-export", exporter, f"syslog+tls://{settings.audit_syslog}")]
            if settings.audit_syslog or exporter.pid()
            else []
        ),
        *_dr_services(settings),
    ]


def _dr_services(settings: Settings) -> list[Service]:
    """Geo-redundancy processes (docs/dr.md), shown while running so that down stops them."""
    from strata.cli.dr import copier_proc
    from strata.stack import mirror

    m, c = mirror.proc(settings), copier_proc(settings)
    return [
        *([Service("mirror", m, f"http://127.0.0.1:{settings.dr_mirror_port}")] if m.pid() else []),
        *([Service("dr-copier", c, settings.dr_peer_grpc)] if c.pid() else []),
    ]


def _archive_nodes(settings: Settings) -> list[Service]:
    """The index and ingest node, or (issue #18) the replicas and HAProxy in front of them;
    ingest after HAProxy, so that ``down`` drains the ingest nodes first."""
    h = settings.bind_host

    def p(name: str) -> Proc:
        return Proc(name, settings.run_dir, settings.log_dir)

    qr = f"dicom://{settings.qr_ae_title}@{h}"
    ingest = f"dicom://{settings.ingest_ae_title}@{h}"
    lb = p("haproxy")
    if not nodes.enabled(settings) and not lb.pid():
        return [
            Service("index", p("index"), f"{qr}:{settings.qr_port}"),
            Service("ingest", p("ingest"), f"{ingest}:{settings.ingest_port}"),
        ]
    ns = nodes.nodes(settings)
    names = {n.name for n in ns}
    # nodes no longer configured but still running are listed too (so that down stops them)
    ns += [n for n in nodes.recorded(settings) if n.name not in names and p(n.name).pid()]
    return [
        *[Service(n.name, p(n.name), f"{qr}:{n.ports['qr']}") for n in ns if n.kind == "index"],
        Service(
            "haproxy",
            lb,
            f"{ingest}:{settings.ingest_port} {qr}:{settings.qr_port} "
            f"grpc://{h}:{settings.grpc_port} http://{h}:{settings.dicomweb_port}",
        ),
        *[
            Service(n.name, p(n.name), f"{ingest}:{n.ports['dicom']}")
            for n in ns
            if n.kind == "ingest"
        ],
    ]


def _up_nodes(settings: Settings, timeout: float) -> None:
    """Index replicas and ingest nodes, each on its own ports, then HAProxy on the public ones."""
    h = settings.bind_host
    python = sys.executable
    ns = nodes.nodes(settings, allocate=True)
    procs = {n.name: Proc(n.name, settings.run_dir, settings.log_dir) for n in ns}
    cmd = {"index": "index", "ingest": "ingest"}
    for kind in ("index", "ingest"):
        group = [n for n in ns if n.kind == kind]
        for n in group:  # all of a kind boot at once
            env = {
                **_base_env(),
                **nodes.env(settings, n),
                **kafka_security.principal_env(settings, n.kind),
            }
            procs[n.name].start([python, "-m", "strata.cli.main", "serve", cmd[kind]], env=env)
        for n in group:
            if kind == "index":
                wait_echo(h, n.ports["qr"], settings.qr_ae_title, procs[n.name], timeout)
            else:
                wait_healthy(h, n.ports["http"], n.ports["dicom"], procs[n.name], timeout)
    lb = Proc("haproxy", settings.run_dir, settings.log_dir)
    old = lb.pid()
    if not old or haproxy.changed(settings, ns):
        # HAProxy takes a server it has not checked yet for up: put only replicas in that
        # have caught up with the log (a new replica rebuilds its index from offset 0 first)
        for n in ns:
            if n.kind == "index":
                wait_caught_up(h, n.ports["http"], procs[n.name], max(timeout, 3600.0))
    if not old:
        lb.start(haproxy.argv(settings, ns))
    elif haproxy.changed(settings, ns):
        # nodes were added or removed: a new HAProxy takes over the ports (SO_REUSEPORT) and
        # tells the old one (-sf) to stop listening and finish its sessions
        lb.pid_file.unlink()
        lb.start([*haproxy.argv(settings, ns), "-sf", str(old)])
    wait_echo(h, settings.qr_port, settings.qr_ae_title, lb, timeout)
    wait_healthy(h, settings.ingest_http_port, settings.ingest_port, lb, timeout)


def up(settings: Settings, timeout: float = 120.0) -> None:
    settings.home.mkdir(parents=True, exist_ok=True)
    svc = {s.name: s for s in services(settings)}
    broker.start(settings)
    settings = start_cold_store(settings, timeout)  # while the broker boots
    broker.wait_ready(settings, timeout)
    if kafka_security.enabled(settings):  # users and ACLs first: the admin creates the topics
        kafka_security.apply(settings)
    ensure_topics(kafka_security.as_principal(settings, kafka_security.ADMIN))
    if nodes.enabled(settings):
        _up_nodes(settings, timeout)
        _up_router(settings, svc, timeout)
        _up_audit_export(settings, svc, timeout)
        return
    env = {**_base_env(), **settings.to_env()}
    python = sys.executable
    svc["index"].proc.start(
        [python, "-m", "strata.cli.main", "serve", "index"],
        env={**env, **kafka_security.principal_env(settings, "index")},
    )
    sec = dicom_security(settings)
    if sec.tls or sec.ae_checks:  # our plain, unlisted C-ECHO would be refused: /healthz
        wait_healthy(
            settings.bind_host,
            settings.index_http_port,
            settings.qr_port,
            svc["index"].proc,
            timeout,
        )
    else:
        wait_echo(
            settings.bind_host, settings.qr_port, settings.qr_ae_title, svc["index"].proc, timeout
        )
    svc["ingest"].proc.start(
        [python, "-m", "strata.cli.main", "serve", "ingest"],
        env={**env, **kafka_security.principal_env(settings, "ingest")},
    )
    # Readiness through /healthz, not C-ECHO: the calling-AE allow-list may refuse our probe.
    wait_healthy(
        settings.bind_host,
        settings.ingest_http_port,
        settings.ingest_port,
        svc["ingest"].proc,
        timeout,
    )
    _up_router(settings, svc, timeout)
    _up_audit_export(settings, svc, timeout)


def _up_router(settings: Settings, svc: dict[str, Service], timeout: float) -> None:
    if settings.router_config:
        env = {
            **_base_env(),
            **settings.to_env(),
            **kafka_security.principal_env(settings, "router"),
        }
        svc["router"].proc.start(
            [sys.executable, "-m", "strata.cli.main", "serve", "router"], env=env
        )
        wait_router(settings.bind_host, settings.router_http_port, svc["router"].proc, timeout)


def _up_audit_export(settings: Settings, svc: dict[str, Service], timeout: float) -> None:
    """``strata audit export`` as a service of the stack when STRATA_AUDIT_SYSLOG names a
    receiver: its own process, pid file and log like the others (``down`` stops it, ``status``
    shows it), under the operator's Kafka principal (the ACLs give it the audit topic and
    STRATA_AUDIT_EXPORT_GROUP). Ready once it has its consumer and logged its destination; a
    receiver that is down is retried by the exporter itself (with backoff), not an error here."""
    if not settings.audit_syslog:
        return
    proc = svc["audit-export"].proc
    env = {
        **_base_env(),
        **settings.to_env(),
        **kafka_security.principal_env(settings, "audit-export"),
    }
    if proc.pid():
        return  # already running (up twice)
    start = proc.log_file.stat().st_size if proc.log_file.exists() else 0
    proc.start([sys.executable, "-m", "strata.cli.main", "audit", "export"], env=env)
    wait_logged(proc, start, "exporting the audit trail to", timeout)


def wait_logged(proc: Proc, offset: int, marker: str, timeout: float) -> None:
    """Until ``proc``'s log, past ``offset``, holds ``marker`` (the process says it is ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError), open(proc.log_file, "rb") as f:
            f.seek(offset)
            if marker.encode() in f.read():
                return
        if not proc.pid():
            raise Unavailable(f"{proc.name} exited during start-up; log tail:\n{proc.tail(30)}")
        time.sleep(0.2)
    raise Unavailable(f"{proc.name} not ready within {timeout:.0f}s:\n{proc.tail(30)}")


def embedded_s3(settings: Settings) -> str:
    """The object store ``up`` starts for the cold tier: "ceph" or "none"."""
    mode = settings.local_s3.strip().lower()
    if mode not in ("auto", "ceph", "none"):
        raise ValueError(f"STRATA_LOCAL_S3={settings.local_s3!r}: expected auto, ceph or none")
    if settings.s3_endpoint or mode == "none":
        return "none"  # an S3 endpoint is configured (or none wanted): start nothing
    if mode == "auto" and not ceph.installed():
        return "none"
    return "ceph"


def start_cold_store(settings: Settings, timeout: float = 180.0) -> Settings:
    """Start the embedded Ceph if wanted; return the settings pointing the archive at it."""
    if embedded_s3(settings) != "ceph":
        if not settings.s3_endpoint and settings.local_s3.strip().lower() == "auto":
            print(
                "Ceph is not installed: running without a cold tier "
                f"(to have one: apt-get install {ceph.DEBIAN_PACKAGES})",
                file=sys.stderr,
            )
        return settings
    lo, _, hi = settings.ceph_osd_ports.partition("-")
    h = ceph.start(
        settings.ceph_dir,
        mon_port=settings.ceph_mon_port,
        rgw_port=settings.ceph_rgw_port,
        osd_ports=(int(lo), int(hi or lo)),
        bucket=settings.s3_bucket,
        timeout=timeout,
    )
    return dataclasses.replace(
        settings,
        s3_endpoint=h.endpoint,
        s3_access_key=h.access_key,
        s3_secret_key=h.secret_key,
        s3_bucket=h.bucket,
        s3_ca_bundle=str(h.ca_path),
        s3_region=h.region,
    )


def down(settings: Settings) -> list[str]:
    stopped: list[str] = []
    kafka = {n.name for n in broker.nodes(settings)}
    for s in reversed(services(settings)):
        if s.name in kafka:
            if s.name == min(kafka):  # every node, in order, with a kill -9 fallback: a node
                stopped += broker.stop(settings)  # without quorum may ignore SIGTERM
            continue
        if s.proc.stop(grace=60.0):
            stopped.append(s.name)
    return stopped


def status(settings: Settings) -> list[tuple[str, str, str, str]]:
    rows = []
    for s in services(settings):
        pid = s.proc.pid()
        rows.append((s.name, "running" if pid else "stopped", str(pid or "-"), s.endpoint))
    return rows


def echo(host: str, port: int, ae_title: str) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="STRATA_CLI")
    ae.add_requested_context(Verification)
    ae.acse_timeout = 5
    ae.network_timeout = 5
    from strata.common.pynet import open_association

    assoc = open_association(ae, host, port, ae_title)
    if not assoc.is_established:
        return False
    try:
        st = assoc.send_c_echo()
        return bool(st) and st.Status == 0
    finally:
        assoc.release()


def wait_echo(host: str, port: int, ae_title: str, proc: Proc, timeout: float) -> None:
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.pid():
            raise Unavailable(f"{proc.name} exited during start-up; log tail:\n{proc.tail(30)}")
        try:
            if echo(host, port, ae_title):
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise Unavailable(f"{proc.name} did not answer C-ECHO within {timeout:.0f}s:\n{proc.tail(30)}")


def log_status(settings: Settings) -> list[list[object]]:
    """Per topic: log end, indexed position and lag of the index; the ingest outbox depth."""
    from strata.processors.replay import end_positions

    try:
        indexed = index_positions(settings.bind_host, settings.index_http_port, settings.token)
        if indexed is None:
            return []
        ends = end_positions(settings, [settings.study_topic, settings.quarantine_topic])
    except Exception:
        return []
    ing = health(settings.bind_host, settings.ingest_http_port) or {}
    rows: list[list[object]] = []
    for topic, parts in ends.items():
        end = sum(parts.values())
        done = sum(min(int(indexed.get(topic, {}).get(str(p), 0)), o) for p, o in parts.items())
        rows.append(
            [
                topic,
                end,
                done,
                end - done,
                ing.get("outbox_depth", "-") if topic == settings.study_topic else "",
            ]
        )
    return rows


def index_positions(host: str, http_port: int, token: str) -> dict[str, Any] | None:
    """An index node's applied log positions (its /positions), or None if it does not answer."""
    import json
    import urllib.request

    from strata.common.auth import bearer_request

    try:
        url = f"http://{host}:{http_port}/positions"
        with urllib.request.urlopen(bearer_request(url, token), timeout=5) as r:
            return dict(json.loads(r.read()))
    except Exception:  # noqa: BLE001 - down, refusing or not yet serving: no position
        return None


def health(host: str, http_port: int) -> dict[str, object] | None:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{host}:{http_port}/healthz", timeout=2) as r:
            return dict(json.loads(r.read()))
    except Exception:
        return None


def wait_healthy(host: str, http_port: int, dicom_port: int, proc: Proc, timeout: float) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.pid():
            raise Unavailable(f"{proc.name} exited during start-up; log tail:\n{proc.tail(30)}")
        h = health(host, http_port)
        if h and h.get("workers") == h.get("workers_wanted"):
            try:
                with socket.create_connection((host, dicom_port), timeout=1):
                    return
            except OSError:
                pass
        time.sleep(0.2)
    raise Unavailable(f"{proc.name} not healthy within {timeout:.0f}s:\n{proc.tail(30)}")


def wait_caught_up(host: str, http_port: int, proc: Proc, timeout: float) -> None:
    """Until an index replica's /healthz says ok (503 'catching-up' until then)."""
    deadline = time.monotonic() + timeout
    said = False
    while time.monotonic() < deadline:
        if not proc.pid():
            raise Unavailable(f"{proc.name} exited during start-up; log tail:\n{proc.tail(30)}")
        h = health(host, http_port)
        if h and h.get("status") == "ok":
            return
        if not said and time.monotonic() > deadline - timeout + 5:
            print(f"{proc.name}: catching up with the log ...", file=sys.stderr)
            said = True
        time.sleep(0.5)
    raise Unavailable(f"{proc.name} did not catch up within {timeout:.0f}s:\n{proc.tail(30)}")


def wait_router(host: str, http_port: int, proc: Proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.pid():
            raise Unavailable(f"{proc.name} exited during start-up; log tail:\n{proc.tail(30)}")
        if health(host, http_port):
            return
        time.sleep(0.2)
    raise Unavailable(f"{proc.name} not healthy within {timeout:.0f}s:\n{proc.tail(30)}")


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
