"""ClickHouse adapter of the index (chDB in-process or a server over HTTP: one code path, the
DSN decides). Vendor errors become common.errors here."""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from common.errors import DeadlineExceeded, Unavailable
from common.redact import redact
from processors.index.projection import Batch, ticks_ms
from processors.index.schema import (
    DELETABLE,
    STATS_ADDED_TYPES,
    TABLES,
    ddl,
    study_stats_sql,
)

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


class IndexStore:
    def __init__(self, dsn: str, database: str) -> None:
        self.database = database
        try:
            self.client = clickhouse_connect.get_client(dsn=dsn)
        except Exception as exc:  # chDB lock errors, connection refused...
            # The DSN may carry a password: never in a message (nor the driver's text of it).
            raise Unavailable(redact(f"cannot open the index at {dsn}: {exc}")) from None
        self._columns: dict[str, list[str]] = {}
        self._types: dict[str, dict[str, str]] = {}
        self.write_lock = threading.Lock()
        self._arrow: Any = None  # see use_arrow()

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
