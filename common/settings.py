"""Typed settings, loaded in one place per process from ``STRATA_*`` environment variables.

Every setting has a default that works for the embedded single-machine stack (everything on
127.0.0.1, data under one directory), an environment name, and a docstring-like help text.
No other module reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PREFIX = "STRATA_"


def _setting(default: Any, help: str, secret: bool = False) -> Any:  # noqa: A002
    # "help" reads best here; a secret is kept out of repr() (and so out of logs).
    return field(default=default, repr=not secret, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    home: Path = _setting(
        Path.home() / ".strata",
        "Directory holding all local state: Kafka log, chDB index, hot tier, logs, pid files.",
    )
    node_name: str = _setting("node-1", "Name of this archive node, recorded in every event.")
    bind_host: str = _setting(
        "127.0.0.1", "Address every listener binds to. Loopback unless configured deliberately."
    )

    # --- Kafka (the log) ---
    kafka_bootstrap: str = _setting(
        "127.0.0.1:9092", "Kafka bootstrap servers (host:port[,host:port...])."
    )
    kafka_controller_port: int = _setting(
        9093, "Controller port of the embedded KRaft broker (local stack only)."
    )
    kafka_heap: str = _setting("512m", "JVM heap of the embedded Kafka broker.")
    kafka_version: str = _setting("3.9.1", "Apache Kafka version of the embedded broker (Maven).")
    topic_prefix: str = _setting("strata", "Prefix of every topic name.")
    study_partitions: int = _setting(
        3, "Partitions of the study-events topic (fixed at creation: a key's partition is stable)."
    )
    replication_factor: int = _setting(1, "Replication factor of created topics.")

    # --- ClickHouse (the index) ---
    clickhouse_dsn: str = _setting(
        "",
        "ClickHouse DSN. Empty = embedded chDB at <home>/index. "
        "e.g. http://user:pw@host:8123 for a server; chdb:///abs/path for another chDB path.",
        secret=True,  # may carry a password: kept out of repr() (and logs)
    )
    clickhouse_database: str = _setting("strata", "ClickHouse database of the index.")

    # --- cold tier (S3: Ceph RADOS Gateway, or any S3 server) ---
    s3_endpoint: str = _setting(
        "",
        "S3 endpoint URL of the cold tier, e.g. https://rgw.example:443. Empty = no cold tier, "
        "except under 'strata up', which starts a local Ceph RGW and points this at it.",
    )
    s3_access_key: str = _setting("", "S3 access key id of the cold tier.")
    s3_secret_key: str = _setting("", "S3 secret access key of the cold tier.", secret=True)
    s3_bucket: str = _setting("strata-cold", "S3 bucket holding the cold tier's objects.")
    s3_ca_bundle: str = _setting(
        "",
        "PEM file of the CA(s) to trust for an https S3 endpoint. Empty = the system's CAs. "
        "TLS verification is never turned off.",
    )
    s3_region: str = _setting("us-east-1", "S3 region name used for request signing.")
    s3_max_attempts: int = _setting(3, "Attempts per S3 request (standard retry mode).")
    s3_connect_timeout: float = _setting(5.0, "Seconds to connect to the S3 endpoint.")
    s3_read_timeout: float = _setting(60.0, "Seconds without data from the S3 endpoint.")
    local_s3: str = _setting(
        "auto",
        "Object store 'strata up' starts for the cold tier when STRATA_S3_ENDPOINT is empty: "
        "'ceph' (Ceph 16.2 mon+osd+radosgw, Debian packages), 'auto' (ceph when installed, "
        "else none), or 'none'.",
    )
    ceph_mon_port: int = _setting(3300, "Port of the embedded Ceph monitor (local stack only).")
    ceph_rgw_port: int = _setting(
        7480, "HTTPS port of the embedded Ceph RADOS Gateway (S3; local stack only)."
    )
    ceph_osd_ports: str = _setting(
        "6800-6899", "Port range the embedded Ceph OSD binds in (local stack only)."
    )

    # --- ingest (C-STORE SCP) ---
    ingest_ae_title: str = _setting("STRATA", "AE title of the ingest (C-STORE) SCP.")
    ingest_port: int = _setting(11112, "Port of the ingest (C-STORE/C-ECHO) SCP.")
    max_pdu: int = _setting(
        1 << 20,
        "Maximum P-DATA-TF length we announce and receive (bytes; 0 = unlimited, which lets a "
        "peer hold one PDU as long as it likes: not recommended).",
    )
    network_timeout: float = _setting(60.0, "Seconds without network activity before abort.")
    acse_timeout: float = _setting(
        30.0,
        "Seconds to wait for association messages (no longer used by the DICOM acceptors: "
        "STRATA_ARTIM_TIMEOUT bounds the whole A-ASSOCIATE-RQ from connect).",
    )
    dimse_timeout: float = _setting(60.0, "Seconds to wait for DIMSE messages.")
    event_timeout: float = _setting(
        15.0, "Seconds to wait for Kafka to confirm an event before answering a failure status."
    )

    ingest_workers: int = _setting(
        0, "Ingest worker processes sharing the port (SO_REUSEPORT); 0 = one per CPU core."
    )
    ingest_http_port: int = _setting(
        8081, "Port of the ingest node's /healthz and /metrics (Prometheus) endpoint."
    )
    outbox_mode: str = _setting(
        "spool",
        "When Kafka is unreachable: 'spool' keeps accepting into the fsync'd outbox (published "
        "in order later); 'refuse' answers a retryable failure (A710) instead.",
    )
    outbox_refuse_after: float = _setting(
        5.0, "In 'refuse' mode: refuse once the oldest unpublished event is this many s old."
    )
    outbox_max_depth: int = _setting(
        1_000_000, "Unpublished events beyond which even 'spool' mode refuses (A710)."
    )
    max_object_bytes: int = _setting(
        4 * 1024**3, "Largest object accepted; larger ones are refused and quarantined."
    )
    ae_config: str = _setting(
        "",
        'JSON file of known calling AEs: {"allow_unknown": bool, "aes": {"AET": {"site":'
        ' ..., "institution": ..., "issuer_of_patient_id": ...}}}. Empty = accept any AE.',
    )

    # --- hostile input: bounded events, set-aside events, deflate bound, quarantine quota ---
    event_element_max_bytes: int = _setting(
        64 * 1024,
        "Element values larger than this are left out of an event's header and marked as bulk "
        "data (a BulkDataURI in WADO-RS metadata); the object keeps them.",
    )
    event_header_max_bytes: int = _setting(
        512 * 1024,
        "Largest header (DICOM JSON) an event carries: beyond it the largest elements are "
        "marked as bulk data too, so an event stays under the broker's message size (1 MiB).",
    )
    max_inflated_bytes: int = _setting(
        256 * 1024**2,
        "Largest size a Deflated Explicit VR Little Endian dataset may inflate to; larger ones "
        "are refused (A721) and quarantined.",
    )
    quarantine_max_bytes: int = _setting(
        10 * 1024**3,
        "Bytes the quarantine may hold; beyond it a refused object's record is still written "
        "(reason, identifiers, size, sha256) but its bytes are not kept.",
    )
    quarantine_retention_days: float = _setting(
        30.0, "Quarantined bytes older than this many days are deleted (their records stay)."
    )

    # --- network robustness (docs/network.md). Caps are per process: the ingest node runs
    # STRATA_INGEST_WORKERS processes on its port, each with its own caps. ---
    max_associations: int = _setting(
        64,
        "Connections one DICOM acceptor process serves at once (ingest: per worker; the "
        "Q/R SCP uses at most 32). At the cap an idle connection of the peer address holding "
        "the most is evicted for a newcomer holding fewer, else the newcomer gets "
        "A-ASSOCIATE-RJ (transient, local-limit-exceeded).",
    )
    max_associations_per_peer: int = _setting(
        16,
        "Connections one peer IP address may hold in one acceptor process (ingest: per "
        "worker); beyond, A-ASSOCIATE-RJ (transient, local-limit-exceeded), without a thread.",
    )
    artim_timeout: float = _setting(
        10.0, "Seconds from connect by which a peer's whole A-ASSOCIATE-RQ must have arrived."
    )
    pdu_timeout: float = _setting(
        30.0,
        "Seconds by which a PDU must be complete once its first byte arrived (one more "
        "period per further 4 MiB of the PDU): a peer trickling bytes cannot hold its slot.",
    )
    qr_max_pending: int = _setting(
        16,
        "DIMSE requests (and unsolicited C-STORE responses) one Q/R association may have "
        "queued; more is a protocol violation answered with A-ABORT.",
    )

    # --- query (DIMSE Q/R SCP) ---
    qr_ae_title: str = _setting("STRATA_QR", "AE title of the query/retrieve SCP.")
    qr_port: int = _setting(11113, "Port of the query/retrieve (C-FIND/C-ECHO) SCP.")
    find_limit: int = _setting(10000, "Maximum C-FIND matches returned for one request.")
    move_destinations: str = _setting(
        "", "C-MOVE destinations: 'AE=host:port,AE2=host:port'. Unknown AEs are refused (A801)."
    )
    grpc_port: int = _setting(50051, "Port of the gRPC query service (index node).")
    dicomweb_port: int = _setting(8042, "Port of the DICOMweb service (index node).")
    dicomweb_prefix: str = _setting("/dicom-web", "Path prefix of the DICOMweb root.")
    viewer_dir: str = _setting(
        "",
        "Directory of the OHIF viewer's dist/ served at / by DICOMweb. Empty = the copy "
        "installed by 'strata viewer install', if any.",
    )
    dicomweb_cors_origins: str = _setting(
        "", "Origins allowed by CORS for web viewers on another origin ('*' = any; empty = off)."
    )
    index_http_port: int = _setting(
        8082, "Port of the index node's /healthz, /metrics, /positions and /checksums."
    )

    # --- processors ---
    index_batch_size: int = _setting(2000, "Maximum events per index write batch.")
    study_quiet_seconds: float = _setting(
        60.0, "A study with no new instance for this long is announced StudyStable."
    )
    index_batch_window: float = _setting(
        0.05, "Seconds to wait to fill an index batch (trades latency for throughput)."
    )
    index_busy_gap: float = _setting(
        0.25,
        "Under load (batches of >= 8 events), the least seconds between index writes: fewer, "
        "larger ClickHouse parts (a third of the CPU per event at 100/s); a trickle of "
        "arrivals is still written within the batch window.",
    )

    # --- lifecycle ---
    lifecycle_policy: str = _setting(
        "",
        "Lifecycle policy file (TOML/JSON, docs/tiers.md). Empty = <STRATA_HOME>/lifecycle.toml.",
    )

    # --- router ---
    router_config: str = _setting(
        "",
        "Routing rules and destinations (JSON file, see docs/routing.md). Empty = no router.",
    )
    router_http_port: int = _setting(8083, "Port of the router's /healthz, /metrics, /routes.")
    router_group: str = _setting("strata-router", "Kafka consumer group of the router.")

    # --- geo-redundancy (issue #19, docs/dr.md): this site, its peer site, the mirror ---
    dr_site: str = _setting(
        "", "Name of this site (e.g. 'A'); empty = a stand-alone archive (no geo-redundancy)."
    )
    dr_peer_site: str = _setting("", "Name of the peer site (e.g. 'B').")
    dr_peer_bootstrap: str = _setting(
        "", "Kafka bootstrap servers of the peer site: the mirror's source while this site follows."
    )
    dr_peer_grpc: str = _setting(
        "", "host:port of the peer site's gRPC service: the copier fetches object bytes from it."
    )
    dr_mirror_port: int = _setting(
        8084, "Port of MirrorMaker 2's internal REST listener (dedicated mode; this host only)."
    )
    dr_mirror_heap: str = _setting("256m", "JVM heap of MirrorMaker 2.")
    dr_mirror_interval_ms: int = _setting(
        500,
        "MirrorMaker 2's poll, offset-flush, offset-sync, checkpoint and refresh intervals (ms): "
        "lower = less lag, more requests.",
    )
    dr_copy_group: str = _setting(
        "strata-dr-copier", "Kafka consumer group of the object copier (processors/replicate.py)."
    )
    dr_copy_workers: int = _setting(
        4,
        "Requests the copier has in flight at once (each fetches a group of a batch's objects "
        "from the peer, verifies, stores and records them): sized for a 2-core site; the peer "
        "serves each in its own thread (STRATA_GRPC_MAX_RETRIEVE_STREAMS there).",
    )
    dr_peer_token_file: str = _setting(
        "",
        "File holding the bearer token (an OAuth2 access token with the peer's read scope) "
        "the copier presents to the peer's gRPC when the peer requires tokens "
        "(STRATA_AUTH_MODE=oidc there). Read again for every request: whatever renews the "
        "token (a sidecar, a timer) rewrites the file. Empty: no token.",
    )
    dr_fence_check_seconds: float = _setting(
        5.0,
        "How often the ingest node re-reads the epoch (its own and the peer's control topic): "
        "a site that is not the primary of the latest epoch refuses C-STORE.",
    )
    dr_mode: str = _setting(
        "async",
        "'async': ingest acknowledges once the object and its event are durable here; 'sync': "
        "only once the peer's log holds the InstanceReplicated of the instance (RPO 0; "
        "refuses A730 while the peer does not confirm). Read at start (docs/dr.md).",
    )
    dr_sync_timeout: float = _setting(
        10.0,
        "Sync mode: seconds a C-STORE (or STOW-RS instance) waits for the peer's confirmation "
        "before it is answered A730 (the instance stays stored here; the sender retries).",
    )

    # --- limits on what a peer can ask of the read side and STOW (issue #15) ---
    query_timeout: float = _setting(
        30.0,
        "Server-side time limit (s) of every search: C-FIND, QIDO-RS, WADO-RS metadata and "
        "gRPC searches (ClickHouse max_execution_time; a gRPC call gets min(its deadline, "
        "this)). Answered A700 (C-FIND), 503 with a JSON body (HTTP), DEADLINE_EXCEEDED (gRPC).",
    )
    stow_enabled: bool = _setting(
        True,
        "Serve STOW-RS on the index node. Only where the ingest relay publishes that node's "
        "outbox (the local stack: one home); off in Kubernetes (helm/strata), where it is not.",
    )
    stow_max_part_bytes: int = _setting(
        4 * 1024**3, "Largest STOW-RS part; a larger one ends the request with 413."
    )
    stow_max_parts: int = _setting(
        1000, "Most parts (objects) in one STOW-RS request; more end the request with 413."
    )
    wado_max_frames: int = _setting(
        1000, "Most frame numbers in one WADO-RS frames request (more: 400)."
    )
    grpc_max_chunk_bytes: int = _setting(
        4 * 1024**2, "Largest RetrieveInstances chunk; a larger chunk_size asked is lowered."
    )
    grpc_workers: int = _setting(
        16, "gRPC worker threads for unary calls (searches), besides the streams' own."
    )
    grpc_max_watch_streams: int = _setting(
        8, "Concurrent WatchEvents streams; more are refused with RESOURCE_EXHAUSTED."
    )
    grpc_max_retrieve_streams: int = _setting(
        8, "Concurrent RetrieveInstances streams; more are refused with RESOURCE_EXHAUSTED."
    )
    spool_dir: str = _setting(
        "",
        "This node's own spool directory (partial receptions) under <hot>/.incoming; empty = "
        ".incoming itself. Set per pod where nodes share one hot volume (helm: the pod name).",
    )

    # --- transcoding (retrieve and routing in a syntax other than the stored one) ---
    transcode_workers: int = _setting(
        0,
        "Processes decoding / encoding pixel data when a C-GET, C-MOVE, WADO-RS or routing "
        "peer takes another transfer syntax than the stored one (docs/transcoding.md). "
        "0 = one per CPU.",
    )

    # --- security profile and DICOM TLS (docs/security.md; resolved by dicomnet/tls.py) ---
    profile: str = _setting(
        "embedded",
        "Security profile: 'embedded' (loopback, no TLS, any AE: easy local use) or 'hardened' "
        "(DICOM TLS with required client certificates bound to AE titles, AE checks on every "
        "SCP). Other security pieces may key on it too.",
    )
    dicom_tls: str = _setting(
        "auto", "DICOM TLS on the ingest and Q/R SCPs: auto (on in the hardened profile)|on|off."
    )
    dicom_tls_cert: str = _setting(
        "", "PEM certificate (chain) of the DICOM SCPs. Empty = the project CA's under <home>/pki."
    )
    dicom_tls_key: str = _setting(
        "", "PEM private key of STRATA_DICOM_TLS_CERT. Empty = the project CA's under <home>/pki."
    )
    dicom_tls_ca: str = _setting(
        "",
        "PEM CA(s) client certificates are verified against, and the archive's own client "
        "certificate chains to. Empty = the project CA (<home>/pki/ca.pem) when TLS is on.",
    )
    dicom_tls_client_certs: str = _setting(
        "auto",
        "Client certificates on DICOM TLS: auto (required when hardened, else optional)|none|"
        "optional|required. A certificate bound to an AE (STRATA_AE_CONFIG) must match it.",
    )
    dicom_ae_checks: str = _setting(
        "auto",
        "Calling-AE allow-list (STRATA_AE_CONFIG) and called-AE check on every DICOM SCP: "
        "auto (on when hardened)|on|off.",
    )
    move_tls_destinations: str = _setting(
        "",
        "C-MOVE destinations (AE titles of STRATA_MOVE_DESTINATIONS, comma-separated) reached "
        "over DICOM TLS: verified against STRATA_DICOM_TLS_CA (else the project CA), the "
        "archive presenting its DICOM TLS certificate as its client certificate.",
    )

    # --- Kafka security (docs/security.md, "Kafka: SASL_SSL and ACLs"; common/kafka.py) ---
    kafka_security: str = _setting(
        "auto",
        "Kafka connection security: auto (sasl_ssl in the hardened profile, else plaintext)|"
        "plaintext|sasl_ssl (SCRAM-SHA-512 over TLS; the local broker then enforces ACLs).",
    )
    kafka_user: str = _setting(
        "",
        "SCRAM principal (user name) of this process on Kafka. Empty = strata-operator (the "
        "CLI's); 'strata up' gives each service its own (strata-ingest, strata-index, ...).",
    )
    kafka_password_file: str = _setting(
        "",
        "File holding the SCRAM password of STRATA_KAFKA_USER. Empty = <home>/kafka/credentials/"
        "<user>.password (generated by 'strata up', mode 0600).",
    )
    kafka_ca: str = _setting(
        "",
        "PEM CA(s) the Kafka brokers' certificates are verified against. Empty = the project "
        "CA (<home>/pki/ca.pem).",
    )

    # --- SQL: ClickHouse's HTTP interface on the index, read-only (issue #21, docs/analytics.md)
    sql_port: int = _setting(
        8123,
        "Port of the read-only ClickHouse HTTP interface the index node serves over its "
        "embedded index (chDB). 0 = off. Not served with STRATA_CLICKHOUSE_DSN (a server).",
    )
    sql_users: str = _setting(
        "analyst:",
        "Users of the SQL endpoint: 'name:password[,name:password]'. A user with an empty "
        "password is accepted from loopback addresses only.",
        secret=True,
    )
    sql_max_execution_time: float = _setting(
        30.0, "Seconds an analyst query may run (ClickHouse max_execution_time)."
    )
    sql_max_result_rows: int = _setting(
        1_000_000, "Most rows an analyst query may return (more: error 396)."
    )
    sql_max_result_bytes: int = _setting(
        256 * 1024**2, "Most bytes of result an analyst query may return (more: error 396)."
    )
    sql_max_memory_usage: int = _setting(
        1024**3, "Most memory one analyst query may use (ClickHouse max_memory_usage)."
    )
    sql_max_threads: int = _setting(
        1, "Threads one analyst query may use (leaves the other cores to ingest indexing)."
    )
    sql_nice: int = _setting(
        19,
        "Linux nice value of the engine threads running an analyst query (ClickHouse "
        "os_thread_priority; 0 = as the archive's own work).",
    )
    sql_yield_lag: int = _setting(
        20,
        "Ingest first: while the index is more than this many events behind the log, an "
        "analyst query waits (up to STRATA_SQL_YIELD_SECONDS) before it starts. 0 = never.",
    )
    sql_yield_seconds: float = _setting(
        10.0, "Longest an analyst query waits for the index to catch up; then it runs."
    )
    sql_connections: int = _setting(
        2,
        "Analyst queries run at once (each on its own read-only chDB connection); more wait "
        "up to STRATA_SQL_MAX_EXECUTION_TIME for one.",
    )

    # --- authentication and authorization (OAuth2/OIDC bearer tokens; docs/security.md) ---
    auth_mode: str = _setting(
        "off",
        "off | oidc. off: no tokens, admin HTTP endpoints answer loopback clients only. oidc: "
        "gRPC and DICOMweb need a bearer JWT of STRATA_OIDC_ISSUER, admin endpoints its admin "
        "scope.",
    )
    oidc_issuer: str = _setting(
        "", "Issuer URL the tokens must carry (iss), e.g. https://idp/realm."
    )
    oidc_audience: str = _setting("", "Audience the tokens must be meant for (aud).")
    oidc_jwks_url: str = _setting(
        "",
        "JWKS URL of the issuer's keys. Empty = the jwks_uri of the issuer's "
        "/.well-known/openid-configuration.",
    )
    oidc_scope_read: str = _setting(
        "strata:read", "Scope for searches, metadata, retrieval and event watching."
    )
    oidc_scope_write: str = _setting("strata:write", "Scope for storing (STOW-RS).")
    oidc_scope_admin: str = _setting(
        "strata:admin", "Scope for the admin HTTP endpoints of the index node and the router."
    )
    oidc_leeway: float = _setting(30.0, "Seconds of clock skew allowed on exp/nbf/iat.")
    oidc_jwks_ttl: float = _setting(600.0, "Seconds a fetched JWKS is used before a refresh.")
    oidc_jwks_min_refetch: float = _setting(
        30.0, "Least seconds between two JWKS refetches caused by tokens with an unknown kid."
    )
    oidc_client_id: str = _setting(
        "strata-viewer", "OAuth2 client id of the OHIF viewer (authorization code + PKCE)."
    )
    token: str = _setting(
        "", "Bearer token the CLI sends to the admin HTTP endpoints (or --token).", secret=True
    )

    # --- high availability (issue #18, docs/ha.md) ---
    kafka_nodes: int = _setting(
        1,
        "Kafka nodes 'strata up' starts (KRaft, each broker+controller). 1 = the embedded single "
        "broker; 3 = a cluster: STRATA_KAFKA_BOOTSTRAP then lists one host:port per node.",
    )
    kafka_controller_ports: str = _setting(
        "",
        "Controller ports of the local Kafka nodes, comma-separated, one per node. Empty = "
        "STRATA_KAFKA_CONTROLLER_PORT, +1, +2, ...",
    )
    kafka_cluster_heap: str = _setting(
        "256m", "JVM heap of each local Kafka node of a cluster (STRATA_KAFKA_NODES > 1)."
    )
    kafka_flush_each_message: bool = _setting(
        True,
        "Local Kafka nodes fsync each message (log.flush.interval.messages=1). Keep it on while "
        "the replicas share one machine or power supply (docs/ha.md).",
    )
    index_replicas: int = _setting(
        1,
        "Index nodes 'strata up' starts, each with its own chDB index, consumer group and ports, "
        "behind HAProxy on the query ports (docs/ha.md). 1 = one index node, no balancer.",
    )
    ingest_nodes: int = _setting(
        1,
        "Ingest nodes 'strata up' starts, each with its own outbox and ports, behind HAProxy on "
        "STRATA_INGEST_PORT (docs/ha.md). 1 = one ingest node, no balancer.",
    )
    node_dir: str = _setting(
        "",
        "This node's own state (outbox, chDB index, faust data, pid and metrics files) when "
        "several nodes share STRATA_HOME (set by 'strata up' for replicas). Empty = STRATA_HOME.",
    )
    index_group: str = _setting(
        "strata-processors",
        "Kafka consumer group (faust app id) of this index node; each replica has its own.",
    )
    index_decisions: bool = _setting(
        True,
        "This index node takes the decisions that emit events (StudyStable, lifecycle moves); "
        "'strata up' gives them to the first replica only, so they are not taken twice.",
    )
    haproxy_check_ms: int = _setting(
        1000, "HAProxy: milliseconds between health checks of each node (down after 2 failures)."
    )

    # --- audit trail (common/audit.py, docs/security.md "Audit trail") ---
    audit_queue: int = _setting(
        10000,
        "Audit events a process holds in memory for its background producer; beyond that (or "
        "while Kafka is unreachable) they go to a local spool file, replayed when it is back.",
    )
    audit_syslog: str = _setting(
        "",
        "host:port of the syslog receiver (RFC 5425: TLS, octet counting) the audit exporter "
        "('strata audit export') sends PS3.15 A.5 audit messages to. Empty = no export.",
    )
    audit_syslog_ca: str = _setting(
        "", "PEM CA the syslog receiver's certificate must chain to (empty = the system's)."
    )
    audit_syslog_cert: str = _setting(
        "", "PEM client certificate the audit exporter presents to the receiver (optional)."
    )
    audit_syslog_key: str = _setting("", "PEM private key of STRATA_AUDIT_SYSLOG_CERT.")
    audit_export_group: str = _setting(
        "strata-audit-export",
        "Kafka consumer group of the audit exporter (its committed offset: at-least-once).",
    )

    # ---------------------------------------------------------------- derived paths
    @property
    def hot_dir(self) -> Path:
        return self.home / "hot"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def node_home(self) -> Path:
        """This node's own state directory (STRATA_NODE_DIR, else STRATA_HOME)."""
        return Path(self.node_dir) if self.node_dir else self.home

    @property
    def run_dir(self) -> Path:
        return self.node_home / "run"

    @property
    def kafka_dir(self) -> Path:
        return self.home / "kafka"

    @property
    def ceph_dir(self) -> Path:
        return self.home / "ceph"

    @property
    def index_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{(self.node_home / 'index').resolve()}"

    @property
    def quarantine_dir(self) -> Path:
        return self.home / "quarantine"

    @property
    def outbox_path(self) -> Path:
        return self.node_home / "ingest" / "outbox.sqlite"

    @property
    def quarantine_topic(self) -> str:
        """Source-of-truth topic of refused arrivals (InstanceQuarantined)."""
        return f"{self.topic_prefix}.quarantine.v1"

    @property
    def topic_replicas(self) -> int:
        """Replication factor of created topics: STRATA_REPLICATION_FACTOR, raised to three
        replicas (or as many as there are nodes) on a Kafka cluster."""
        return max(self.replication_factor, min(3, self.kafka_nodes))

    @property
    def dr_topic(self) -> str:
        """Source-of-truth topic of the sites' epochs (SiteEpoch events, docs/dr.md)."""
        return f"{self.topic_prefix}.dr-control.v1"

    @property
    def study_topic(self) -> str:
        """Source-of-truth topic of study-scoped events (keyed by StudyInstanceUID)."""
        return f"{self.topic_prefix}.study-events.v1"

    @property
    def audit_topic(self) -> str:
        """Source-of-truth topic of the audit trail (AuditEvent, keyed by event id)."""
        return f"{self.topic_prefix}.audit.v1"

    @property
    def audit_database(self) -> str:
        """Database of the audit table: beside the index's, never rebuilt by a replay."""
        return f"{self.clickhouse_database}_audit"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _coerce(f.type, raw, f.name)
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The settings as environment variables, to hand to child processes."""
        return {
            PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in dataclasses.fields(self)
        }

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(env name, default, help) for every setting, for docs and ``strata config``."""
        return [
            (PREFIX + f.name.upper(), str(f.default), f.metadata["help"])
            for f in dataclasses.fields(cls)
        ]


def _coerce(type_name: Any, raw: str, name: str) -> Any:
    t = type_name if isinstance(type_name, str) else type_name.__name__
    try:
        if t == "Path":
            return Path(raw).expanduser()
        if t == "int":
            return int(raw)
        if t == "float":
            return float(raw)
        if t == "bool":
            return raw.strip().lower() in {"1", "true", "yes", "on"}
        return raw
    except ValueError as exc:
        raise ValueError(f"{PREFIX}{name.upper()}={raw!r}: expected {t}") from exc
