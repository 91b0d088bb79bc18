"""The ingest node: N worker processes sharing the DICOM port, one relay, one health/metrics
endpoint.

    node (this process) ── relay thread: outbox -> Kafka, in order
      │                 └─ HTTP /healthz, /metrics (merged from every worker)
      ├─ worker 1: C-STORE SCP (SO_REUSEPORT) -> hot tier + outbox
      └─ worker N: ...

A worker that dies (even kill -9) is restarted; what it acknowledged is already durable in the
hot tier and the outbox. SIGTERM drains: workers stop accepting and finish their associations,
then the relay publishes what is left (if Kafka is up) and the node exits.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

from strata.common.settings import Settings

if TYPE_CHECKING:
    from strata.ingest.outbox import Outbox
    from strata.ingest.peersync import Watcher
    from strata.ingest.quarantine import Quarantine
    from strata.ingest.relay import Relay
    from strata.ingest.scp import StoreServer

log = logging.getLogger("strata.ingest")


def prepare_metrics_dir(settings: Settings) -> str:
    d = settings.run_dir / "metrics-ingest"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(d)
    return str(d)


@dataclass
class NodeParts:
    """What the node process supervises, built by its bootstrap (cli/serve.py)."""

    outbox: Outbox
    relay: Relay  # started
    quarantine: Quarantine
    watcher: Watcher | None  # sync mode: the peer's confirmations (ingest/peersync.py)
    metrics_dir: str  # the workers' shared Prometheus multiprocess directory


def run_node(settings: Settings, parts: NodeParts) -> None:
    from strata.ingest import metrics

    outbox, relay, quarantine, watcher = parts.outbox, parts.relay, parts.quarantine, parts.watcher
    metrics_dir = parts.metrics_dir
    quarantine_use = [quarantine.sweep()]  # retention applied here too, every ~10 s
    n = settings.ingest_workers or os.cpu_count() or 1
    env = {**os.environ, **settings.to_env(), "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    argv = [sys.executable, "-m", "strata.cli.main", "serve", "ingest-worker"]
    workers: list[subprocess.Popen[bytes]] = [subprocess.Popen(argv, env=env) for _ in range(n)]
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    from strata.common.audit import spool_files

    def health() -> dict[str, Any]:
        alive = sum(1 for w in workers if w.poll() is None)
        age = outbox.oldest_pending_age()
        state: dict[str, Any] = {
            "workers": alive,
            "workers_wanted": n,
            "kafka_up": relay.kafka_ok,
            "outbox_depth": outbox.depth(),
            "outbox_oldest_seconds": round(age, 3),
            "outbox_set_aside": outbox.set_aside_count(),
            "quarantine_files": quarantine_use[0].files,
            "quarantine_bytes": quarantine_use[0].bytes,
            "quarantine_max_bytes": settings.quarantine_max_bytes,
            "audit_spool_files": spool_files(settings),  # audit events not yet in Kafka
        }
        if settings.dr_site:
            state["dr_mode"] = settings.dr_mode
            if watcher is not None:
                state["dr_peer_log"] = "reachable" if watcher.peer_reachable else "unreachable"
                state["dr_unconfirmed"] = _metric_total("strata_ingest_dr_unconfirmed_total")
        # Healthy = can accept and make durable. Kafka down with the spool working is
        # "degraded" (still accepting, durable locally), not unhealthy.
        state["status"] = "ok" if alive and relay.kafka_ok else ("degraded" if alive else "down")
        return state

    server = _http_server(settings, health)
    log.info(
        "ingest node: %d workers on %s:%d, health/metrics on :%d",
        n,
        settings.bind_host,
        settings.ingest_port,
        settings.ingest_http_port,
    )
    swept_at = time.monotonic()
    while not stop.is_set():
        for i, w in enumerate(workers):
            if w.poll() is not None and not stop.is_set():
                log.error("ingest worker pid=%d exited (%s); restarting", w.pid, w.returncode)
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(w.pid)
                workers[i] = subprocess.Popen(argv, env=env)
        metrics.OUTBOX_DEPTH.set(outbox.depth())
        metrics.OUTBOX_OLDEST.set(outbox.oldest_pending_age())
        metrics.KAFKA_UP.set(1 if relay.kafka_ok else 0)
        metrics.WORKERS.set(sum(1 for w in workers if w.poll() is None))
        metrics.OUTBOX_SET_ASIDE.set(outbox.set_aside_count())
        if time.monotonic() - swept_at > 10.0:
            quarantine_use[0] = quarantine.sweep()
            swept_at = time.monotonic()
        metrics.QUARANTINE_BYTES.set(quarantine_use[0].bytes)
        metrics.QUARANTINE_FILES.set(quarantine_use[0].files)
        stop.wait(0.5)

    log.info("ingest node: draining")
    for w in workers:
        if w.poll() is None:
            w.send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w.wait(timeout=settings.network_timeout + 5)
        except subprocess.TimeoutExpired:
            w.kill()
    relay.stop(drain_timeout=10.0)
    if watcher is not None:
        watcher.stop()
    server.shutdown()
    outbox.close()
    log.info("ingest node stopped (outbox depth %d)", outbox.depth())


def purge_incoming(settings: Settings) -> None:
    """Partial receptions left by a killed worker: never acknowledged, so never stored. Safe to
    remove at node start, before any worker runs."""
    incoming = incoming_dir(settings)
    if incoming.is_dir():
        for f in incoming.iterdir():
            if f.is_file():  # other nodes' spool directories live beside the files
                f.unlink(missing_ok=True)


def spool_name(settings: Settings) -> str:
    """This node's own spool directory under ``<hot>/.incoming``: STRATA_SPOOL_DIR (helm: the
    pod name), else, for one of several ingest nodes sharing the hot tier (STRATA_NODE_DIR
    set), its node directory's name; empty = ``.incoming`` itself. A node restarting purges
    only its own partial receptions."""
    if settings.spool_dir:
        return settings.spool_dir
    return settings.node_home.name if settings.node_dir else ""


def incoming_dir(settings: Settings) -> Path:
    """Where this node's workers spool receptions (see spool_name)."""
    incoming = settings.hot_dir / ".incoming"
    if name := spool_name(settings):
        incoming = incoming / name
    incoming.mkdir(parents=True, exist_ok=True)
    return incoming


