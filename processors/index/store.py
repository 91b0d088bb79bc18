"""ClickHouse adapter of the index (chDB in-process or a server over HTTP: one code path, the
DSN decides). Vendor errors become common.errors here."""

from __future__ import annotations

import contextlib
import logging
import threading
from operator import itemgetter
from typing import Any

import clickhouse_connect
from clickhouse_connect.driver.exceptions import ClickHouseError

from common.errors import Unavailable
from processors.index.projection import Rows
from processors.index.schema import DELETABLE, KEYS, TABLES, VERSIONS, ddl, study_stats_sql

log = logging.getLogger(__name__)

# Tables that get many rows per key in one batch (every instance event of a series/study
# writes its series and study row): only the row that survives FINAL is inserted.
DEDUPLICATED = ("series", "studies")


def latest_per_key(table: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows of ``table`` that ReplacingMergeTree would keep: per key (ORDER BY), the row
    with the highest version, the last one among equal versions. Inserting only these gives the
    same FINAL result as inserting all of them (a later batch still supersedes them)."""
    key = itemgetter(*KEYS[table])
    version = VERSIONS[table]
    best: dict[Any, dict[str, Any]] = {}
    for r in rows:
        k = key(r)
        cur = best.get(k)
        if cur is None or r[version] >= cur[version]:
            best[k] = r
    return list(best.values())


class IndexStore:
    def __init__(self, dsn: str, database: str) -> None:
        self.database = database
        try:
            self.client = clickhouse_connect.get_client(dsn=dsn)
        except Exception as exc:  # chDB lock errors, connection refused...
            raise Unavailable(f"cannot open the index at {dsn}: {exc}") from exc
        self._columns: dict[str, list[str]] = {}
        self.write_lock = threading.Lock()

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
        if not had_stats:
            # An index made before study_stats existed: derive it from its instances.
            self.client.command(study_stats_sql(self.database, "1"))
            log.info("index table study_stats filled from instances")
        for table in TABLES:
            cols = self.client.query(
                "SELECT name FROM system.columns WHERE database={db:String} AND table={t:String} "
                "ORDER BY position",
                parameters={"db": self.database, "t": table},
            ).result_rows
            self._columns[table] = [c[0] for c in cols]

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

    def write(self, rows: Rows) -> int:
        """Insert rows (idempotent: versions collapse on log position)."""
        n = 0
        # The events table last (after study_stats too): its highest offsets are the index's
        # log position (read by the checks that gate the stability and lifecycle processors,
        # and by strata verify), so a position is only visible once the whole batch is.
        # The lock: a checksum snapshot (strata verify) never sees half a batch.
        with self.write_lock:
            try:
                for table, rs in rows.items():
                    if table != "events":
                        n += self._insert(table, rs)
                studies = {r["study_uid"] for r in rows.get("instances", ())}
                if studies:
                    # After the instances: the touched studies' aggregates from their rows.
                    self.client.command(
                        study_stats_sql(self.database, "study_uid IN {studies:Array(String)}"),
                        parameters={"studies": sorted(studies)},
                    )
                n += self._insert("events", rows.get("events", []))
            except ClickHouseError as exc:
                raise Unavailable(f"index write failed: {exc}") from exc
        return n

    def _insert(self, table: str, rs: list[dict[str, Any]]) -> int:
        if not rs:
            return 0
        n = len(rs)
        if table in DEDUPLICATED and n > 1:
            rs = latest_per_key(table, rs)
        cols = self._columns[table]
        # Column-oriented: no per-row tuples to build and pivot again in the driver.
        data = [[r[c] for r in rs] for c in cols]
        self.client.insert(
            f"{self.database}.{table}", data, column_names=cols, column_oriented=True
        )
        return n

    def query(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        try:
            return list(self.client.query(sql, parameters=parameters or {}).result_rows)
        except ClickHouseError as exc:
            raise Unavailable(f"index query failed: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort at shutdown
            self.client.close()
