"""ClickHouse adapter of the index (chDB in-process or a server over HTTP: one code path, the
DSN decides): the writes of the projection, and every read of the index port
(processors/index/port.py), whose SQL is here and in processors/index/search.py (searches).
Vendor errors become common.errors here."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from strata.common.errors import DeadlineExceeded, Unavailable
from strata.common.redact import redact
from strata.processors.index import search
from strata.processors.index.port import CANDIDATE_COLUMNS, FindQuery, Located, Page
from strata.processors.index.projection import Batch, ticks_ms
from strata.processors.index.schema import (
    ADDED_COLUMNS,
    DELETABLE,
    STATS_ADDED_TYPES,
    TABLES,
    ddl,
    study_stats_sql,
)

if TYPE_CHECKING:
    from strata.archive.lifecycle import Policy, Rule

log = logging.getLogger(__name__)


class _NotArrow(Exception):
    """A column the Arrow hand-off does not carry exactly: the table goes through the driver."""


def _ticks(value: Any) -> int:
    try:
        return ticks_ms(value)
    except TypeError as exc:
        raise _NotArrow(str(exc)) from exc


def _arrow_columns(types: list[str], columns: list[Any]) -> Any:
    """A pyarrow Table of ``columns`` (value sequences) for columns of ClickHouse ``types``,
    holding exactly what the driver's Native encoding would send; _NotArrow when a type or a
    value is not one this carries (bools, NULL in a non-Nullable column, naive datetimes...)."""
    import pyarrow as pa

    arrays = []
    try:
        for ch_type, values in zip(types, columns, strict=True):
            t = ch_type
            if t.startswith("LowCardinality("):
                t = t[len("LowCardinality(") : -1]
            nullable = t.startswith("Nullable(")
            if nullable:
                t = t[len("Nullable(") : -1]
            if t == "String":
                arr = pa.array(values, pa.string())
            elif t in _ARROW_INTS:
                arr = pa.array(values, _ARROW_INTS[t])
            elif t.startswith("DateTime64(3"):
                try:  # ticks already (a Batch's own rows)
                    arr = pa.array(values, pa.int64())
                except (pa.ArrowException, TypeError):
                    arr = pa.array([_ticks(v) for v in values], pa.int64())
                arr = arr.view(pa.timestamp("ms", tz="UTC"))
            elif t == "Array(String)":
                arr = pa.array(values, pa.list_(pa.string()))
                if arr.null_count or arr.flatten().null_count:
                    raise _NotArrow("NULL in Array(String)")
            else:
                raise _NotArrow(ch_type)
            if arr.null_count and not nullable:
                raise _NotArrow(f"NULL in a {ch_type} column")
            arrays.append(arr)
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise _NotArrow(str(exc)) from exc
    return pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(arrays))])


def _arrow_int_types() -> dict[str, Any]:
    import pyarrow as pa

    return {
        "UInt8": pa.uint8(),
        "UInt16": pa.uint16(),
        "UInt32": pa.uint32(),
        "UInt64": pa.uint64(),
        "Int8": pa.int8(),
        "Int16": pa.int16(),
        "Int32": pa.int32(),
        "Int64": pa.int64(),
    }


_ARROW_INTS: dict[str, Any] = {}


@dataclass(frozen=True)
class Layout:
    """Column names and ClickHouse types of every table, and whether inserts go as Arrow."""

    columns: dict[str, list[str]]
    types: dict[str, dict[str, str]]
    arrow: bool


@dataclass
class Prepared:
    """A Batch ready to insert: per table an Arrow table or the driver's columns (a list), the
    studies whose study_stats the batch changes, and the rows it counts."""

    tables: dict[str, Any]
    studies: list[str]
    rows: int
    events: int


def _driver_ticks(col: Any) -> Any:
    try:
        return [ticks_ms(v) for v in col]
    except TypeError:  # not a value ticks_ms knows: the driver's own handling, as before
        return col


def prepare(batch: Batch, layout: Layout) -> Prepared:
    """Columns of every table of ``batch`` in the store's column order; as Arrow where the
    Arrow hand-off carries them exactly, else as the driver's columns."""
    if layout.arrow and not _ARROW_INTS:
        _ARROW_INTS.update(_arrow_int_types())
    tables: dict[str, Any] = {}
    for table, data in batch.table_rows().items():
        cols = layout.columns[table]
        if isinstance(data, tuple):
            names, tuples = data
            by_name = dict(zip(names, zip(*tuples, strict=True), strict=True))
            # Column-oriented: no per-row tuples to build and pivot again in the driver.
            columns: list[Any] = [by_name[c] for c in cols]
        else:
            columns = [[r[c] for r in data] for c in cols]
        types = [layout.types[table][c] for c in cols]
        if layout.arrow:
            try:
                tables[table] = _arrow_columns(types, columns)
                continue
            except _NotArrow as exc:
                log.debug("%s: driver insert (%s)", table, exc)
        # The driver writes a DateTime64 column of ints as ticks, of datetimes by converting
        # them the way ticks_ms does: one kind per column (a Batch may hold both).
        tables[table] = [
            _driver_ticks(col) if ty.startswith("DateTime64(3") else col
            for ty, col in zip(types, columns, strict=True)
        ]
    return Prepared(tables, sorted(batch.studies()), sum(batch.count.values()), batch.events)


