"""The search SQL of the index adapter (processors/index/store.py): a FindQuery (C-FIND,
QIDO-RS, gRPC search) -> ClickHouse SQL over the index, with the PS3.4 C.2.2.2 matching rules
of processors/index/matching.py, and a result row -> a mapping of column name -> value.

Matching is relational (keys of any level above the query level restrict the result), which
serves both hierarchical and relational SCUs. What a match answers is built from these rows by
query/find.py.
"""

from __future__ import annotations

import json
from typing import Any

from strata.common.errors import Invalid
from strata.processors.index.matching import ATTRIBUTES, LEVELS, MatchError, Params, condition
from strata.processors.index.port import FindQuery
from strata.processors.index.schema import CARD_COLUMNS

_STUDY_COLS = (
    "patient_id, issuer_of_patient_id, patient_name, patient_birth_date, patient_sex, "
    "study_uid, study_date, study_time, study_time_norm, accession_number, study_id, "
    "study_description, referring_physician_name"
)
_SERIES_COLS = "series_uid, modality, series_number, series_description, body_part_examined"
_STUDY_LIST = [c.strip() for c in _STUDY_COLS.split(",")]
_SERIES_LIST = [c.strip() for c in _SERIES_COLS.split(",")]
# The columns each level's query returns, in order (build_sql's third result).
_COLUMNS: dict[str, list[str]] = {
    "PATIENT": [
        "patient_id",
        "issuer_of_patient_id",
        "patient_name",
        "patient_birth_date",
        "patient_sex",
        "header_json",
        "n_studies",
        "n_series",
        "n_instances",
    ],
    "STUDY": _STUDY_LIST
    + ["header_json", "modalities_in_study", "sop_classes_in_study", "n_series", "n_instances"],
    "SERIES": _STUDY_LIST + _SERIES_LIST + ["header_json", "n_instances"],
    "IMAGE": _STUDY_LIST
    + _SERIES_LIST
    + ["sop_uid", "sop_class_uid", "instance_number"]
    + ["header_json"],
}


