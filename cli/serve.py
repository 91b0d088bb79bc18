"""Process entry points of the archive's services (run by ``strata up`` or by an operator).

This is the one place that wires adapters to services (the bootstrap of each process).
"""

from __future__ import annotations

import logging
import signal
import threading
import time

from common.settings import Settings

log = logging.getLogger("strata")


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pynetdicom logs identifiers (patient data) at INFO/DEBUG: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


def serve_ingest(settings: Settings) -> None:
    """The ingest node: C-ECHO/C-STORE SCP writing to the hot tier and publishing events."""
    from archive.hot import HotTier
    from common.kafka import EventPublisher
    from ingest.scp import build_ae, configure_receive, handlers
    from ingest.store import StoreService

    _logging()
    hot = HotTier(settings.hot_dir)
    configure_receive(hot.incoming)
    publisher = EventPublisher(settings)
    service = StoreService(hot, publisher, settings.study_topic, settings.node_name)
    ae = build_ae(
        settings.ingest_ae_title,
        settings.max_pdu,
        {
            "network": settings.network_timeout,
            "acse": settings.acse_timeout,
            "dimse": settings.dimse_timeout,
        },
    )
    server = ae.start_server(
        (settings.bind_host, settings.ingest_port), block=False, evt_handlers=handlers(service)
    )
    log.info(
        "ingest SCP %s listening on %s:%d",
        settings.ingest_ae_title,
        settings.bind_host,
        settings.ingest_port,
    )
    _wait_for_signal()
    # Drain: stop accepting, let running associations finish their stores, then close.
    server.shutdown()
    deadline = time.monotonic() + settings.network_timeout
    while server.active_associations and time.monotonic() < deadline:
        time.sleep(0.1)
    publisher.close()
    log.info("ingest SCP stopped")


def serve_index(settings: Settings) -> None:
    """The index node: faust processors materializing the index, and the query SCP reading it.
    Both live in this process because it owns the embedded index (chDB allows one process)."""
    from processors.app import create_app, run_worker
    from processors.index.store import IndexStore
    from query.scp import build_ae, handlers

    _logging()
    index = IndexStore(settings.index_dsn, settings.clickhouse_database)
    index.migrate()
    app = create_app(settings, index)
    ae = build_ae(settings.qr_ae_title)

    def start_qr() -> None:
        ae.start_server(
            (settings.bind_host, settings.qr_port),
            block=False,
            evt_handlers=handlers(index, settings.find_limit),
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


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.is_set():
        stop.wait(1.0)
