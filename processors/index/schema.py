"""ClickHouse schema of the index (documented in docs/index-schema.md).

Invariants encoded here:
- Every row is derived from one event and carries its log position (``log_partition``,
  ``log_offset``). Tables are ReplacingMergeTree(log_version) so a redelivered event writes an
  identical row that collapses with itself, and a later event for the same key supersedes an
  earlier one. Since every study-scoped event of one study lives in one partition (keyed by
  StudyInstanceUID), ``log_offset`` orders a study's rows totally; it is the version.
- Reads use FINAL (or argMax on log_version) so they never see superseded versions.
- Tables of things that can leave the archive (instances, their versions, series, studies) are
  ReplacingMergeTree(log_version, is_deleted): an InstanceDeleted event writes a row with
  is_deleted = 1 and the key of what it deletes, so reads with FINAL no longer see it (and a
  later arrival of the same instance, at a higher offset, makes it visible again).
- Patient-level answers are grouped from ``studies`` (one row per study, its current
  patient), so a corrected patient identity never leaves a stale patient row behind.
- Dates are DICOM DA strings 'YYYYMMDD' (lexicographic order = date order), times are stored
  raw plus normalized to 'HHMMSS' for range matching; '' means absent.
"""

from __future__ import annotations

from strata.processors.index import views

PATIENT_COLUMNS = """
    patient_id String,
    issuer_of_patient_id String,
    patient_name String,
    patient_birth_date String,
    patient_sex LowCardinality(String),
"""

STUDY_COLUMNS = """
    study_uid String,
    study_date String,
    study_time String,
    study_time_norm String,
    accession_number String,
    study_id String,
    study_description String,
    referring_physician_name String,
"""

SERIES_COLUMNS = """
    series_uid String,
    modality LowCardinality(String),
    series_number Nullable(Int64),
    series_description String,
    body_part_examined LowCardinality(String),
"""

# The `studies` columns that study_stats repeats (every one but study_uid, which leads it).
STATS_STUDY_COLUMNS = PATIENT_COLUMNS + STUDY_COLUMNS.replace("study_uid String,", "")
STATS_STUDY_TYPES: dict[str, str] = dict(
    line.strip().rstrip(",").split(" ", 1)
    for line in STATS_STUDY_COLUMNS.splitlines()
    if line.strip()
)
STATS_STUDY_NAMES = list(STATS_STUDY_TYPES)
# What a STUDY search returns of a study, in this order, as one JSON array in study_stats'
# `card` column: a search then reads the key, version and deletion columns, the columns it
# matches and sorts on, and this one column, instead of every returned column (each column
# read costs the engine ~0.5 ms over 10k studies; this halves a study search's SQL).
CARD_COLUMNS: tuple[str, ...] = (
    *STATS_STUDY_NAMES[:5],  # the patient's
    "study_uid",
    *STATS_STUDY_NAMES[5:],
    "modalities_in_study",
    "sop_classes_in_study",
    "n_series",
    "n_instances",
)
# The columns study_stats got after its first version (migrate adds them in this order).
STATS_ADDED_TYPES: dict[str, str] = {**STATS_STUDY_TYPES, "card": "String"}
# Columns other tables got after their first version, last in their table (migrate adds them,
# empty in the rows already there): (table, column, type).
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("study_stability", "through_event_id", "String"),
)

LOG_COLUMNS = """
    log_partition UInt32,
    log_offset UInt64,
    log_version UInt64,
    event_id String,
"""


# The ReplacingMergeTree key (ORDER BY) and version column of every table: rows with equal keys
# collapse to the one with the highest version (the last inserted among equal versions).
KEYS: dict[str, tuple[str, ...]] = {
    "instances": ("study_uid", "series_uid", "sop_uid"),
    "instance_versions": ("study_uid", "series_uid", "sop_uid", "sha256"),
    "events": ("topic", "log_partition", "log_offset"),
    "study_stability": ("study_uid",),
    "series": ("study_uid", "series_uid"),
    "studies": ("study_uid",),
    "routes": ("route_id",),
    "route_attempts": ("route_id", "sop_uid", "attempt"),
    "route_states": ("route_id", "log_offset"),  # every transition is kept
    "tier_transitions": ("study_uid", "sop_uid", "event_id"),
    "legal_holds": ("study_uid", "hold_id"),
    "study_access": ("study_uid",),
    "study_stats": ("study_uid",),
}
# Tables whose rows can be deleted by an event (an is_deleted column, the engine's parameter).
DELETABLE = ("instances", "instance_versions", "series", "studies", "study_stats")
VERSIONS: dict[str, str] = {t: ("log_offset" if t == "events" else "log_version") for t in KEYS}


