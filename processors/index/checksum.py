"""Deterministic checksums of the index, to prove a rebuilt index equals the live one.

Per table: row count and the sum (mod 2^64) of cityHash64 over every column of every current
row (FINAL): independent of insertion order and of merges. Per study: the same, grouped by
study. Two indexes built from the same log prefix give identical checksums (docs/design.md,
section 1.2: state is a pure function of the log). The SQL is the index adapter's
(processors/index/store.py, IndexStore.table_checksums / study_checksums / positions).
"""

from __future__ import annotations

from typing import Any

from strata.processors.index.port import Index


def positions(index: Index) -> dict[str, dict[int, int]]:
    """Next offset to read per topic and partition, as far as this index has applied the log."""
    return index.positions()


def table_checksums(index: Index) -> dict[str, tuple[int, int]]:
    return index.table_checksums()


def study_checksums(index: Index) -> dict[str, int]:
    """Per study, a checksum over its rows in every study-scoped table."""
    return index.study_checksums()


def snapshot(index: Index) -> dict[str, Any]:
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
