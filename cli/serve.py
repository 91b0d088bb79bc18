"""Process entry points of the archive's services (run by ``strata up`` or by an operator).

This is the one place that wires adapters to services (the bootstrap of each process).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from strata.common.settings import Settings

log = logging.getLogger("strata")


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # pynetdicom logs identifiers (patient data) at INFO/DEBUG: keep it to warnings.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


# ---------------------------------------------------------------------------- ingest


def serve_ingest(settings: Settings) -> None:
    """The ingest node: workers (C-STORE SCP), relay (outbox -> Kafka), health and metrics."""
    from strata.ingest.node import NodeParts, prepare_metrics_dir, purge_incoming, run_node

    _logging()
    metrics_dir = prepare_metrics_dir(settings)  # before prometheus_client is imported
    from strata.ingest import metrics
    from strata.ingest.outbox import Outbox
    from strata.ingest.relay import Relay

    purge_incoming(settings)  # partial receptions of killed workers: never acknowledged
    outbox = Outbox(settings.outbox_path)
    relay = Relay(
        outbox,
        settings,
        on_published=metrics.PUBLISHED.inc,
        on_set_aside=metrics.SET_ASIDE.inc,
    )
    relay.start()
    parts = NodeParts(
        outbox, relay, build_quarantine(settings), _dr_sync_watcher(settings), metrics_dir
    )
    run_node(settings, parts)


def serve_ingest_worker(settings: Settings) -> None:
    """One worker of the ingest node: the C-STORE SCP over the store feature."""
    from strata.common import audit
    from strata.dicomnet.tls import acceptor_security
    from strata.ingest.node import incoming_dir, run_worker
    from strata.ingest.scp import StoreServer

    _logging()
    audit.configure(settings, "ingest")  # this worker's audit emitter (common/audit.py)
    try:
        service = build_store_service(settings)
        server = StoreServer(
            acceptor_config(
                settings,
                settings.max_associations,
                acceptor_security(settings, service.aes, settings.ingest_ae_title),
            ),
            service,
            incoming_dir(settings),
            (settings.bind_host, settings.ingest_port),
        )
        run_worker(settings, server)
    finally:
        audit.close()


def acceptor_config(settings: Settings, max_associations: int, security: dict[str, Any]) -> Any:
    """A DICOM SCP's acceptor configuration (dicomnet/acceptor.py): the network limits of the
    settings, ``max_associations`` and the ``security`` fields (dicomnet/tls.py)."""
    from strata.dicomnet.acceptor import Config

    return Config(
        max_pdu=settings.max_pdu,
        network_timeout=settings.network_timeout,
        acse_timeout=settings.acse_timeout,
        max_associations=max_associations,
        max_per_peer=settings.max_associations_per_peer,
        artim_timeout=settings.artim_timeout,
        pdu_timeout=settings.pdu_timeout,
        **security,
    )


def build_quarantine(settings: Settings) -> Any:
    """The quarantine of this home (its quota and retention)."""
    from strata.ingest.quarantine import Quarantine

    return Quarantine(
        settings.quarantine_dir,
        max_bytes=settings.quarantine_max_bytes,
        retention_s=settings.quarantine_retention_days * 86400.0,
    )


def build_store_service(settings: Settings) -> Any:
    """The store feature wired to this node's hot tier, outbox and configuration (used by the
    C-STORE workers and by STOW-RS: one contract for both)."""
    from strata.archive.hot import HotTier
    from strata.ingest import config
    from strata.ingest.node import spool_name
    from strata.ingest.outbox import Outbox
    from strata.ingest.store import Limits, StoreService

    return StoreService(
        tier=HotTier(settings.hot_dir, spool_name(settings)),
        outbox=Outbox(settings.outbox_path),
        topic=settings.study_topic,
        quarantine_topic=settings.quarantine_topic,
        quarantine_dir=settings.quarantine_dir,
        node=settings.node_name,
        aes=config.load(settings.ae_config),
        limits=Limits(
            max_object_bytes=settings.max_object_bytes,
            refuse_when_log_down=settings.outbox_mode == "refuse",
            refuse_after_s=settings.outbox_refuse_after,
            max_outbox_depth=settings.outbox_max_depth,
            event_element_max_bytes=settings.event_element_max_bytes,
            event_header_max_bytes=settings.event_header_max_bytes,
            max_inflated_bytes=settings.max_inflated_bytes,
        ),
        cold=_cold_tier(settings),
        quarantine=build_quarantine(settings),
        fence=_dr_fence(settings),
        sync=_dr_sync_gate(settings),
    )


def _dr_sync_gate(settings: Settings) -> Any:
    """Sync mode: what an acknowledgement waits on (the peer's confirmation)."""
    from strata.ingest.node import peer_confirmed_path, sync_mode

    if not settings.dr_site or sync_mode(settings) != "sync":
        return None
    from strata.ingest.peersync import Confirmations, Gate

    return Gate(
        Confirmations(peer_confirmed_path(settings)),
        settings.dr_sync_timeout,
        settings.dr_peer_site,
    )


def _dr_fence(settings: Settings) -> Any:
    """Geo-redundancy: a site that is not the primary of the latest epoch refuses ingest."""
    if not settings.dr_site:
        return None
    from strata.cli.dr import Fence

    return Fence(settings)


def _cold_tier(settings: Settings) -> Any:
    """The cold tier when configured (asked only whether a duplicate's object is there)."""
    if not settings.s3_endpoint:
        return None
    from strata.archive.cold import build_cold_tier

    return build_cold_tier(settings)


def _dr_sync_watcher(settings: Settings) -> Any:
    """Sync mode: the node's one watcher of the peer's confirmations (ingest/peersync.py)."""
    from strata.ingest.node import peer_confirmed_path, sync_mode

    if not settings.dr_site or sync_mode(settings) != "sync":
        return None
    from strata.ingest.peersync import Confirmations, Watcher

    w = Watcher(settings, Confirmations(peer_confirmed_path(settings)))
    w.start()
    return w


# ---------------------------------------------------------------------------- router


def serve_router(settings: Settings, stop: threading.Event | None = None) -> None:
    """The router: routing rules over the study log, forwarding to destination AEs."""
    import signal

    _logging()
    if not settings.router_config:
        raise SystemExit("STRATA_ROUTER_CONFIG is not set: no routing rules to run")
    from strata.archive import transcode

    transcode.configure(settings.transcode_workers)
    router, config, http = build_router(settings)
    stop = stop or threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info(
        "router: %d rules (%s), %d destinations, /healthz on %s:%d",
        len(config.rules),
        config.semantics,
        len(config.destinations),
        settings.bind_host,
        settings.router_http_port,
    )
    from strata.cli.dr import Role

    role = Role(settings)  # geo-redundancy: only the primary site routes (docs/dr.md)
    try:
        router.run(stop, role.primary if settings.dr_site else None)
    finally:
        http.shutdown()


def build_router(settings: Settings) -> tuple[Any, Any, Any]:
    """The router process's adapters and service: its rules, the tiers it reads objects from,
    the Router (processors/router/service.py) and its HTTP server."""
    from strata.archive.cold import build_cold_tier
    from strata.archive.recall import RecallCache
    from strata.archive.source import TieredSource
    from strata.common.auth import from_settings as auth_from_settings
    from strata.processors.router import sender
    from strata.processors.router.rules import load
    from strata.processors.router.service import Router, serve_http
    from strata.proto.strata.v1 import events_pb2 as pb

    config = load(settings.router_config)
    # Whichever tier holds the object now: hot in place, cold through a recall cache of the
    # router's own (keys are the same in every tier, so a location decided before a tier move
    # is still found). Reads for forwarding are not study accesses (no lifecycle effect).
    cold = build_cold_tier(settings)
    source = TieredSource(
        settings.hot_dir,
        {"cold": cold} if cold is not None else {},
        RecallCache(settings.home / "router" / "recall-cache", 1 << 30),
        "router",
    )

    def local_path(inst: pb.RoutedInstance) -> Path:
        return source.local_path(sender.located(inst))

    router = Router(
        settings,
        settings.study_topic,
        settings.router_group,
        config,
        local_path,
        settings.node_name,
    )
    authz = auth_from_settings(settings)
    http = serve_http(router, settings.bind_host, settings.router_http_port, authz)
    return router, config, http


def serve_index(settings: Settings) -> None:
    """The index node: faust processors materializing the index, and every reader of it (the
    Q/R SCP, gRPC, DICOMweb with STOW and the viewer). They share this process because it owns
    the embedded index (chDB allows one process per data path)."""
    from strata.common import audit
    from strata.common.auth import from_settings as auth_from_settings
    from strata.dicomnet.tls import acceptor_security, move_tls_contexts
    from strata.ingest.config import load as load_ae_config
    from strata.ingest.stow import Stow
    from strata.processors.app import create_app, run_worker
    from strata.processors.index.store import IndexStore
    from strata.query.dicomweb import WebDeps, add_viewer, serve_in_thread
    from strata.query.dicomweb import create_app as create_web
    from strata.query.grpc_service import Deps
    from strata.query.grpc_service import serve as serve_grpc
    from strata.query.retrieve import parse_destinations
    from strata.query.scp import QueryServer, Services
    from strata.stack import viewer

    _logging()
    audit.configure(settings, "index")  # the readers' audit emitter (common/audit.py)
    authz = auth_from_settings(settings)  # None with STRATA_AUTH_MODE=off
    index = IndexStore(settings.index_dsn, settings.clickhouse_database)
    index.migrate()
    from strata.cli.dr import Role

    # geo-redundancy: only the primary site's index node writes decisions (docs/dr.md)
    role = Role(settings)
    lifecycle, source = _tiers(settings, role.primary)
    app = create_app(settings, index, _timer_clients(settings, lifecycle, role), lifecycle, authz)
    destinations = parse_destinations(settings.move_destinations)
    qr_server: list[QueryServer] = []
    # STOW-RS: the same store contract as C-STORE, into the outbox of this home, which the
    # ingest node's relay publishes (the local stack). Off where no relay reads it (helm).
    stow = None
    if settings.stow_enabled:
        store = build_store_service(settings)
        stow = Stow(
            store,
            store.tier.incoming,  # type: ignore[attr-defined]
            max_part_bytes=settings.stow_max_part_bytes,
            max_parts=settings.stow_max_parts,
        )
    relay = _replica_relay(settings)
    viewer_dist = Path(settings.viewer_dir) if settings.viewer_dir else viewer.installed()
    grpc_server: list[Any] = []
    sql_pool: list[Any] = []

    def start_readers() -> None:
        web_app = create_web(
            WebDeps(
                index,
                source.with_via("dicomweb"),
                settings.dicomweb_cors_origins,
                settings.find_limit,
                query_timeout=settings.query_timeout,
                max_frames=settings.wado_max_frames,
            ),
            settings.dicomweb_prefix,
            authz,
            stow=stow,
        )
        if viewer_dist is not None:
            oidc = None
            if authz is not None:  # the viewer logs in at the provider (code + PKCE)
                scope = f"openid {settings.oidc_scope_read} {settings.oidc_scope_write}"
                oidc = viewer.oidc_config(settings.oidc_issuer, settings.oidc_client_id, scope)
            add_viewer(web_app, viewer_dist, settings.dicomweb_prefix, oidc)
        serve_in_thread(web_app, settings.bind_host, settings.dicomweb_port)
        grpc_server.append(
            serve_grpc(
                Deps(
                    index,
                    source.with_via("grpc"),
                    settings,
                    [settings.study_topic, settings.quarantine_topic],
                    query_timeout=settings.query_timeout,
                    max_chunk_bytes=settings.grpc_max_chunk_bytes,
                    max_watch_streams=settings.grpc_max_watch_streams,
                    max_retrieve_streams=settings.grpc_max_retrieve_streams,
                    hot_root=settings.hot_dir,
                ),
                settings.bind_host,
                settings.grpc_port,
                workers=settings.grpc_workers,
                auth=authz,
            )
        )
        from strata.archive import transcode

        transcode.configure(settings.transcode_workers)
        # the pool's workers start (and load their codecs) now, not on the first retrieve
        threading.Thread(target=transcode.warm, name="transcode-warm", daemon=True).start()
        qr_server.append(
            QueryServer(
                acceptor_config(
                    settings,
                    min(32, settings.max_associations),
                    acceptor_security(
                        settings,
                        load_ae_config(settings.ae_config),
                        settings.qr_ae_title,
                        own_allow_list=False,
                    ),
                ),
                Services(
                    index,
                    source.with_via("dimse"),
                    destinations,
                    settings.qr_ae_title,
                    settings.find_limit,
                    query_timeout=settings.query_timeout,
                    max_pending=settings.qr_max_pending,
                    move_tls=move_tls_contexts(settings),
                ),
                (settings.bind_host, settings.qr_port),
            )
        )
        sql_pool.append(_start_sql(settings, index))
        log.info(
            "query SCP %s on %s:%d, gRPC :%d, DICOMweb :%d%s",
            settings.qr_ae_title,
            settings.bind_host,
            settings.qr_port,
            settings.grpc_port,
            settings.dicomweb_port,
            " with the OHIF viewer" if viewer_dist else "",
        )

    try:
        run_worker(app, on_started=start_readers)
    finally:
        for q in qr_server:
            q.shutdown()
        if lifecycle is not None:
            lifecycle.close()
        for g in grpc_server:
            g.stop(grace=5)
        for pool in sql_pool:
            if pool is not None:
                pool.close()  # the analysts' sessions, before the engine they read
        index.close()
        if relay is not None:
            relay.stop()
        audit.close()


def _timer_clients(settings: Settings, lifecycle: Any, role: Any) -> Any:
    """The index node's timers' clients (processors/timers.py): a Kafka probe of the log's end
    per loop, and the stability emitter; at a DR site, whether it decides now (``role``) and
    the log ends past transaction markers (common/kafka.py Tails)."""
    from strata.common import kafka
    from strata.processors.stability import StabilityEmitter
    from strata.processors.timers import TimerClients

    return TimerClients(
        lag_probe=kafka.consumer(settings, "strata-index-probe", "index-lag"),
        lifecycle_probe=(
            None
            if lifecycle is None
            else kafka.consumer(settings, "strata-lifecycle-probe", "lifecycle-lag")
        ),
        stability=StabilityEmitter(
            settings, settings.study_topic, settings.node_name, settings.study_quiet_seconds
        ),
        decides=role.primary,
        lag_tails=kafka.Tails(settings, "index") if settings.dr_site else None,
        lifecycle_tails=(
            kafka.Tails(settings, "lifecycle") if settings.dr_site and lifecycle else None
        ),
    )


def _replica_relay(settings: Settings) -> Any:
    """An index replica (own STRATA_NODE_DIR) has its own STOW outbox, which no ingest node
    relays: it publishes it itself. None for the single index node (its outbox is the ingest
    node's, relayed there)."""
    if not settings.node_dir:
        return None
    from strata.ingest.outbox import Outbox
    from strata.ingest.relay import Relay

    relay = Relay(Outbox(settings.outbox_path), settings)
    relay.start()
    return relay


def _start_sql(settings: Settings, index: Any) -> Any:
    """The read-only ClickHouse HTTP interface over the embedded index (query/sql_http.py);
    returns its session pool (closed at shutdown), None when off. With a ClickHouse server
    (STRATA_CLICKHOUSE_DSN) analysts use the server itself."""
    from strata.query import sql_http

    path = index.embedded_path()
    if not settings.sql_port or not path:
        if settings.sql_port:
            log.info("SQL endpoint off: the index is a ClickHouse server (query it directly)")
        return None
    limits = sql_http.Limits(
        max_execution_time=settings.sql_max_execution_time,
        max_result_rows=settings.sql_max_result_rows,
        max_result_bytes=settings.sql_max_result_bytes,
        max_memory_usage=settings.sql_max_memory_usage,
        max_threads=settings.sql_max_threads,
        nice=settings.sql_nice,
    )
    from strata.processors.app import index_lag

    threshold = settings.sql_yield_lag
    pool = sql_http.Pool(
        path,
        settings.clickhouse_database,
        limits,
        settings.sql_connections,
        busy=(lambda: index_lag() > threshold) if threshold > 0 else None,
        yield_seconds=settings.sql_yield_seconds,
    )
    users = sql_http.Users.parse(settings.sql_users)
    sql_http.serve(
        pool,
        users,
        settings.node_name,
        settings.bind_host,
        settings.sql_port,
        settings.audit_database,
    )
    log.info("SQL (ClickHouse HTTP, read-only) on %s:%d", settings.bind_host, settings.sql_port)
    return pool


def _tiers(settings: Settings, decides: Any = None) -> tuple[Any, Any]:
    """The tiers, the lifecycle processor (None without rules or recall promotion) and the
    retrieve source reading every tier (hot in place, cold through the recall cache).
    ``decides()`` false (a DR follower): reads record no StudyAccessed event."""

    from strata.archive.cold import build_cold_tier
    from strata.archive.hot import HotTier
    from strata.archive.lifecycle import load_policy, policy_path
    from strata.archive.recall import RecallCache
    from strata.archive.source import TieredSource
    from strata.common.errors import Invalid
    from strata.processors.lifecycle import AccessRecorder, LifecycleProcessor

    path = policy_path(settings.home, {"STRATA_LIFECYCLE_POLICY": settings.lifecycle_policy})
    policy = load_policy(path)
    hot = HotTier(settings.hot_dir, settings.spool_dir)
    cold = build_cold_tier(settings)
    tiers: dict[str, Any] = {"hot": hot}
    if cold is not None:
        tiers["cold"] = cold
    elif policy.moves or policy.recall.promote:
        raise Invalid(f"the lifecycle policy {path} moves objects to cold: configure STRATA_S3_*")
    lifecycle = None
    if policy.rules or policy.recall.promote:
        lifecycle = LifecycleProcessor(
            policy,
            tiers,
            settings.home / "lifecycle" / "pending",
            settings,
            settings.study_topic,
            settings.node_name,
            incoming=hot.incoming,
            policy_file=path,
        )
        log.info("lifecycle: %d rules from %s", len(policy.rules), path)
    access = AccessRecorder(
        settings,
        settings.study_topic,
        settings.node_name,
        policy.access_window_seconds,
    )
    cache_dir = Path(policy.recall.cache_dir) if policy.recall.cache_dir else None
    cache = RecallCache(cache_dir or settings.home / "recall-cache", policy.recall.cache_bytes)
    promote = None
    if policy.recall.promote and lifecycle is not None:
        lc = lifecycle

        def promote(loc: Any) -> None:
            lc.request_promotion(loc.study_uid, loc.series_uid, loc.sop_uid)

    remote = {name: t for name, t in tiers.items() if name != "hot"}
    record = access.record
    if decides is not None:

        def record(study_uid: str, via: str) -> None:
            # a follower's log is the primary's mirror: its reads are not written into it
            if decides():
                access.record(study_uid, via)

    source = TieredSource(settings.hot_dir, remote, cache, "", record, promote)
    return lifecycle, source
