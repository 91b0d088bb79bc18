"""DICOM helpers shared by every context: header reading, UID checks, DICOM JSON without bulk."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from common.errors import Invalid

# VRs whose values can be large binary blobs: omitted from the stored header.
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def is_valid_uid(uid: str) -> bool:
    """PS3.5 9.1 UID syntax: digits and dots, at most 64 characters. (Leading zeros inside a
    component are tolerated: real equipment sends them and rejecting them loses images.)"""
    return bool(uid) and len(uid) <= 64 and bool(_UID_RE.match(uid))


def read_header(path: Path) -> Dataset:
    """Read a Part 10 file up to (not including) Pixel Data. Raises Invalid on a bad file."""
    try:
        # Structure (lengths, nesting) is checked by check_structure; values decode lazily.
        ds = dcmread(str(path), stop_before_pixels=True, defer_size="64 KB")
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise Invalid(f"dataset cannot be decoded: {type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # pydicom raises a zoo of errors on corrupt input
        raise Invalid(f"dataset cannot be decoded: {type(exc).__name__}") from exc
    return ds


def text(ds: Dataset, keyword: str) -> str:
    """The value of a string attribute as text ('' when absent/empty); multi-values joined by
    backslash as on the wire; person names as their DICOM string form."""
    try:
        value = ds.get(keyword)
    except Exception:
        return ""
    if value is None or value == "":
        return ""
    if isinstance(value, list | tuple) or value.__class__.__name__ == "MultiValue":
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def header_json(ds: Dataset) -> str:
    """DICOM JSON (PS3.18 F.2) of the dataset without bulk data (large binary values dropped)."""

    def strip(d: Dataset) -> Dataset:
        out = Dataset()
        for elem in d:
            if elem.VR in BULK_VRS:
                try:
                    if elem.value is not None and len(elem.value) > BULK_THRESHOLD:
                        continue
                except TypeError:
                    continue
            if elem.VR == "SQ":
                seq = [strip(item) for item in elem.value]
                out.add_new(elem.tag, "SQ", seq)
            else:
                out.add(elem)
        return out

    try:
        obj: dict[str, Any] = strip(ds).to_json_dict(suppress_invalid_tags=True)
    except Exception as exc:  # never fail a store over the header copy, but say so
        import logging

        logging.getLogger(__name__).warning("header not convertible to DICOM JSON: %s", exc)
        obj = {}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- structure check
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"UC",
    b"UR",
    b"UT",
    b"UN",
    b"SV",
    b"UV",
}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
_EXPLICIT_VR_BIG = "1.2.840.10008.1.2.2"
_IMPLICIT_VR = "1.2.840.10008.1.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


def check_structure(path: Path) -> None:
    """Walk the whole encoded dataset (tags, VRs, lengths, sequences, items, encapsulated
    fragments) without decoding values, and raise Invalid if it is truncated or malformed.

    pydicom stops silently at a truncated element; an archive must not acknowledge such an
    object as if it were whole. Cost: one pass over element headers (values are skipped)."""
    import mmap
    import struct
    import zlib

    with open(path, "rb") as f:
        data: bytes | mmap.mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        if len(data) < 132 or data[128:132] != b"DICM":
            raise Invalid("not a DICOM Part 10 stream")
        # File meta: explicit VR little endian group 0002.
        pos = 132
        ts = ""
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
            elem = struct.unpack_from("<H", data, pos + 2)[0]
            vr = bytes(data[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                length = struct.unpack_from("<I", data, pos + 8)[0]
                hdr = 12
            else:
                length = struct.unpack_from("<H", data, pos + 6)[0]
                hdr = 8
            if pos + hdr + length > len(data):
                raise Invalid("file meta information is truncated")
            if elem == 0x0010:
                ts = (
                    bytes(data[pos + hdr : pos + hdr + length])
                    .rstrip(b"\0 ")
                    .decode("ascii", "replace")
                )
            pos += hdr + length
        body: bytes | mmap.mmap = data
        if ts in _DEFLATED:
            try:
                body = b"\0" * pos + zlib.decompress(bytes(data[pos:]), -zlib.MAX_WBITS)
            except zlib.error as exc:
                raise Invalid(f"deflated dataset cannot be inflated: {exc}") from exc
        _walk(
            body,
            pos,
            len(body),
            explicit=ts != _IMPLICIT_VR,
            little=ts != _EXPLICIT_VR_BIG,
            depth=0,
        )
    finally:
        if isinstance(data, mmap.mmap):
            data.close()


def _walk(data: Any, pos: int, end: int, explicit: bool, little: bool, depth: int) -> int:
    """Walk elements in [pos, end) (end may be 'until delimiter' when called for undefined
    length items: then returns the position after the delimiter)."""
    import struct

    if depth > 32:
        raise Invalid("sequences nested too deeply")
    e = "<" if little else ">"
    while pos < end:
        if pos + 8 > end:
            raise Invalid(f"truncated element header at byte {pos}")
        group, elem = struct.unpack_from(e + "HH", data, pos)
        tag = (group << 16) | elem
        if tag in (_ITEM_END, _SEQ_END):
            return pos  # caller handles delimiters
        if group == 0xFFFE:
            raise Invalid(f"unexpected item tag at byte {pos}")
        if explicit:
            vr = bytes(data[pos + 4 : pos + 6])
            if not (vr.isalpha() and vr.isupper()):
                raise Invalid(f"invalid VR at byte {pos}")
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise Invalid(f"truncated element header at byte {pos}")
                length = struct.unpack_from(e + "I", data, pos + 8)[0]
                pos += 12
            else:
                length = struct.unpack_from(e + "H", data, pos + 6)[0]
                pos += 8
            is_sq = vr == b"SQ"
            is_un = vr == b"UN"
        else:
            is_un = False
            length = struct.unpack_from(e + "I", data, pos + 4)[0]
            pos += 8
            is_sq = False
            if length != _UNDEFINED:
                from pydicom.datadict import dictionary_VR

                try:
                    is_sq = dictionary_VR(tag) == "SQ"
                except KeyError:
                    is_sq = False
        if length == _UNDEFINED:
            if tag == _PIXEL_DATA:
                pos = _walk_fragments(data, pos, end, e)
            else:
                # A sequence. UN with undefined length holds implicit VR items (PS3.5 6.2.2).
                pos = _walk_items(
                    data, pos, end, explicit and not is_un, little, depth, until_delimiter=True
                )
            continue
        if pos + length > end:
            raise Invalid(
                f"element ({group:04X},{elem:04X}) is truncated: "
                f"{length} bytes declared, {end - pos} left"
            )
        if is_sq:
            _walk_items(data, pos, pos + length, explicit, little, depth, until_delimiter=False)
        pos += length
    return pos


def _walk_items(
    data: Any, pos: int, end: int, explicit: bool, little: bool, depth: int, until_delimiter: bool
) -> int:
    import struct

    e = "<" if little else ">"
    limit = len(data) if until_delimiter else end
    while pos < limit:
        if pos + 8 > limit:
            raise Invalid(f"truncated item header at byte {pos}")
        group, elem = struct.unpack_from(e + "HH", data, pos)
        tag = (group << 16) | elem
        length = struct.unpack_from(e + "I", data, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM:
            raise Invalid(f"expected an item at byte {pos - 8}")
        if length == _UNDEFINED:
            pos = _walk(data, pos, limit, explicit, little, depth + 1)
            if pos + 8 > limit:
                raise Invalid("item without delimiter")
            g2, e2 = struct.unpack_from(e + "HH", data, pos)
            if ((g2 << 16) | e2) != _ITEM_END:
                raise Invalid(f"expected an item delimiter at byte {pos}")
            pos += 8
        else:
            if pos + length > limit:
                raise Invalid(f"item truncated at byte {pos}")
            _walk(data, pos, pos + length, explicit, little, depth + 1)
            pos += length
    if until_delimiter:
        raise Invalid("sequence without delimiter (truncated)")
    return pos


def _walk_fragments(data: Any, pos: int, end: int, e: str) -> int:
    import struct

    while True:
        if pos + 8 > end:
            raise Invalid("encapsulated pixel data is truncated")
        group, elem = struct.unpack_from(e + "HH", data, pos)
        tag = (group << 16) | elem
        length = struct.unpack_from(e + "I", data, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END:
            return pos
        if tag != _ITEM or length == _UNDEFINED:
            raise Invalid("malformed encapsulated pixel data")
        if pos + length > end:
            raise Invalid("encapsulated pixel data fragment is truncated")
        pos += length
