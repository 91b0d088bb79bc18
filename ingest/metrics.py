"""Prometheus metrics of the ingest node. Worker processes write to a shared multiprocess
directory (PROMETHEUS_MULTIPROC_DIR, set by the node before they start); the node serves the
merged view. Metrics hang off notifications and outcomes, never decide a status."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INSTANCES = Counter(
    "strata_ingest_instances_total", "C-STORE requests by outcome", ["outcome"]
)  # stored | duplicate | refused
REFUSED = Counter("strata_ingest_refused_total", "Refused objects by reason", ["reason"])
BYTES = Counter("strata_ingest_bytes_total", "Bytes of objects stored")
STORE_SECONDS = Histogram(
    "strata_ingest_store_seconds",
    "Time from full receipt of a C-STORE dataset to its response (durability included)",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ASSOCIATIONS = Counter("strata_ingest_associations_total", "Associations by result", ["result"])
OUTBOX_DEPTH = Gauge(
    "strata_ingest_outbox_depth",
    "Events durable locally, not yet in Kafka",
    multiprocess_mode="livemax",
)
OUTBOX_OLDEST = Gauge(
    "strata_ingest_outbox_oldest_seconds",
    "Age of the oldest unpublished event",
    multiprocess_mode="livemax",
)
PUBLISHED = Counter("strata_ingest_events_published_total", "Events published to Kafka")
KAFKA_UP = Gauge(
    "strata_ingest_kafka_up", "1 if the relay reaches Kafka", multiprocess_mode="livemax"
)
WORKERS = Gauge(
    "strata_ingest_workers", "Live ingest worker processes", multiprocess_mode="livemax"
)
OUTBOX_SET_ASIDE = Gauge(
    "strata_ingest_outbox_set_aside",
    "Events Kafka refused for good, set aside in the outbox until re-driven",
    multiprocess_mode="livemax",
)
SET_ASIDE = Counter(
    "strata_ingest_events_set_aside_total", "Events set aside (refused for good by Kafka)"
)
QUARANTINE_BYTES = Gauge(
    "strata_ingest_quarantine_bytes",
    "Bytes of refused objects kept in quarantine",
    multiprocess_mode="livemax",
)
QUARANTINE_FILES = Gauge(
    "strata_ingest_quarantine_files",
    "Refused objects kept in quarantine",
    multiprocess_mode="livemax",
)
DR_UNCONFIRMED = Counter(
    "strata_ingest_dr_unconfirmed_total",
    "Sync geo-redundancy: instances stored here but refused (A730) because the second site did "
    "not confirm them in time",
)
