"""DICOM attribute matching (PS3.4 C.2.2.2) translated to ClickHouse SQL with server-side
parameters. Pure functions: no ClickHouse import, unit-tested on their own.

Supported: universal matching (empty value), single value matching, wildcard matching (``*``,
``?``), range matching for DA/TM (``a-b``, ``a-``, ``-b``), list of UID matching (``a\\b``),
multi-valued aggregates (ModalitiesInStudy: any of the listed values). Person names match
case-insensitively (what radiologists expect from a PACS search box).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Attr:
    keyword: str
    level: str  # PATIENT, STUDY, SERIES, IMAGE
    column: str
    vr: str  # DICOM VR of the attribute; "CS[]"/"UI[]" for array aggregates
    match_column: str | None = None  # column used for matching when it differs (TM)
    aggregate: bool = False  # computed over instances: matched after grouping


ATTRIBUTES: dict[str, Attr] = {
    a.keyword: a
    for a in [
        Attr("PatientID", "PATIENT", "patient_id", "LO"),
        Attr("IssuerOfPatientID", "PATIENT", "issuer_of_patient_id", "LO"),
        Attr("PatientName", "PATIENT", "patient_name", "PN"),
        Attr("PatientBirthDate", "PATIENT", "patient_birth_date", "DA"),
        Attr("PatientSex", "PATIENT", "patient_sex", "CS"),
        Attr("NumberOfPatientRelatedStudies", "PATIENT", "n_studies", "IS", aggregate=True),
        Attr("NumberOfPatientRelatedSeries", "PATIENT", "n_series", "IS", aggregate=True),
        Attr("NumberOfPatientRelatedInstances", "PATIENT", "n_instances", "IS", aggregate=True),
        Attr("StudyInstanceUID", "STUDY", "study_uid", "UI"),
        Attr("StudyDate", "STUDY", "study_date", "DA"),
        Attr("StudyTime", "STUDY", "study_time", "TM", match_column="study_time_norm"),
        Attr("AccessionNumber", "STUDY", "accession_number", "SH"),
        Attr("StudyID", "STUDY", "study_id", "SH"),
        Attr("StudyDescription", "STUDY", "study_description", "LO"),
        Attr("ReferringPhysicianName", "STUDY", "referring_physician_name", "PN"),
        Attr("ModalitiesInStudy", "STUDY", "modalities_in_study", "CS[]", aggregate=True),
        Attr("SOPClassesInStudy", "STUDY", "sop_classes_in_study", "UI[]", aggregate=True),
        Attr("NumberOfStudyRelatedSeries", "STUDY", "n_series", "IS", aggregate=True),
        Attr("NumberOfStudyRelatedInstances", "STUDY", "n_instances", "IS", aggregate=True),
        Attr("SeriesInstanceUID", "SERIES", "series_uid", "UI"),
        Attr("Modality", "SERIES", "modality", "CS"),
        Attr("SeriesNumber", "SERIES", "series_number", "IS"),
        Attr("SeriesDescription", "SERIES", "series_description", "LO"),
        Attr("BodyPartExamined", "SERIES", "body_part_examined", "CS"),
        Attr("NumberOfSeriesRelatedInstances", "SERIES", "n_instances", "IS", aggregate=True),
        Attr("SOPInstanceUID", "IMAGE", "sop_uid", "UI"),
        Attr("SOPClassUID", "IMAGE", "sop_class_uid", "UI"),
        Attr("InstanceNumber", "IMAGE", "instance_number", "IS"),
    ]
}

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")


class MatchError(ValueError):
    """The query value cannot be matched (e.g. a malformed range)."""


@dataclass
class Params:
    """Collects server-side parameters ({name:Type}) while building a WHERE clause."""

    values: dict[str, Any] = field(default_factory=dict)

    def add(self, value: Any, ch_type: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{ch_type}}}"


def has_wildcard(value: str) -> bool:
    return "*" in value or "?" in value


def like_pattern(value: str) -> str:
    out = []
    for ch in value:
        if ch in "\\%_":
            out.append("\\" + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _norm_date(s: str) -> str:
    s = s.strip().replace(".", "")  # ACR-NEMA style YYYY.MM.DD
    if s and (len(s) != 8 or not s.isdigit()):
        raise MatchError("not a DA value (YYYYMMDD, or a range of them)")
    return s


def _norm_time(s: str, upper: bool) -> str:
    digits = s.strip().replace(":", "").split(".")[0]
    if digits and (not digits.isdigit() or len(digits) % 2 or len(digits) > 6):
        raise MatchError("not a TM value (HHMMSS, or a range of them)")
    pad = "595959"[len(digits) :] if upper else "000000"[len(digits) :]
    return digits + pad


def condition(attr: Attr, raw: str, params: Params, column: str | None = None) -> str | None:
    """SQL condition for one matching key, or None for universal matching."""
    value = raw.strip()
    if value == "" or value == "*":
        return None
    col = column or attr.match_column or attr.column
    vr = attr.vr

    if vr.endswith("[]"):
        values = [v.strip() for v in value.split("\\") if v.strip()]
        if any(has_wildcard(v) for v in values):
            pats = params.add([like_pattern(v) for v in values], "Array(String)")
            return f"arrayExists(x -> arrayExists(p -> x LIKE p, {pats}), {col})"
        return f"hasAny({col}, {params.add(values, 'Array(String)')})"
    if vr == "UI":
        uids = [v.strip() for v in value.split("\\") if v.strip()]
        if len(uids) == 1:
            return f"{col} = {params.add(uids[0], 'String')}"
        return f"{col} IN {params.add(uids, 'Array(String)')}"
    if vr == "DA":
        if "-" in value:
            lo, _, hi = value.partition("-")
            lo, hi = _norm_date(lo), _norm_date(hi)
            parts = [f"{col} != ''"]
            if lo:
                parts.append(f"{col} >= {params.add(lo, 'String')}")
            if hi:
                parts.append(f"{col} <= {params.add(hi, 'String')}")
            return " AND ".join(parts)
        return f"{col} = {params.add(_norm_date(value), 'String')}"
    if vr == "TM":
        lo, sep, hi = value.partition("-")
        if not sep:
            hi = lo  # a single time matches that whole hour/minute/second
        lo_n = _norm_time(lo, upper=False) if lo.strip() else ""
        hi_n = _norm_time(hi, upper=True) if hi.strip() else ""
        parts = [f"{col} != ''"]
        if lo_n:
            parts.append(f"{col} >= {params.add(lo_n, 'String')}")
        if hi_n:
            parts.append(f"{col} <= {params.add(hi_n, 'String')}")
        return " AND ".join(parts)
    if vr == "IS":
        try:
            nums = [int(v) for v in value.split("\\") if v.strip()]
        except ValueError as exc:
            raise MatchError("not an IS value (integers)") from exc
        return f"{col} IN {params.add(nums, 'Array(Int64)')}"
    if vr == "PN":
        # lowerUTF8, not lower: ClickHouse's lower() folds ASCII only ('MÜLLER' -> 'mÜller').
        if has_wildcard(value):
            return f"lowerUTF8({col}) LIKE lowerUTF8({params.add(like_pattern(value), 'String')})"
        return f"lowerUTF8({col}) = lowerUTF8({params.add(value, 'String')})"
    # CS, SH, LO, AE, ...: case-sensitive (PS3.4 C.2.2.2.1)
    if has_wildcard(value):
        return f"{col} LIKE {params.add(like_pattern(value), 'String')}"
    return f"{col} = {params.add(value, 'String')}"
