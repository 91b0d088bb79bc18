"""The find feature: a C-FIND identifier -> matches from the index -> response identifiers.

Matching is relational (keys of any level above the query level restrict the result) which
serves both hierarchical and relational SCUs. Return keys are answered from indexed columns,
or else from the stored DICOM header of the matched entity; an attribute the archive does not
know is returned empty, as PS3.4 C.4.1.1.3.2 allows.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, cast

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from common.errors import Invalid
from processors.index.schema import CARD_COLUMNS
from query.matching import ATTRIBUTES, LEVELS, Attr, MatchError, Params, condition

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


class Index(Protocol):
    database: str

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class FindQuery:
    level: str
    keys: list[tuple[str, str]]  # (keyword, raw query value) for every key in the identifier
    limit: int


def parse_identifier(identifier: Dataset, limit: int) -> FindQuery:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in LEVELS:
        raise Invalid(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    keys: list[tuple[str, str]] = []
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        if elem.VR == "SQ":
            keys.append((kw, ""))  # sequence matching not supported: universal
            continue
        value = elem.value
        if value is None:
            raw = ""
        elif isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
            raw = "\\".join(str(v) for v in value)
        else:
            raw = str(value)
        keys.append((kw, raw))
    return FindQuery(level, keys, limit)


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


def find(index: Index, q: FindQuery) -> Iterator[Dataset]:
    for row in find_rows(index, q):
        yield to_identifier(q, row)


def find_rows(index: Index, q: FindQuery, timeout: float = 0.0) -> list[dict[str, Any]]:
    """The matches of ``q`` as rows (column name -> value), for to_identifier / to_bytes.

    ``timeout`` (s, 0 = none): the server's limit on the search (``time_limit``); a search
    that outlives it raises DeadlineExceeded (from the index adapter)."""
    sql, params, cols = build_sql(q, index.database, only_requested=True)
    return [row_dict(cols, row) for row in index.query(sql + time_limit(timeout), params)]


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


def _format(attr: Attr, value: Any) -> Any:
    if value is None:
        return None
    if attr.vr.endswith("[]"):
        return list(value)
    if attr.vr == "IS":
        return str(value)
    return value


@functools.lru_cache(maxsize=512)
def _plan(
    level: str, keywords: tuple[str, ...]
) -> tuple[tuple[str, Any, str, Attr | None, bool], ...]:
    """Per key of a query, what to_identifier does with it (computed once per key list):
    (keyword, tag, VR, attribute, returned empty because not known at this level)."""
    lvl = LEVELS.index(level)
    out = []
    for kw in keywords:
        attr = ATTRIBUTES.get(kw)
        empty = attr is not None and (
            LEVELS.index(attr.level) > lvl or (attr.aggregate and attr.level != level)
        )
        tag = Tag(cast(int, tag_for_keyword(kw))) if attr is not None else None
        out.append((kw, tag, dictionary_VR(tag) if tag is not None else "", attr, empty))
    return tuple(out)


def to_identifier(q: FindQuery, row: dict[str, Any]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = q.level
    header: dict[str, Any] | None = None
    # What ``setattr(ds, keyword, value)`` does for a new keyword, without its keyword lookups:
    # a DataElement of the dictionary VR stored under the tag.
    ascii_only = True
    from_header = False
    for kw, tag, vr, attr, empty in _plan(q.level, tuple(kw for kw, _raw in q.keys)):
        if empty:
            # Not known at this level: a lower-level key would otherwise be answered from one
            # arbitrary instance's header, and another level's count from this level's column
            # of the same name (n_instances, n_series). Return it empty.
            ds[tag] = DataElement(tag, vr, None)
            continue
        if attr is not None and attr.column in row:
            value = _format(attr, row[attr.column])
            if value in (None, ""):
                value = None
            elif ascii_only:
                ascii_only = _ascii(value)
            ds[tag] = DataElement(tag, vr, value)
            continue
        if header is None:
            header = json.loads(row.get("header_json") or "{}")
        _from_header(ds, kw, header)
        from_header = True
    # Column values are str/int/list of str: checked as they were set; an element from the
    # header (sequences, other VRs) is checked the thorough way.
    if not ascii_only or (from_header and _needs_utf8(ds)):
        ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


@functools.lru_cache(maxsize=512)
def _direct_plan(
    level: str, keywords: tuple[str, ...]
) -> tuple[tuple[int, str, Attr | None], ...] | None:
    """_plan for the direct writers: (tag, VR, attribute or None when returned empty) per
    distinct tag in tag order; None when some key is answered from the stored header."""
    entries: dict[int, tuple[int, str, Attr | None]] = {}
    for _kw, tag, vr, attr, empty in _plan(level, keywords):
        if not empty and attr is None:
            return None
        entries[int(tag)] = (int(tag), vr, None if empty else attr)
    return tuple(entries[t] for t in sorted(entries))


def _direct(q: FindQuery, row: dict[str, Any]) -> tuple[list[tuple[int, str, Any]], bool] | None:
    """The response identifier's elements as (tag, VR, values: a list of plain strings or
    None for an empty element) in tag order, without the Query/Retrieve Level, and whether a
    value is not ASCII; None when some value is not a plain one (see to_json)."""
    plan = _direct_plan(q.level, tuple(kw for kw, _raw in q.keys))
    if plan is None:
        return None
    out: list[tuple[int, str, Any]] = []
    non_ascii = False
    for tag, vr, attr in plan:
        if attr is None:
            out.append((tag, vr, None))
            continue
        column = attr.column
        if column not in row:
            return None
        value = _format(attr, row[column])
        if value in (None, "") or value == []:
            out.append((tag, vr, None))
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if type(v) is not str or not _plain(v, vr):
                return None
            if not non_ascii and not v.isascii():
                non_ascii = True
        out.append((tag, vr, values))
    return out, non_ascii


_esc = json.encoder.encode_basestring_ascii  # type: ignore[attr-defined]
_NOT_DIRECT_JSON = frozenset({"DS", "AT", "SQ", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})


def to_json(q: FindQuery, row: dict[str, Any]) -> str:
    """``to_identifier(q, row).to_json()`` (DICOM JSON, keys sorted), written directly when
    every value is a plain one: printable strings (ASCII but for the VRs pydicom writes in the
    Specific Character Set) without the characters pydicom would interpret (backslash:
    multi-values, '=': person name groups), edge spaces or control characters, and no key
    answered from the stored header. Anything else goes the pydicom way, so the text is
    always the same: json.dumps(sort_keys=True) of {"vr", "Value"} objects, i.e. "Value"
    first, ', ' and ': ' separators, non-ASCII escaped."""
    direct = _direct(q, row)
    if direct is None:
        return to_identifier(q, row).to_json()
    elements, non_ascii = direct
    parts = {_LEVEL_TAG: f'"00080052": {{"Value": [{_esc(q.level)}], "vr": "CS"}}'}
    if non_ascii:  # what to_identifier declares for it
        parts[_CHARSET_TAG] = '"00080005": {"Value": ["ISO_IR 192"], "vr": "CS"}'
    for tag, vr, values in elements:
        if values is None:
            parts[tag] = f'"{tag:08X}": {{"vr": "{vr}"}}'
            continue
        if vr == "PN":
            items = ", ".join(f'{{"Alphabetic": {_esc(v)}}}' for v in values)
        elif vr == "IS":
            items = ", ".join(str(int(v)) for v in values)
        elif vr in _NOT_DIRECT_JSON:
            return to_identifier(q, row).to_json()
        else:
            items = ", ".join(_esc(v) for v in values)
        parts[tag] = f'"{tag:08X}": {{"Value": [{items}], "vr": "{vr}"}}'
    return "{" + ", ".join(parts[t] for t in sorted(parts)) + "}"


# VRs written directly by to_bytes: text with a 2-byte length in explicit VR.
_TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UI"}
)
_LEVEL_TAG = 0x00080052


def _element(tag: int, vr: str, value: bytes, implicit: bool) -> bytes:
    if implicit:
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, len(value)) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(value)) + value


def to_bytes(q: FindQuery, row: dict[str, Any], implicit: bool, little: bool = True) -> bytes:
    """``to_identifier(q, row)`` encoded for a C-FIND response in a little endian transfer
    syntax (implicit or explicit VR), written directly when every value is a plain one (the
    rules of to_json); anything else is encoded by pydicom as before, so the bytes are always
    the same (tested against pydicom for random rows). ~10 us a match instead of ~300."""
    direct = _direct(q, row) if little else None
    if direct is not None:
        elements, non_ascii = direct
        out = {_LEVEL_TAG: _element(_LEVEL_TAG, "CS", _pad(q.level, "CS"), implicit)}
        if non_ascii:
            out[_CHARSET_TAG] = _element(_CHARSET_TAG, "CS", _UTF8, implicit)
        for tag, vr, values in elements:
            if vr not in _TEXT_VRS:
                break
            if values is None:
                out[tag] = _element(tag, vr, b"", implicit)
                continue
            if vr == "IS" and not all(v.isdigit() and str(int(v)) == v for v in values):
                break
            raw = _pad("\\".join(values), vr)
            if len(raw) > 0xFFFF:
                break
            out[tag] = _element(tag, vr, raw, implicit)
        else:
            return b"".join(out[t] for t in sorted(out))
    from pynetdicom.dsutils import encode

    data = encode(to_identifier(q, row), implicit, little)
    if data is None:
        raise Invalid("a match cannot be encoded as a response identifier")
    return data


def _pad(text: str, vr: str) -> bytes:
    raw = text.encode("utf-8")  # ASCII but for the _UTF8_VRS (see _plain)
    if len(raw) % 2:
        raw += b"\0" if vr == "UI" else b" "
    return raw


# Text VRs that pydicom writes in the dataset's Specific Character Set: their values may be
# any printable text, written directly as UTF-8 under the (0008,0005) 'ISO_IR 192' that
# to_identifier declares for a non-ASCII value. Other VRs: ASCII only, else the pydicom way.
_UTF8_VRS = frozenset({"PN", "LO", "SH", "ST", "LT"})
_CHARSET_TAG = 0x00080005
_UTF8 = b"ISO_IR 192"


def _plain(v: str, vr: str = "") -> bool:
    return (
        (v.isascii() or vr in _UTF8_VRS)
        and v.isprintable()
        and "\\" not in v
        and "=" not in v
        and v == v.strip()
        and v != ""
    )


def _ascii(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii()
    if isinstance(value, list):
        return all(not isinstance(v, str) or v.isascii() for v in value)
    return True


def _from_header(ds: Dataset, keyword: str, header: dict[str, Any]) -> None:
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    key = f"{tag:08X}"
    if key in header:
        try:
            elem = Dataset.from_json({key: header[key]})[tag]
            ds.add(elem)
            return
        except Exception:
            pass
    ds.add_new(tag, dictionary_VR(tag), None)


def _needs_utf8(ds: Dataset) -> bool:
    # iterall: values inside sequences (e.g. CodeMeaning) and every value of a multi-valued
    # attribute count too, or they would go out undeclared in the default repertoire.
    for elem in ds.iterall():
        if elem.VR == "SQ" or elem.value is None:
            continue
        values = elem.value if elem.VM > 1 else [elem.value]
        if any(isinstance(v, str | PersonName) and not str(v).isascii() for v in values):
            return True
    return False