# A route's current state: open until a state event, redriven counts as open again.
_ROUTE_STATE_SQL = (
    "if(s.route_id = '', if(r.matched = 1, 'open', 'no-match'), "
    "if(s.state = 'redriven', 'open', s.state))"
)


def _rule_sql(i: int, r: Rule, now: datetime, day_seconds: float, params: dict) -> str:
    """The SQL prefilter of lifecycle rule ``i`` (archive.lifecycle.decide has the last word)."""
    cutoff = (now - timedelta(seconds=r.after_days * day_seconds)).replace(tzinfo=None)
    params[f"c{i}"] = cutoff
    conds = []
    if r.action == "cold":
        conds.append("tier != 'cold'")
        since = (
            "greatest(received_at, last_accessed_at)" if r.since == "last-access" else "received_at"
        )
    else:
        conds.append("held = 0")
        since = "received_at"
    conds.append(f"{since} <= {{c{i}:DateTime64(3, 'UTC')}}")
    if r.modalities:
        params[f"m{i}"] = sorted(r.modalities)
        conds.append(f"upper(modality) IN {{m{i}:Array(String)}}")
    if r.calling_aes:
        params[f"a{i}"] = sorted(r.calling_aes)
        conds.append(f"trimBoth(calling_ae_title) IN {{a{i}:Array(String)}}")
    if r.min_size_bytes:
        conds.append(f"size_bytes >= {int(r.min_size_bytes)}")
    if r.max_size_bytes:
        conds.append(f"size_bytes <= {int(r.max_size_bytes)}")
    return "(" + " AND ".join(conds) + ")"


def _open_client(dsn: str) -> Any:
    try:
        return clickhouse_connect.get_client(dsn=dsn)
    except Exception as exc:  # chDB lock errors, connection refused...
        # The DSN may carry a password: never in a message (nor the driver's text of it).
        raise Unavailable(redact(f"cannot open the index at {dsn}: {exc}")) from None


