"""The index port: everything the archive asks of the index, named by feature.

Callers (the Q/R SCP, retrieve, DICOMweb, gRPC, the lifecycle, stability and routing
processors, the index node's pages, ``strata verify``) take an ``Index`` and never write SQL.
The one adapter is ``processors.index.store.IndexStore`` (ClickHouse through
clickhouse-connect: chDB in-process or a server); it holds all SQL text, with the C-FIND
query builder (``processors/index/search.py``) and the DICOM matching rules it applies
(``processors/index/matching.py``). The table definitions are ``processors/index/schema.py``
and the analysts' views ``processors/index/views.py``. Unit tests use fakes of this Protocol;
integration tests use the adapter on real chDB.

Errors: an unreachable or failing index raises ``common.errors.Unavailable``; a search that
outlives its ``timeout`` (seconds, 0 = none: the server cuts it) raises
``common.errors.DeadlineExceeded``; a query value that cannot be matched raises
``common.errors.Invalid``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from strata.archive.lifecycle import Policy


# Columns of a lifecycle candidate row (Index.lifecycle_candidates): the facts the policy needs
# and what rebuilds the instance's InstanceStored.
CANDIDATE_COLUMNS = (
    "study_uid",
    "series_uid",
    "sop_uid",
    "sha256",
    "size_bytes",
    "tier",
    "storage_key",
    "modality",
    "calling_ae_title",
    "received_at",
    "log_offset",
    "sop_class_uid",
    "patient_id",
    "issuer_of_patient_id",
    "transfer_syntax_uid",
    "called_ae_title",
    "ingest_node",
    "header_json",
)


@dataclass(frozen=True)
class FindQuery:
    """A search (C-FIND, QIDO-RS, gRPC): the level, every key of the identifier as
    (keyword, raw query value; '' = universal/return key), and the most matches wanted."""

    level: str
    keys: list[tuple[str, str]]
    limit: int


@dataclass(frozen=True)
class Located:
    """Where a current instance's stored bytes are (what a retrieve sends)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    tier: str
    storage_key: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class Page:
    """One page of an ordered search (gRPC): the rows (column -> value, as ``search``), and the
    total number of matches when it was counted (the first page)."""

    rows: list[dict[str, Any]]
    total: int | None


