"""The faust application of the index node, built from its parts:

- processors/agents.py: the stream agents (the index projection, one agent per topic);
- processors/timers.py: the lag/stability timer and the lifecycle loop;
- processors/web.py: the HTTP pages (/healthz, /metrics, /positions, /checksums, /routes,
  /replay, /holds, /storage/locations).

``create_app`` receives its adapters (the index store, the lifecycle processor, the
authorizer) from the process wiring, cli/serve.py; ``run_worker`` runs it.
"""

from __future__ import annotations

from typing import Any

import faust

from strata.common import kafka
from strata.common.auth import Authorizer, admin_middleware
from strata.common.settings import Settings
from strata.processors.agents import add_index_agents
from strata.processors.index import audit as audit_index
from strata.processors.index.store import IndexStore
from strata.processors.lifecycle import LifecycleProcessor
from strata.processors.timers import Barrier, TimerClients, add_timers, caught_up, index_lag
from strata.processors.web import active_holds, add_pages, add_pit_page, storage_locations

__all__ = [
    "Barrier",
    "active_holds",
    "add_pit_page",
    "caught_up",
    "create_app",
    "index_lag",
    "make_worker",
    "run_worker",
    "storage_locations",
]


def create_app(
    settings: Settings,
    index: IndexStore,
    clients: TimerClients,
    lifecycle: LifecycleProcessor | None = None,
    authz: Authorizer | None = None,
) -> faust.App:
    """``clients``: the timers' Kafka probes and stability emitter (processors/timers.py)."""
    app = faust.App(
        settings.index_group,
        datadir=str(settings.node_home / "faust"),
        store="memory://",
        web_enabled=True,
        web_bind=settings.bind_host,
        web_port=settings.index_http_port,
        web_host=settings.bind_host,
        **kafka.faust_settings(settings),  # the broker, commits, session, acks (common/kafka.py)
        # Admin endpoints: loopback clients only with auth off, the admin scope with auth on
        # (common.auth); the health and metrics probes stay open.
        web_application_options={
            "middlewares": [admin_middleware(authz, open_paths=("/healthz", "/metrics"))]
        },
    )
    applied = add_index_agents(app, settings, index)
    audit_index.attach(app, settings, index)  # the audit topic -> its table, /audit
    caught_up_once = add_timers(app, settings, index, clients, lifecycle)
    add_pages(app, settings, index, applied, caught_up_once)
    return app


def run_worker(app: faust.App, on_started: Any = None) -> None:
    """Run the faust worker in this process until SIGTERM/SIGINT."""
    if on_started is not None:

        @app.task
        async def _started() -> None:
            on_started()

    make_worker(app).execute_from_commandline()


def make_worker(app: faust.App) -> faust.Worker:
    worker = faust.Worker(app, loglevel="WARN", quiet=True, redirect_stdouts=False)
    # No terminal spinner: faust would hang it on the root logger at DEBUG, and every debug
    # call of aiokafka/faust/mode (several per fetch) would then build a log record that no
    # handler prints: ~9% of the index node's CPU under ingest load (py-spy).
    worker.spinner = None
    return worker