class IndexStore:
    """The index adapter (processors/index/port.py's Index), over clickhouse-connect."""

    def __init__(self, dsn: str, database: str) -> None:
        self.database = database
        self._dsn = dsn
        self.client = _open_client(dsn)
        self._columns: dict[str, list[str]] = {}
        self._types: dict[str, dict[str, str]] = {}
        self.write_lock = threading.Lock()
        self._arrow: Any = None  # see use_arrow()

    def sibling_client(self) -> Any:
        """A client of its own on the same engine and DSN: on chDB a handle of its own (its own
        session and its own handle lock: its calls never wait for this store's, nor the
        store's for its), on a ClickHouse server a connection of its own. For a writer whose
        tables are not the index's (the audit table: processors/index/audit.py)."""
        return _open_client(self._dsn)

    def embedded_path(self) -> str:
        """chDB's connection string of this index ('' for a ClickHouse server): other
        connections of this process (the read-only SQL endpoint's) open the same engine."""
        backend = getattr(self.client, "_backend", None)
        if backend is None or type(backend).__name__ != "ChdbBackend":
            return ""
        return str(getattr(backend, "connection_string", "") or "")

    def use_arrow(self) -> bool:
        """Embedded engine only (chDB), and only while this thread is the store's one user (a
        replay into its fresh index): inserts then hand chDB Arrow columns on a handle of its
        own (Python() table function) instead of the driver's Native encoding written to a
        temp file and read back (INSERT ... FROM INFILE): the same values, ~3x less CPU per
        row. Not for a store that other threads query meanwhile (the live index node): that
        second handle's inserts would run beside the driver's queries, which the driver's
        handle lock otherwise serializes, and a benchmark run saw a C-FIND stall there.
        Returns whether inserts now go as Arrow (False: a ClickHouse server, or no chDB)."""
        if self._arrow is not None:
            return True
        backend = getattr(self.client, "_backend", None)
        if (
            backend is None
            or type(backend).__name__ != "ChdbBackend"
            or not getattr(backend, "connection_string", "")
        ):
            return False
        try:
            import chdb
            import pyarrow  # noqa: F401
        except ImportError:
            return False
        self._arrow = chdb.connect(backend.connection_string)
        return True

    def stop_arrow(self) -> None:
        """Back to the driver's inserts (after use_arrow)."""
        arrow, self._arrow = self._arrow, None
        if arrow is not None:
            with contextlib.suppress(Exception):
                arrow.close()

    def drop_database(self) -> None:
        """Drop this store's database with every table in it (a point-in-time rebuild starts
        from none: processors/pit.py); migrate() creates them again."""
        self.client.command(f"DROP DATABASE IF EXISTS {self.database}")

    def migrate(self) -> None:
        had_stats = self._has_table("study_stats")
        old = self._tables_without_deletes()
        for t in old:  # created before tiers: moved aside, rebuilt below with the new engine
            self.client.command(f"RENAME TABLE {self.database}.{t} TO {self.database}.{t}__old")
        for stmt in ddl(self.database):
            self.client.command(stmt)
        for t in old:
            # Same rows, is_deleted = 0 (nothing was ever deleted before this version).
            cols = [
                r[0]
                for r in self.client.query(
                    "SELECT name FROM system.columns WHERE database={db:String} "
                    "AND table={t:String} ORDER BY position",
                    parameters={"db": self.database, "t": f"{t}__old"},
                ).result_rows
            ]
            names = ", ".join(cols)
            self.client.command(
                f"INSERT INTO {self.database}.{t} ({names}) "
                f"SELECT {names} FROM {self.database}.{t}__old"
            )
            self.client.command(f"DROP TABLE {self.database}.{t}__old")
            log.info("index table %s migrated to the deletable engine", t)
        have = {
            r[0]
            for r in self.client.query(
                "SELECT name FROM system.columns WHERE database={db:String} "
                "AND table='study_stats'",
                parameters={"db": self.database},
            ).result_rows
        }
        missing = [c for c in STATS_ADDED_TYPES if c not in have]
        for c in missing:  # in order: the same column order as a fresh table's
            self.client.command(
                f"ALTER TABLE {self.database}.study_stats "
                f"ADD COLUMN IF NOT EXISTS {c} {STATS_ADDED_TYPES[c]}"
            )
        if not had_stats or missing:
            # An index made before study_stats (or before it carried the study's attributes):
            # derive every row again from the instances and studies (same versions: the rows
            # inserted now supersede the old ones).
            self.client.command(study_stats_sql(self.database, "1"))
            log.info("index table study_stats filled from instances")
        for table, column, kind in ADDED_COLUMNS:
            self.client.command(
                f"ALTER TABLE {self.database}.{table} ADD COLUMN IF NOT EXISTS {column} {kind}"
            )
        for table in TABLES:
            described = self.client.query(
                "SELECT name, type FROM system.columns WHERE database={db:String} "
                "AND table={t:String} ORDER BY position",
                parameters={"db": self.database, "t": table},
            ).result_rows
            self._columns[table] = [str(c[0]) for c in described]
            self._types[table] = {str(c[0]): str(c[1]) for c in described}

    def _has_table(self, table: str) -> bool:
        return bool(
            self.client.query(
                "SELECT 1 FROM system.tables WHERE database={db:String} AND name={t:String}",
                parameters={"db": self.database, "t": table},
            ).result_rows
        )

    def _tables_without_deletes(self) -> list[str]:
        rows = self.client.query(
            "SELECT name, engine_full FROM system.tables WHERE database={db:String}",
            parameters={"db": self.database},
        ).result_rows
        engines = {str(n): str(e) for n, e in rows}
        return [t for t in DELETABLE if t in engines and "is_deleted" not in engines[t]]

    def write(self, batch: Batch) -> int:
        """Insert a batch's rows (idempotent: versions collapse on log position); the one
        write path of the live index agent and of a replay. Returns the rows counted."""
        return self.write_prepared(self.prepare(batch))

    def layout(self) -> Layout:
        """What prepare() needs of this store (picklable: a replay prepares batches in a
        process of its own)."""
        return Layout(self._columns, self._types, self._arrow is not None)

    def prepare(self, batch: Batch) -> Prepared:
        return prepare(batch, self.layout())

    def write_prepared(self, prepared: Prepared) -> int:
        """Insert a prepared batch: every table, then study_stats of the studies it touched,
        then the events table."""
        # The events table last (after study_stats too): its highest offsets are the index's
        # log position (read by the checks that gate the stability and lifecycle processors,
        # and by strata verify), so a position is only visible once the whole batch is.
        # The lock: a checksum snapshot (strata verify) never sees half a batch.
        with self.write_lock:
            try:
                for table, data in prepared.tables.items():
                    if table != "events":
                        self._insert(table, data)
                if prepared.studies:
                    # After the instances: the touched studies' aggregates from their rows.
                    self.client.command(
                        study_stats_sql(self.database, "study_uid IN {studies:Array(String)}"),
                        parameters={"studies": prepared.studies},
                    )
                if "events" in prepared.tables:
                    self._insert("events", prepared.tables["events"])
            except ClickHouseError as exc:
                raise Unavailable(redact(f"index write failed: {exc}")) from exc
        return prepared.rows

    def _insert(self, table: str, data: Any) -> None:
        """Insert one table: an Arrow table (embedded engine) or driver columns."""
        cols = self._columns[table]
        names = ", ".join(cols)
        if not isinstance(data, list):
            tbl = data  # noqa: F841 (read by chDB)
            try:
                # Python(tbl): chDB reads the local variable's Arrow buffers. Without the
                # replacing pass over each inserted block (optimize_on_insert): a Batch's
                # deduplicated tables hold one row per key already, the others are read with
                # FINAL (or max of a version) everywhere, so the same rows come out; the pass
                # cost ~10% of the insert's CPU (a redelivered event's two rows now wait for
                # a merge or FINAL, as two batches' rows always did).
                self._arrow.query(  # type: ignore[union-attr]
                    f"INSERT INTO {self.database}.{table} ({names}) "
                    "SETTINGS optimize_on_insert = 0 SELECT * FROM Python(tbl)"
                )
            except RuntimeError as exc:  # what chDB raises for an engine error
                raise Unavailable(redact(f"index write failed: {exc}")) from exc
            return
        self.client.insert(
            f"{self.database}.{table}", data, column_names=cols, column_oriented=True
        )

    # ------------------------------------------------------------ the index port's reads
    # Every read uses FINAL (or max of a version): the current row per key.

    def search(
        self, q: FindQuery, timeout: float = 0.0, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        sql, params, cols = search.build_sql(q, self.database, only_requested=True)
        if limit is not None:
            sql = f"SELECT * FROM ({sql}) LIMIT {int(limit)} OFFSET {int(offset)}"
        rows = self.query(sql + search.time_limit(timeout), params)
        return [search.row_dict(cols, row) for row in rows]

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
        inner, params, cols = search.build_sql(q, self.database, extra_columns=(order, uid))
        if after is not None:
            params["cur_v"], params["cur_u"] = after
        sql = search.page_sql(
            inner,
            order,
            numeric,
            descending,
            uid,
            after is not None,
            count,
            page_size,
            search.time_limit(timeout),
        )
        rows = self.query(sql, params)
        total = None
        if count:
            total = int(rows[0][-1]) if rows else 0
            rows = [r[:-1] for r in rows]
        return Page([search.row_dict(cols, r) for r in rows], total)

    def study_headers(self, study_uid: str, timeout: float = 0.0) -> list[str]:
        rows = self.query(
            f"SELECT header_json FROM {self.database}.instances FINAL "
            "WHERE study_uid = {s:String} "
            "ORDER BY series_uid, instance_number, sop_uid" + search.time_limit(timeout),
            {"s": study_uid},
        )
        return [r[0] for r in rows]

    def instance_headers(
        self, study_uid: str, series_uid: str = "", sop_uid: str = "", timeout: float = 0.0
    ) -> list[tuple[str, str, str, str]]:
        params = {"s": study_uid}
        where = "study_uid = {s:String}"
        if series_uid:
            params["se"] = series_uid
            where += " AND series_uid = {se:String}"
        if sop_uid:
            params["i"] = sop_uid
            where += " AND sop_uid = {i:String}"
        rows = self.query(
            f"SELECT header_json, transfer_syntax_uid, series_uid, sop_uid "
            f"FROM {self.database}.instances FINAL "
            f"WHERE {where} ORDER BY series_uid, instance_number, sop_uid"
            + search.time_limit(timeout),
            params,
        )
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def study_history(self, study_uid: str, timeout: float = 0.0) -> list[tuple[Any, ...]]:
        return self.query(
            "SELECT event_id, event_type, occurred_at, topic, log_partition, log_offset, "
            f"payload_json, producer_service FROM {self.database}.events FINAL "
            "WHERE study_uid = {s:String} ORDER BY topic, log_partition, log_offset"
            + search.time_limit(timeout),
            {"s": study_uid},
        )

    def locate(self, keys: dict[str, str], limit: int) -> list[Located]:
        sql, params = search.locate_sql(keys, self.database, limit)
        return [
            Located(
                study_uid=str(study),
                series_uid=str(series),
                sop_uid=str(sop),
                sop_class_uid=str(sop_class),
                transfer_syntax_uid=str(syntax),
                tier=str(tier),
                storage_key=str(key),
                size_bytes=int(size),
                sha256=str(sha),
            )
            for study, series, sop, sop_class, syntax, tier, key, size, sha in self.query(
                sql, params
            )
        ]

    def held_syntaxes(self) -> dict[str, frozenset[str]]:
        rows = self.query(
            "SELECT sop_class_uid, groupUniqArray(transfer_syntax_uid) "
            f"FROM {self.database}.instances GROUP BY sop_class_uid"
        )
        return {str(c): frozenset(map(str, t)) for c, t in rows}

    def storage_locations(
        self, after: tuple[str, str, str], limit: int, sample: int = 0
    ) -> list[tuple[Any, ...]]:
        cols = "study_uid, series_uid, sop_uid, sha256, size_bytes, tier, storage_key"
        db = self.database
        if sample:
            return self.query(
                f"SELECT {cols} FROM {db}.instances FINAL ORDER BY rand() LIMIT {int(sample)}"
            )
        return self.query(
            f"SELECT {cols} FROM {db}.instances FINAL "
            "WHERE (study_uid, series_uid, sop_uid) > ({a:String}, {b:String}, {c:String}) "
            f"ORDER BY study_uid, series_uid, sop_uid LIMIT {int(limit)}",
            {"a": after[0], "b": after[1], "c": after[2]},
        )

    def lifecycle_candidates(
        self, policy: Policy, now: datetime, skip: Sequence[str], limit: int
    ) -> list[tuple[Any, ...]]:
        if not policy.rules:
            return []
        db = self.database
        params: dict[str, Any] = {"skip": sorted(skip)[:10000]}
        where = " OR ".join(
            _rule_sql(i, r, now, policy.day_seconds, params) for i, r in enumerate(policy.rules)
        )
        cols = ", ".join(CANDIDATE_COLUMNS)
        return self.query(
            f"""
        SELECT {cols}, last_accessed_at, held
        FROM (SELECT {cols} FROM {db}.instances FINAL) AS i
        LEFT JOIN (SELECT study_uid, last_accessed_at FROM {db}.study_access FINAL) AS a
            USING (study_uid)
        LEFT JOIN (
            SELECT study_uid, toUInt8(1) AS held FROM {db}.legal_holds FINAL
            WHERE active = 1 GROUP BY study_uid
        ) AS h USING (study_uid)
        WHERE ({where}) AND sop_uid NOT IN {{skip:Array(String)}}
        ORDER BY received_at, study_uid, sop_uid
        LIMIT {int(limit)}""",
            params,
        )

    def current_instances(
        self,
        study_uids: Sequence[str],
        sop_uids: Sequence[str],
        columns: Sequence[str],
        off_tier: str = "",
    ) -> list[tuple[Any, ...]]:
        known = self._columns.get("instances")
        bad = [c for c in columns if known is not None and c not in known]
        if bad or not columns:
            raise ValueError(f"not columns of the instances table: {bad or columns}")
        params: dict[str, Any] = {"st": sorted(set(study_uids)), "sop": sorted(set(sop_uids))}
        sql = (
            f"SELECT {', '.join(columns)} FROM {self.database}.instances FINAL "
            "WHERE study_uid IN {st:Array(String)} AND sop_uid IN {sop:Array(String)}"
        )
        if off_tier:
            sql += " AND tier != {off:String}"
            params["off"] = off_tier
        return self.query(sql, params)

    def version_links(
        self, study_uids: Sequence[str], sop_uids: Sequence[str]
    ) -> list[tuple[str, str, str]]:
        rows = self.query(
            f"SELECT sop_uid, sha256, supersedes_sha256 FROM {self.database}.instance_versions "
            "FINAL WHERE study_uid IN {st:Array(String)} AND sop_uid IN {sop:Array(String)}",
            {"st": sorted(set(study_uids)), "sop": sorted(set(sop_uids))},
        )
        return [(str(s), str(h), str(x)) for s, h, x in rows]

    def series_instance_counts(self, study_uids: Sequence[str]) -> list[tuple[str, str, int]]:
        rows = self.query(
            f"SELECT study_uid, series_uid, count() FROM {self.database}.instances FINAL "
            "WHERE study_uid IN {st:Array(String)} GROUP BY study_uid, series_uid",
            {"st": sorted(set(study_uids))},
        )
        return [(str(s), str(se), int(n)) for s, se, n in rows]

    def active_holds(self, study_uid: str = "") -> list[tuple[str, str, str, str, str]]:
        where = "active = 1" + (" AND study_uid = {s:String}" if study_uid else "")
        rows = self.query(
            f"SELECT study_uid, hold_id, reason, changed_by, toString(changed_at) "
            f"FROM {self.database}.legal_holds FINAL WHERE {where} ORDER BY study_uid, hold_id",
            {"s": study_uid},
        )
        return [(str(a), str(b), str(c), str(d), str(e)) for a, b, c, d, e in rows]

    def unannounced_quiet_studies(
        self, cutoff: datetime, limit: int = 10000
    ) -> list[tuple[str, int, int, datetime, str]]:
        db = self.database
        # An announcement covers the study's latest arrival when it names that arrival's event
        # id: the same at every site of a DR pair, where log offsets are not (a mirrored
        # partition has transaction markers the primary's has not, docs/dr.md). One made before
        # event ids were named is compared by offset, as it was then.
        rows = self.query(
            f"""
            SELECT s.study_uid, s.log_partition, s.log_offset, s.last_received_at, s.event_id
            FROM (
                SELECT study_uid, log_partition, log_offset, last_received_at, event_id
                FROM {db}.studies FINAL
                WHERE last_received_at < {{cutoff:DateTime64(3, 'UTC')}}
            ) AS s
            LEFT JOIN (
                SELECT study_uid, through_offset, through_event_id, 1 AS announced
                FROM {db}.study_stability FINAL
            ) AS st USING (study_uid)
            WHERE st.announced = 0
               OR if(st.through_event_id != '', st.through_event_id != s.event_id,
                     st.through_offset < s.log_offset)
            ORDER BY s.last_received_at
            LIMIT {int(limit)}""",
            {"cutoff": cutoff.replace(tzinfo=None)},
        )
        return [(str(r[0]), int(r[1]), int(r[2]), r[3], str(r[4])) for r in rows]

    def routes(
        self, state: str = "", study_uid: str = "", limit: int = 100
    ) -> list[tuple[Any, ...]]:
        db = self.database
        where = []
        params: dict[str, Any] = {"limit": int(limit)}
        if state:
            where.append(f"{_ROUTE_STATE_SQL} = {{state:String}}")
            params["state"] = state
        if study_uid:
            where.append("r.study_uid = {study:String}")
            params["study"] = study_uid
        return self.query(
            f"""SELECT r.route_id, r.study_uid, r.rule, r.destination, r.trigger,
                   r.instance_count, toString(r.decided_at), {_ROUTE_STATE_SQL} AS st, s.reason,
                   s.detail, s.attempts, s.delivered
            FROM (SELECT * FROM {db}.routes FINAL) AS r
            LEFT JOIN (
                SELECT route_id, argMax(state, log_offset) AS state,
                       argMax(reason, log_offset) AS reason, argMax(detail, log_offset) AS detail,
                       argMax(attempts, log_offset) AS attempts,
                       argMax(delivered, log_offset) AS delivered
                FROM {db}.route_states FINAL GROUP BY route_id
            ) AS s USING (route_id)
            {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY r.decided_at DESC, r.route_id
            LIMIT {{limit:UInt32}}""",
            params,
        )

    def route(
        self, route_id: str
    ) -> tuple[tuple[Any, ...], list[tuple[Any, ...]], list[tuple[Any, ...]]] | None:
        db = self.database
        p = {"id": route_id}
        rows = self.query(
            f"""SELECT study_uid, matched, rule, destination, trigger, transcode_to,
                   instances_json, reason, toString(decided_at)
            FROM {db}.routes FINAL WHERE route_id = {{id:String}}""",
            p,
        )
        if not rows:
            return None
        states = self.query(
            f"""SELECT state, reason, detail, dimse_status, attempts, delivered, undelivered,
                   toString(at), log_offset
            FROM {db}.route_states FINAL WHERE route_id = {{id:String}}
            ORDER BY log_offset""",
            p,
        )
        attempts = self.query(
            f"""SELECT sop_uid, attempt, ae_title, address, outcome, dimse_status, detail,
                   transfer_syntax_uid, toString(attempted_at)
            FROM {db}.route_attempts FINAL WHERE route_id = {{id:String}}
            ORDER BY attempted_at, sop_uid, attempt""",
            p,
        )
        return rows[0], states, attempts

    def positions(self) -> dict[str, dict[int, int]]:
        out: dict[str, dict[int, int]] = {}
        rows = self.query(
            f"SELECT topic, log_partition, max(log_offset) + 1 FROM {self.database}.events "
            "GROUP BY topic, log_partition"
        )
        for topic, part, nxt in rows:
            out.setdefault(str(topic), {})[int(part)] = int(nxt)
        return out

    def table_checksums(self) -> dict[str, tuple[int, int]]:
        out = {}
        for t in TABLES:
            [(n, h)] = self.query(
                f"SELECT count(), sum(cityHash64(*)) FROM {self.database}.{t} FINAL"
            )
            # sum() over FINAL rows that are all tombstones comes back NULL from ClickHouse: 0
            out[t] = (int(n), int(h or 0))
        return out

    def study_checksums(self) -> dict[str, int]:
        parts = " UNION ALL ".join(
            f"SELECT study_uid, cityHash64(*) AS h FROM {self.database}.{t} FINAL" for t in TABLES
        )
        rows = self.query(f"SELECT study_uid, sum(h) FROM ({parts}) GROUP BY study_uid")
        return {str(s): int(h) for s, h in rows}

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            rows = self.client.query(sql, parameters=parameters or {}).result_rows
            return [tuple(r) for r in rows]
        except ClickHouseError as exc:
            text = redact(f"index query failed: {exc}")
            if "TIMEOUT_EXCEEDED" in text or "Code: 159." in text:
                raise DeadlineExceeded(text) from exc
            raise Unavailable(text) from exc

    def close(self) -> None:
        self.stop_arrow()
        with contextlib.suppress(Exception):  # best effort at shutdown
            self.client.close()