def _engine(table: str) -> str:
    key = ", ".join(KEYS[table])
    params = VERSIONS[table] + (", is_deleted" if table in DELETABLE else "")
    return f"ENGINE = ReplacingMergeTree({params})\n        ORDER BY ({key})"


DELETED_COLUMN = """
    is_deleted UInt8,
"""


# Bloom filters on UID columns that are looked up without the leading key columns (a relational
# C-FIND by SOPInstanceUID or SeriesInstanceUID alone, WADO/gRPC lookups of one instance): a
# lookup reads a few granules instead of scanning the column. Only KEY columns get one: every
# version of a row has the same key, so a granule skipped by the filter cannot hold a newer
# version of a matching row, and reads with FINAL stay exact.
SKIP_INDEXES: tuple[tuple[str, str, str], ...] = (
    ("instances", "sop_uid_bf", "sop_uid TYPE bloom_filter(0.01) GRANULARITY 1"),
    ("instances", "series_uid_bf", "series_uid TYPE bloom_filter(0.01) GRANULARITY 1"),
    ("routes", "study_uid_bf", "study_uid TYPE bloom_filter(0.01) GRANULARITY 1"),
)


PROJECTION_MODE = "deduplicate_merge_projection_mode = 'rebuild'"


def ddl(db: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        # One row per instance (latest version wins).
        f"""CREATE TABLE IF NOT EXISTS {db}.instances (
            {PATIENT_COLUMNS}
            {STUDY_COLUMNS}
            {SERIES_COLUMNS}
            sop_uid String,
            sop_class_uid LowCardinality(String),
            instance_number Nullable(Int64),
            transfer_syntax_uid LowCardinality(String),
            size_bytes UInt64,
            sha256 String,
            tier LowCardinality(String),
            storage_key String,
            calling_ae_title LowCardinality(String),
            called_ae_title LowCardinality(String),
            ingest_node LowCardinality(String),
            received_at DateTime64(3, 'UTC'),
            header_json String CODEC(ZSTD(3)),
            {LOG_COLUMNS}
            {DELETED_COLUMN}
        ) {_engine("instances")}""",
        # Every stored version of every instance (history: same SOP Instance UID, other bytes).
        f"""CREATE TABLE IF NOT EXISTS {db}.instance_versions (
            study_uid String,
            series_uid String,
            sop_uid String,
            sha256 String,
            supersedes_sha256 String,
            size_bytes UInt64,
            tier LowCardinality(String),
            storage_key String,
            calling_ae_title LowCardinality(String),
            received_at DateTime64(3, 'UTC'),
            {LOG_COLUMNS}
            {DELETED_COLUMN}
        ) {_engine("instance_versions")}""",
        # Every event of every source-of-truth topic, for analysts and for positions: the
        # highest offset per (topic, partition) here is how far this index has read the log.
        f"""CREATE TABLE IF NOT EXISTS {db}.events (
            topic LowCardinality(String),
            log_partition UInt32,
            log_offset UInt64,
            event_id String,
            event_type LowCardinality(String),
            schema_version UInt32,
            study_uid String,
            occurred_at DateTime64(3, 'UTC'),
            producer_service LowCardinality(String),
            producer_node LowCardinality(String),
            payload_json String CODEC(ZSTD(3))
        ) {_engine("events")}
        SETTINGS {PROJECTION_MODE}""",
        # The last StudyStable per study (through which instance event it was stable).
        f"""CREATE TABLE IF NOT EXISTS {db}.study_stability (
            study_uid String,
            through_partition UInt32,
            through_offset UInt64,
            quiet_seconds UInt32,
            last_arrival_at DateTime64(3, 'UTC'),
            {LOG_COLUMNS}
            through_event_id String
        ) {_engine("study_stability")}""",
        # One row per series: the series attributes of its latest instance event.
        f"""CREATE TABLE IF NOT EXISTS {db}.series (
            study_uid String,
            {SERIES_COLUMNS}
            header_json String CODEC(ZSTD(3)),
            {LOG_COLUMNS}
            {DELETED_COLUMN}
        ) {_engine("series")}""",
        # One row per study: patient + study attributes of its latest instance event.
        f"""CREATE TABLE IF NOT EXISTS {db}.studies (
            {PATIENT_COLUMNS}
            {STUDY_COLUMNS}
            last_received_at DateTime64(3, 'UTC'),
            header_json String CODEC(ZSTD(3)),
            {LOG_COLUMNS}
            {DELETED_COLUMN}
        ) {_engine("studies")}""",
        # Routing (processors/router): one row per route decision (also "no rule matched")...
        f"""CREATE TABLE IF NOT EXISTS {db}.routes (
            route_id String,
            study_uid String,
            matched UInt8,
            rule LowCardinality(String),
            destination LowCardinality(String),
            trigger LowCardinality(String),
            transcode_to LowCardinality(String),
            instance_count UInt32,
            instances_json String CODEC(ZSTD(3)),
            reason String,
            decided_at DateTime64(3, 'UTC'),
            {LOG_COLUMNS}
        ) {_engine("routes")}""",
        # ... one per C-STORE attempt of one instance of a route ...
        f"""CREATE TABLE IF NOT EXISTS {db}.route_attempts (
            route_id String,
            study_uid String,
            sop_uid String,
            attempt UInt32,
            destination LowCardinality(String),
            ae_title LowCardinality(String),
            address LowCardinality(String),
            outcome LowCardinality(String),
            dimse_status UInt16,
            detail String,
            transfer_syntax_uid LowCardinality(String),
            attempted_at DateTime64(3, 'UTC'),
            next_attempt_at DateTime64(3, 'UTC'),
            {LOG_COLUMNS}
        ) {_engine("route_attempts")}""",
        # ... and every end state of each route (delivered, dead-lettered, redriven): the
        # current one is the latest by log_offset (one route's events share one partition).
        f"""CREATE TABLE IF NOT EXISTS {db}.route_states (
            route_id String,
            study_uid String,
            state LowCardinality(String),
            reason LowCardinality(String),
            detail String,
            dimse_status UInt16,
            attempts UInt32,
            delivered UInt32,
            undelivered Array(String),
            at DateTime64(3, 'UTC'),
            {LOG_COLUMNS}
        ) {_engine("route_states")}""",
        # Every tier move (TierTransitioned), one row per event id: a move whose event reached
        # the log twice (a producer retry) is one row, so moves are never counted twice.
        f"""CREATE TABLE IF NOT EXISTS {db}.tier_transitions (
            study_uid String,
            series_uid String,
            sop_uid String,
            sha256 String,
            size_bytes UInt64,
            source_tier LowCardinality(String),
            source_key String,
            target_tier LowCardinality(String),
            target_key String,
            policy LowCardinality(String),
            occurred_at DateTime64(3, 'UTC'),
            {LOG_COLUMNS}
        ) {_engine("tier_transitions")}""",
        # Legal holds per study: active = 1 after LegalHoldPlaced, 0 after LegalHoldReleased of
        # the same hold id (the later event of a study wins: both are keyed by the study).
        f"""CREATE TABLE IF NOT EXISTS {db}.legal_holds (
            study_uid String,
            hold_id String,
            active UInt8,
            reason String,
            changed_by String,
            changed_at DateTime64(3, 'UTC'),
            {LOG_COLUMNS}
        ) {_engine("legal_holds")}""",
        # The last recorded access (StudyAccessed) per study, for "N days after last access".
        f"""CREATE TABLE IF NOT EXISTS {db}.study_access (
            study_uid String,
            last_accessed_at DateTime64(3, 'UTC'),
            via LowCardinality(String),
            {LOG_COLUMNS}
        ) {_engine("study_access")}""",
        # Study-level aggregates over the study's current instances (what C-FIND/QIDO/gRPC
        # return as ModalitiesInStudy, SOPClassesInStudy, NumberOfStudyRelated*), so a study
        # search reads one row per study instead of aggregating every instance of every
        # candidate study. Not projected from single events: IndexStore.write recomputes the
        # row of every study a batch touched from `instances` FINAL right after inserting the
        # batch (STUDY_STATS_SQL), so it is the same function of the log as `instances`.
        # Version: the highest log_version of any row of the study in `instances`; a study
        # left without current instances gets a tombstone (is_deleted = 1).
        # It also carries the study's current `studies` row (patient and study attributes,
        # without the header), so a STUDY or PATIENT search reads this one table: a join of
        # `studies` FINAL with it cost as much again as the whole single-table read. The
        # columns come last so that an index made before them gets the same column order
        # from ALTER TABLE ADD COLUMN (migrate) as a fresh one.
        f"""CREATE TABLE IF NOT EXISTS {db}.study_stats (
            study_uid String,
            modalities_in_study Array(String),
            sop_classes_in_study Array(String),
            n_series UInt64,
            n_instances UInt64,
            log_version UInt64,
            {DELETED_COLUMN}
            {STATS_STUDY_COLUMNS}
            card String,
        ) {_engine("study_stats")}""",
        # Skip indexes (ADD ... IF NOT EXISTS also equips a table created by an older version;
        # its existing parts get the index as they are merged).
        *(
            f"ALTER TABLE {db}.{table} ADD INDEX IF NOT EXISTS {name} {expr}"
            for table, name, expr in SKIP_INDEXES
        ),
        # study_stats is what every STUDY search reads with FINAL, which costs per part (at 1M
        # instances ~10 ms on one part, ~13 on four); the merge selector leaves a big part and
        # a few small ones from the last batches unmerged indefinitely. Parts all older than
        # 30 s are merged anyway: one part soon after a burst, for the price of rewriting this
        # one-row-per-study table at most every 30 s under sustained ingest.
        f"ALTER TABLE {db}.study_stats MODIFY SETTING min_age_to_force_merge_seconds = 30",
        # How far the index has read the log (checksum.positions, every second on the live
        # node) from a per-part aggregate instead of a scan of every event row. The setting
        # lets a ReplacingMergeTree have a projection (rebuilt when parts merge).
        f"ALTER TABLE {db}.events MODIFY SETTING {PROJECTION_MODE}",
        f"ALTER TABLE {db}.events ADD PROJECTION IF NOT EXISTS log_end ("
        "SELECT topic, log_partition, max(log_offset) GROUP BY topic, log_partition)",
        # The analysts' curated views (processors/index/views.py, docs/analytics.md).
        *views.ddl(db),
    ]


