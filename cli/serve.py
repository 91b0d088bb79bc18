"""Process entry points of the archive's services (run by ``strata up`` or by an operator).

This is the one place that wires adapters to services (the bootstrap of each process).
"""

from __future__ import annotations

import logging

from common.settings import Settings

log = logging.getLogger("strata")


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pynetdicom logs identifiers (patient data) at INFO/DEBUG: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def serve_ingest(settings: Settings) -> None:
    """The ingest node: workers (C-STORE SCP), relay (outbox -> Kafka), health and metrics."""
    from ingest.node import run_node

    _logging()
    run_node(settings)


def serve_ingest_worker(settings: Settings) -> None:
    from ingest.node import run_worker

    _logging()
    run_worker(settings)


def serve_index(settings: Settings) -> None:
    """The index node: faust processors materializing the index, and the query SCP reading it.
    Both live in this process because it owns the embedded index (chDB allows one process)."""
    from processors.app import create_app, run_worker
    from processors.index.store import IndexStore
    from query.retrieve import HotSource, install_raw_send, parse_destinations
    from query.scp import build_ae, handlers

    _logging()
    index = IndexStore(settings.index_dsn, settings.clickhouse_database)
    index.migrate()
    app = create_app(settings, index)
    install_raw_send()
    source = HotSource(settings.hot_dir)
    destinations = parse_destinations(settings.move_destinations)
    ae = build_ae(settings.qr_ae_title)

    from query.grpc_service import Deps
    from query.grpc_service import serve as serve_grpc

    grpc_server: list[object] = []

    from ingest.node import build_store_service
    from query.dicomweb import WebDeps, serve_in_thread
    from query.dicomweb import create_app as create_web

    stow = build_store_service(settings)  # STOW-RS: the same store contract as C-STORE

    def start_qr() -> None:
        serve_in_thread(
            create_web(
                WebDeps(
                    index,
                    source,
                    stow,
                    stow.tier.incoming,  # type: ignore[attr-defined]
                    settings.dicomweb_cors_origins,
                    settings.find_limit,
                ),
                settings.dicomweb_prefix,
            ),
            settings.bind_host,
            settings.dicomweb_port,
        )
        grpc_server.append(
            serve_grpc(
                Deps(
                    index,
                    source,
                    settings.kafka_bootstrap,
                    [settings.study_topic, settings.quarantine_topic],
                ),
                settings.bind_host,
                settings.grpc_port,
            )
        )
        ae.start_server(
            (settings.bind_host, settings.qr_port),
            block=False,
            evt_handlers=handlers(index, settings.find_limit, source, destinations),
        )
        log.info(
            "query SCP %s listening on %s:%d",
            settings.qr_ae_title,
            settings.bind_host,
            settings.qr_port,
        )

    try:
        run_worker(app, on_started=start_qr)
    finally:
        ae.shutdown()
        index.close()
