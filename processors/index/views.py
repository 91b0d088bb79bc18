"""Curated views of the index for analysts (docs/analytics.md), created with the schema.

Every view is a pure function of indexed rows: no now(), no insert time; a replay of the same
log (strata replay, a point-in-time rebuild) gives the same figures. Reads use FINAL, as
every reader of the index does, so superseded and deleted rows are never counted.

Not here, and why:
- arrival-to-indexed latency: the index holds when an instance arrived (received_at) and when
  its event was produced (events.occurred_at), but not when a row was indexed (rows carry the
  log position, never the time they were written: a replay would change it). The latency is
  measured from outside (benchmarks.analytics, the metric strata_index_lag_events).
"""

from __future__ import annotations

# name -> SELECT (the view's body, with {db} for the index's database)
VIEWS: dict[str, str] = {
    # Studies, instances and bytes per day of arrival, modality and site (the sending AE).
    "v_ingest_daily": """
        SELECT toDate(received_at) AS day, modality, calling_ae_title AS site,
               uniqExact(study_uid) AS studies, count() AS instances,
               sum(size_bytes) AS bytes
        FROM {db}.instances FINAL
        GROUP BY day, modality, site""",
    # Routing SLA per destination: routes decided, delivered, dead-lettered, still open, and
    # decided-to-delivered seconds (p50/p95/max) of the delivered ones.
    "v_routing_sla": """
        SELECT r.destination AS destination,
               count() AS routes,
               countIf(s.state = 'delivered') AS delivered,
               countIf(s.state = 'dead-lettered') AS dead_letters,
               countIf(s.state NOT IN ('delivered', 'dead-lettered')) AS open,
               quantileExactIf(0.5)(dateDiff('millisecond', r.decided_at, s.at) / 1000,
                                    s.state = 'delivered') AS p50_seconds,
               quantileExactIf(0.95)(dateDiff('millisecond', r.decided_at, s.at) / 1000,
                                     s.state = 'delivered') AS p95_seconds,
               maxIf(dateDiff('millisecond', r.decided_at, s.at) / 1000,
                     s.state = 'delivered') AS max_seconds
        FROM (SELECT route_id, destination, decided_at FROM {db}.routes FINAL
              WHERE matched = 1) AS r
        LEFT JOIN (
            SELECT route_id, argMax(state, log_offset) AS state, argMax(at, log_offset) AS at
            FROM {db}.route_states FINAL GROUP BY route_id
        ) AS s USING (route_id)
        GROUP BY destination
        SETTINGS join_use_nulls = 0""",
    # What each tier holds now (current instances).
    "v_tier_occupancy": """
        SELECT tier, count() AS instances, sum(size_bytes) AS bytes,
               uniqExact(study_uid) AS studies
        FROM {db}.instances FINAL
        GROUP BY tier""",
    # Tier moves per day, from which tier to which, by policy.
    "v_tier_transitions_daily": """
        SELECT toDate(occurred_at) AS day, source_tier, target_tier, policy,
               count() AS instances, sum(size_bytes) AS bytes
        FROM {db}.tier_transitions FINAL
        GROUP BY day, source_tier, target_tier, policy""",
    # Bytes stored per day (every stored version, superseded ones included: they were
    # written) and the running total.
    "v_storage_growth": """
        SELECT day, instances, bytes,
               sum(bytes) OVER (ORDER BY day ROWS UNBOUNDED PRECEDING) AS total_bytes
        FROM (
            SELECT toDate(received_at) AS day, count() AS instances, sum(size_bytes) AS bytes
            FROM {db}.instance_versions FINAL
            GROUP BY day
        )""",
    # Quarantined arrivals (the quarantine topic is indexed into `events`) per day, reason and
    # sending AE; bytes kept (not dropped) and bytes refused.
    "v_quarantine_daily": """
        SELECT toDate(occurred_at) AS day,
               JSONExtractString(payload_json, 'reason') AS reason,
               JSONExtractString(payload_json, 'callingAeTitle') AS site,
               count() AS arrivals,
               countIf(JSONExtractBool(payload_json, 'bytesDropped')) AS bytes_dropped,
               sum(toUInt64OrZero(JSONExtractString(payload_json, 'sizeBytes'))) AS bytes
        FROM {db}.events FINAL
        WHERE event_type = 'InstanceQuarantined'
        GROUP BY day, reason, site""",
    # Events per hour, topic and type.
    "v_event_rates_hourly": """
        SELECT toStartOfHour(occurred_at) AS hour, topic, event_type, count() AS events
        FROM {db}.events FINAL
        GROUP BY hour, topic, event_type""",
}


def ddl(db: str) -> list[str]:
    """CREATE OR REPLACE VIEW of every curated view (a changed view replaces the old one)."""
    return [
        f"CREATE OR REPLACE VIEW {db}.{name} AS {body.format(db=db).strip()}"
        for name, body in VIEWS.items()
    ]