TABLES = (
    "instances",
    "instance_versions",
    "series",
    "studies",
    "events",
    "study_stability",
    "routes",
    "route_attempts",
    "route_states",
    "tier_transitions",
    "legal_holds",
    "study_access",
    "study_stats",
)


def _card_expr(column: str) -> str:
    if column == "study_uid":
        return "v.study_uid"
    return f"{'s' if column in STATS_STUDY_TYPES else 'a'}.{column}"


def study_stats_sql(db: str, where: str) -> str:
    """INSERT of the study_stats rows of the studies selected by ``where`` (a condition on
    ``study_uid``), computed from the current instances, with the study's current `studies`
    row (written in the same batch as the instances that changed it)."""
    return f"""
    INSERT INTO {db}.study_stats
        (study_uid, modalities_in_study, sop_classes_in_study, n_series, n_instances,
         log_version, is_deleted, {", ".join(STATS_STUDY_NAMES)}, card)
    SELECT v.study_uid, a.modalities_in_study, a.sop_classes_in_study, a.n_series,
           a.n_instances, v.version, a.n_instances = 0,
           {", ".join(f"s.{c}" for c in STATS_STUDY_NAMES)},
           toJSONString(tuple({", ".join(_card_expr(c) for c in CARD_COLUMNS)}))
    FROM (
        SELECT study_uid, max(log_version) AS version
        FROM {db}.instances WHERE {where} GROUP BY study_uid
    ) AS v
    LEFT JOIN (
        SELECT study_uid,
               arraySort(groupUniqArrayIf(modality, modality != '')) AS modalities_in_study,
               arraySort(groupUniqArray(sop_class_uid)) AS sop_classes_in_study,
               uniqExact(series_uid) AS n_series,
               count() AS n_instances
        FROM {db}.instances FINAL WHERE {where} GROUP BY study_uid
    ) AS a USING (study_uid)
    LEFT JOIN (
        SELECT study_uid, {", ".join(STATS_STUDY_NAMES)}
        FROM {db}.studies FINAL WHERE {where}
    ) AS s USING (study_uid)
    SETTINGS join_use_nulls = 0"""
