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
        ds = dcmread(str(path), stop_before_pixels=True, defer_size="64 KB")
        # Touch every element now: pydicom parses lazily and a corrupt value would only
        # surface later, far from the point where we can answer a precise status.
        for _ in ds.iterall():
            pass
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
    except Exception:
        obj = {}
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