def build_sql(
    q: FindQuery,
    db: str,
    *,
    only_requested: bool = False,
    extra_columns: tuple[str, ...] = (),
) -> tuple[str, dict[str, Any], list[str]]:
    """SQL, parameters and the list of selected column names for the query; ``row_dict``
    makes a result row the mapping of every column of ``columns(q.level)``.

    ``extra_columns`` (of ``columns(q.level)``): also selected as columns of their own (a
    caller that sorts or pages on them in SQL around this query).
    ``only_requested`` (kept for callers): study-level aggregates are precomputed now
    (study_stats), so every one of them is always returned; it changes nothing."""
    params = Params()
    lvl = LEVELS.index(q.level)
    conds: dict[str, list[str]] = {"plain": [], "agg": []}
    for kw, raw in q.keys:
        attr = ATTRIBUTES.get(kw)
        if attr is None or LEVELS.index(attr.level) > lvl:
            continue  # unknown or lower-level key: return-only / ignored for matching
        if attr.aggregate and attr.level != q.level:
            continue
        try:
            c = condition(attr, raw, params)
        except MatchError as exc:  # names the attribute, never echoes the value (PHI)
            raise Invalid(f"{kw}: {exc}") from exc
        if c:
            conds["agg" if attr.aggregate else "plain"].append(c)
    where = " AND ".join(conds["plain"]) or "1"
    having = " AND ".join(conds["agg"]) or "1"
    limit = int(q.limit)
    cols = list(_COLUMNS[q.level])
    # The stored header (a few KB per row, by far the widest column) is read only when some
    # requested key is not answered from an indexed column; otherwise '' stands in for it
    # (to_identifier never looks at it then).
    need_header = _needs_header(q, cols)
    hdr = "header_json" if need_header else "'' AS header_json"

    if q.level == "PATIENT":
        # Patients grouped from study_stats (one row per current study, its current patient
        # and its series/instance counts): no aggregation over every instance.
        sql = f"""
        SELECT p.patient_id AS patient_id, p.issuer_of_patient_id AS issuer_of_patient_id,
               p.patient_name AS patient_name, p.patient_birth_date AS patient_birth_date,
               p.patient_sex AS patient_sex, {"h.header_json" if need_header else "''"}
               AS header_json, p.n_studies AS n_studies, p.n_series AS n_series,
               p.n_instances AS n_instances
        FROM (
            SELECT patient_id, issuer_of_patient_id,
                   argMax(patient_name, log_version) AS patient_name,
                   argMax(patient_birth_date, log_version) AS patient_birth_date,
                   argMax(patient_sex, log_version) AS patient_sex,
                   count() AS n_studies, sum(n_series) AS n_series,
                   sum(n_instances) AS n_instances
            FROM {db}.study_stats FINAL
            GROUP BY patient_id, issuer_of_patient_id
        ) AS p"""
        if need_header:
            sql += f"""
        INNER JOIN (
            SELECT patient_id, issuer_of_patient_id,
                   argMax(header_json, log_version) AS header_json
            FROM {db}.studies FINAL
            GROUP BY patient_id, issuer_of_patient_id
        ) AS h USING (patient_id, issuer_of_patient_id)"""
        sql += f"""
        WHERE ({where}) AND ({having})
        ORDER BY p.patient_id, p.issuer_of_patient_id
        LIMIT {limit}"""
        return sql, params.values, cols

    if q.level == "STUDY":
        # One table: study_stats holds each current study's attributes (its `studies` row
        # without the header) and its aggregates, kept current by IndexStore.write from
        # `instances` and `studies` FINAL; a study without current instances has a tombstone
        # there, which FINAL drops. What is returned comes as the row's `card` (one JSON
        # column: row_dict expands it), read besides the columns matched and sorted on. The
        # stored header, when some key needs it, comes from `studies` by primary key for the
        # matched studies only.
        matched = f"{db}.study_stats FINAL WHERE ({where}) AND ({having})"
        order = "ORDER BY study_date DESC, study_time DESC, study_uid"
        selected = ["study_uid", "study_date", "study_time"]
        selected += [c for c in extra_columns if c not in selected] + ["card"]
        if not need_header:
            sql = f"""
        SELECT {", ".join(selected)} FROM {matched}
        {order}
        LIMIT {limit}"""
            return sql, params.values, selected
        sql = f"""
        SELECT {", ".join(f"s.{c} AS {c}" for c in selected)}, h.header_json AS header_json
        FROM (SELECT {", ".join(selected)} FROM {matched}) AS s
        INNER JOIN (
            SELECT study_uid, header_json FROM {db}.studies FINAL
            WHERE study_uid IN (SELECT study_uid FROM {matched})
        ) AS h USING (study_uid)
        {order}
        LIMIT {limit}"""
        return sql, params.values, [*selected, "header_json"]

    if q.level == "SERIES":
        study_cols = _STUDY_LIST
        sql = f"""
        SELECT {", ".join(f"s.{c} AS {c}" for c in study_cols)},
               {", ".join(f"se.{c.strip()} AS {c.strip()}" for c in _SERIES_COLS.split(","))},
               se.header_json AS header_json, c.n_instances AS n_instances
        FROM (SELECT study_uid, {_SERIES_COLS}, {hdr} FROM {db}.series FINAL) AS se
        INNER JOIN (SELECT {_STUDY_COLS} FROM {db}.studies FINAL) AS s USING (study_uid)
        INNER JOIN (
            SELECT study_uid, series_uid, count() AS n_instances
            FROM {db}.instances FINAL GROUP BY study_uid, series_uid
        ) AS c USING (study_uid, series_uid)
        WHERE ({where}) AND ({having})
        ORDER BY s.study_uid, se.series_number, se.series_uid
        LIMIT {limit}"""
        return sql, params.values, cols

    select_list = ", ".join(hdr if c == "header_json" else c for c in cols)
    sql = f"""
    SELECT {select_list} FROM {db}.instances FINAL
    WHERE {where}
    ORDER BY study_uid, series_uid, instance_number, sop_uid
    LIMIT {limit}"""
    return sql, params.values, cols


