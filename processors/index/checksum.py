"""Deterministic checksums of the index, to prove a rebuilt index equals the live one.

Per table: row count and the sum (mod 2^64) of cityHash64 over every column of every current
row (FINAL): independent of insertion order and of merges. Per study: the same, grouped by
study. Two indexes built from the same log prefix give identical checksums (docs/design.md,
section 1.2: state is a pure function of the log).
"""

from __future__ import annotations

from typing import Any, Protocol

from processors.index.schema import TABLES


class Queryable(Protocol):
    database: str

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...


def positions(index: Queryable) -> dict[str, dict[int, int]]:
    """Next offset to read per topic and partition, as far as this index has applied the log."""
    out: dict[str, dict[int, int]] = {}
    rows = index.query(
        f"SELECT topic, log_partition, max(log_offset) + 1 FROM {index.database}.events "
        "GROUP BY topic, log_partition"
    )
    for topic, part, nxt in rows:
        out.setdefault(str(topic), {})[int(part)] = int(nxt)
    return out


def table_checksums(index: Queryable) -> dict[str, tuple[int, int]]:
    db = index.database
    out = {}
    for t in TABLES:
        [(n, h)] = index.query(f"SELECT count(), sum(cityHash64(*)) FROM {db}.{t} FINAL")
        # sum() over FINAL rows that are all tombstones comes back NULL from ClickHouse: 0
        out[t] = (int(n), int(h or 0))
    return out


def study_checksums(index: Queryable) -> dict[str, int]:
    """Per study, a checksum over its rows in every study-scoped table."""
    db = index.database
    parts = " UNION ALL ".join(
        f"SELECT study_uid, cityHash64(*) AS h FROM {db}.{t} FINAL" for t in TABLES
    )
    rows = index.query(f"SELECT study_uid, sum(h) FROM ({parts}) GROUP BY study_uid")
    return {str(s): int(h) for s, h in rows}


def snapshot(index: Queryable) -> dict[str, Any]:
    return {
        "positions": positions(index),
        "tables": {t: list(v) for t, v in table_checksums(index).items()},
        "studies": study_checksums(index),
    }


def compare(live: dict[str, Any], rebuilt: dict[str, Any]) -> list[str]:
    """Human-readable differences (empty when equal)."""
    diffs = []
    if live["positions"] != rebuilt["positions"]:
        diffs.append(
            f"log positions differ: live {live['positions']} rebuilt {rebuilt['positions']}"
        )
    for t in sorted(set(live["tables"]) | set(rebuilt["tables"])):
        a, b = live["tables"].get(t), rebuilt["tables"].get(t)
        if a != b:
            diffs.append(f"table {t}: live rows/checksum {a} != rebuilt {b}")
    ls, rs = live["studies"], rebuilt["studies"]
    for s in sorted(set(ls) | set(rs)):
        if ls.get(s) != rs.get(s):
            diffs.append(f"study {s or '(none)'}: live {ls.get(s)} != rebuilt {rs.get(s)}")
    return diffs