def _metric_total(name: str) -> float:
    """The sum over the workers of a counter of the multiprocess directory."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return sum(s.value for m in registry.collect() for s in m.samples if s.name == name)


def sync_mode(settings: Settings) -> str:
    from strata.common.errors import Invalid

    if settings.dr_mode not in ("async", "sync"):
        raise Invalid(f"STRATA_DR_MODE must be 'async' or 'sync', not {settings.dr_mode!r}")
    return settings.dr_mode


def peer_confirmed_path(settings: Settings) -> Path:
    return settings.outbox_path.parent / "peer-confirmed.sqlite"


def _http_server(settings: Settings, health: Any) -> ThreadingHTTPServer:
    from prometheus_client import (
        CONTENT_TYPE_LATEST,
        CollectorRegistry,
        generate_latest,
        multiprocess,
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server API
            if self.path.startswith("/metrics"):
                registry = CollectorRegistry()
                multiprocess.MultiProcessCollector(registry)
                body = generate_latest(registry)
                ctype = CONTENT_TYPE_LATEST
                code = 200
            elif self.path.startswith("/healthz"):
                state = health()
                body = json.dumps(state).encode()
                ctype = "application/json"
                code = 200 if state["status"] != "down" else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer((settings.bind_host, settings.ingest_http_port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def run_worker(settings: Settings, server: StoreServer) -> None:
    """One ingest worker: serves ``server`` (the C-STORE SCP writing to the hot tier and the
    outbox, built by cli/serve.py) until SIGTERM, then drains it."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(1.0)
    # Drain: stop accepting, let running associations finish their stores, then exit.
    server.shutdown()
    deadline = time.monotonic() + settings.network_timeout
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.05)