def _needs_header(q: FindQuery, columns: list[str]) -> bool:
    """Whether to_identifier will read the stored header for some key (the same rules)."""
    lvl = LEVELS.index(q.level)
    for kw, _raw in q.keys:
        attr = ATTRIBUTES.get(kw)
        if attr is not None and (
            LEVELS.index(attr.level) > lvl or (attr.aggregate and attr.level != q.level)
        ):
            continue  # returned empty
        if attr is not None and attr.column in columns:
            continue  # answered from a column
        return True
    return False


def time_limit(seconds: float | None) -> str:
    """The SETTINGS clause that makes ClickHouse cut a query after ``seconds`` (throwing
    TIMEOUT_EXCEEDED, which the index adapter raises as DeadlineExceeded); '' for none.
    Appended to the outermost SELECT of every search, so no peer can hold the index longer."""
    if seconds is None or seconds <= 0:
        return ""
    return (
        f" SETTINGS max_execution_time = {max(0.001, float(seconds)):.3f}, "
        "timeout_overflow_mode = 'throw'"
    )


def columns(level: str) -> list[str]:
    """The columns of a row of this level's results (what row_dict returns)."""
    return list(_COLUMNS[level])


def row_dict(cols: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    """A result row of build_sql's query (``cols``: its selected columns) as a mapping of
    column name -> value, the study `card` expanded into its columns."""
    d = dict(zip(cols, row, strict=True))
    card = d.pop("card", None)
    if card is not None:
        values = json.loads(card)
        if isinstance(values, dict):  # a ClickHouse that names tuple elements
            values = list(values.values())
        d.update(zip(CARD_COLUMNS, values, strict=True))
        d["n_series"], d["n_instances"] = int(d["n_series"]), int(d["n_instances"])
        d.setdefault("header_json", "")
    return d


def page_sql(
    inner: str,
    order: str,
    numeric: bool,
    descending: bool,
    uid: str,
    after: bool,
    count: bool,
    page_size: int,
    settings: str,
) -> str:
    """One page of the search ``inner`` (build_sql's, selecting the columns ``order`` and
    ``uid``) ordered by ``order`` (NULL numbers as -1), then ``uid``; ``after``: only rows
    after the parameters cur_v/cur_u; ``count``: a last column __total counting every match
    in the same scan (a window over the whole result, computed before LIMIT)."""
    sort_expr = f"ifNull({order}, -1)" if numeric else order
    cond = "1"
    if after:
        ch_t = "Int64" if numeric else "String"
        cmp = "<" if descending else ">"
        cond = (
            f"({sort_expr} {cmp} {{cur_v:{ch_t}}} OR ({sort_expr} = {{cur_v:{ch_t}}} "
            f"AND {uid} > {{cur_u:String}}))"
        )
    counted = ", count() OVER () AS __total" if count else ""
    return (
        f"SELECT *{counted} FROM ({inner}) WHERE {cond} "
        f"ORDER BY {sort_expr} {'DESC' if descending else 'ASC'}, {uid} ASC "
        f"LIMIT {page_size + 1}{settings}"
    )


# Keys a retrieve may carry (PS3.4 C.4.2.1.4: unique keys; PatientID for Patient Root).
RETRIEVE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


def locate_sql(keys: dict[str, str], db: str, limit: int) -> tuple[str, dict[str, Any]]:
    """The current instances named by the unique keys of a retrieve: SQL and parameters."""
    params = Params()
    conds = []
    for kw in RETRIEVE_KEYS:
        raw = keys.get(kw, "")
        if not raw.strip():
            continue
        try:
            c = condition(ATTRIBUTES[kw], raw, params)
        except MatchError as exc:
            raise Invalid(str(exc)) from exc
        if c:
            conds.append(c)
    sql = f"""SELECT study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax_uid, tier,
                   storage_key, size_bytes, sha256
            FROM {db}.instances FINAL
            WHERE {" AND ".join(conds)}
            ORDER BY study_uid, series_uid, instance_number, sop_uid
            LIMIT {int(limit) + 1}"""
    return sql, params.values