class Index(Protocol):
    """The index, by feature. Rows are tuples in the documented column order, or dicts."""

    database: str

    # ---------------------------------------------------------------- search (find feature)
    def search(
        self, q: FindQuery, timeout: float = 0.0, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The matches of ``q`` (C-FIND matching, PS3.4 C.2.2.2) in the level's order, as
        mappings of every column of ``search.columns(q.level)``; ``offset``/``limit`` page
        through the first ``q.limit`` matches (QIDO-RS)."""
        ...

    def search_page(
        self,
        q: FindQuery,
        order: str,
        uid: str,
        *,
        descending: bool,
        numeric: bool,
        after: tuple[Any, str] | None,
        page_size: int,
        count: bool,
        timeout: float = 0.0,
    ) -> Page:
        """Up to ``page_size + 1`` matches of ``q`` (one more than a page: is there a next?)
        ordered by the column ``order`` (``numeric``: NULL as -1), then by the UID column
        ``uid`` ascending; only those after the row whose (order value, UID) is ``after``.
        ``count``: also the number of all matches."""
        ...

    def study_headers(self, study_uid: str, timeout: float = 0.0) -> list[str]:
        """The stored DICOM JSON header of every current instance of a study, in series,
        instance number, SOP Instance UID order (gRPC study metadata)."""
        ...

    def instance_headers(
        self, study_uid: str, series_uid: str = "", sop_uid: str = "", timeout: float = 0.0
    ) -> list[tuple[str, str, str, str]]:
        """(header_json, transfer_syntax_uid, series_uid, sop_uid) of the current instances
        of a study, series or instance, in the same order (WADO-RS metadata)."""
        ...

    def study_history(self, study_uid: str, timeout: float = 0.0) -> list[tuple[Any, ...]]:
        """(event_id, event_type, occurred_at, topic, log_partition, log_offset, payload_json,
        producer_service) of every event of a study, in log order."""
        ...

    # ---------------------------------------------------------------- retrieve
    def locate(self, keys: dict[str, str], limit: int) -> list[Located]:
        """Current instances matching the unique keys (PatientID, StudyInstanceUID,
        SeriesInstanceUID, SOPInstanceUID; UID lists allowed), at most ``limit + 1`` in
        study, series, instance number order."""
        ...

    def held_syntaxes(self) -> dict[str, frozenset[str]]:
        """Per SOP class, the transfer syntaxes of the objects held (C-MOVE/C-GET
        negotiation)."""
        ...

    def storage_locations(
        self, after: tuple[str, str, str], limit: int, sample: int = 0
    ) -> list[tuple[Any, ...]]:
        """(study, series, sop, sha256, size_bytes, tier, storage_key) of current instances
        in key order after ``after``, or a random ``sample`` of them."""
        ...

    # ---------------------------------------------------------------- lifecycle
    def lifecycle_candidates(
        self, policy: Policy, now: datetime, skip: Sequence[str], limit: int
    ) -> list[tuple[Any, ...]]:
        """Instances some rule of ``policy`` may act on at ``now`` (a prefilter: the caller
        decides), oldest arrivals first: rows of CANDIDATE_COLUMNS + (last_accessed_at,
        held)."""
        ...

    def current_instances(
        self,
        study_uids: Sequence[str],
        sop_uids: Sequence[str],
        columns: Sequence[str],
        off_tier: str = "",
    ) -> list[tuple[Any, ...]]:
        """``columns`` (of the instances table) of the current instances of these studies and
        SOP Instance UIDs; ``off_tier``: only those not on that tier."""
        ...

    def version_links(
        self, study_uids: Sequence[str], sop_uids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        """(sop_uid, sha256, supersedes_sha256) of the current versions of these instances."""
        ...

    def series_instance_counts(self, study_uids: Sequence[str]) -> list[tuple[str, str, int]]:
        """(study_uid, series_uid, current instances) of these studies."""
        ...

    def active_holds(self, study_uid: str = "") -> list[tuple[str, str, str, str, str]]:
        """(study_uid, hold_id, reason, placed_by, placed_at) of the active legal holds."""
        ...

    # ---------------------------------------------------------------- stability
    def unannounced_quiet_studies(
        self, cutoff: datetime, limit: int = 10000
    ) -> list[tuple[str, int, int, datetime, str]]:
        """(study_uid, log_partition, log_offset, last_received_at, event_id) of studies whose
        last instance arrived before ``cutoff`` and whose latest burst has no StudyStable yet
        (event_id: of that last instance's event)."""
        ...

    # ---------------------------------------------------------------- routing
    def routes(
        self, state: str = "", study_uid: str = "", limit: int = 100
    ) -> list[tuple[Any, ...]]:
        """Routing decisions, newest first: (route_id, study_uid, rule, destination, trigger,
        instance_count, decided_at, state, reason, detail, attempts, delivered)."""
        ...

    def route(
        self, route_id: str
    ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]] | None:
        """One route: its decision (study_uid, matched, rule, destination, trigger,
        transcode_to, instances_json, reason, decided_at), its state history and its send
        attempts; None if unknown."""
        ...

    # ---------------------------------------------------------------- log position, checks
    def positions(self) -> dict[str, dict[int, int]]:
        """Next offset to read per topic and partition, as far as the index applied the log."""
        ...

    def table_checksums(self) -> dict[str, tuple[int, int]]:
        """Per table: (current rows, sum of cityHash64 of every column of them)."""
        ...

    def study_checksums(self) -> dict[str, int]:
        """Per study: the sum of the row hashes of its rows in every table."""
        ...
