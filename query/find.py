"""The find feature: a C-FIND identifier -> matches from the index -> response identifiers.

The matches come from the index port (``Index.search``; its adapter builds the SQL in
processors/index/search.py). Return keys are answered from indexed columns,
or else from the stored DICOM header of the matched entity; an attribute the archive does not
know is returned empty, as PS3.4 C.4.1.1.3.2 allows.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Iterator
from typing import Any, cast

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.tag import Tag
from pydicom.valuerep import PersonName

from strata.common.errors import Invalid
from strata.processors.index.matching import ATTRIBUTES, LEVELS, Attr
from strata.processors.index.port import FindQuery, Index


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


def find(index: Index, q: FindQuery) -> Iterator[Dataset]:
    for row in find_rows(index, q):
        yield to_identifier(q, row)


def find_rows(index: Index, q: FindQuery, timeout: float = 0.0) -> list[dict[str, Any]]:
    """The matches of ``q`` as rows (column name -> value), for to_identifier / to_bytes.

    ``timeout`` (s, 0 = none): the server's limit on the search; a search that outlives it
    raises DeadlineExceeded (from the index adapter)."""
    return index.search(q, timeout)


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
