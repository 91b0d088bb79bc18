"""Events -> index rows. Pure: rows depend only on the event and its log position (no clock, no
random ids), so replaying the log into an empty store rebuilds the same index."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from proto.strata.v1 import events_pb2 as pb

Row = dict[str, Any]
Rows = dict[str, list[Row]]

# DICOM JSON tags of the attributes indexed as columns.
_T = {
    "PatientName": "00100010",
    "PatientBirthDate": "00100030",
    "PatientSex": "00100040",
    "StudyDate": "00080020",
    "StudyTime": "00080030",
    "AccessionNumber": "00080050",
    "StudyID": "00200010",
    "StudyDescription": "00081030",
    "ReferringPhysicianName": "00080090",
    "SeriesNumber": "00200011",
    "SeriesDescription": "0008103E",
    "BodyPartExamined": "00180015",
    "InstanceNumber": "00200013",
}


def json_value(header: dict[str, Any], tag: str) -> str:
    """First-level attribute value from DICOM JSON as the DICOM string form ('' if absent)."""
    elem = header.get(tag)
    if not elem:
        return ""
    values = elem.get("Value") or []
    out = []
    for v in values:
        if isinstance(v, dict):  # PN: {"Alphabetic": ..., "Ideographic": ..., "Phonetic": ...}
            groups = [v.get("Alphabetic", ""), v.get("Ideographic", ""), v.get("Phonetic", "")]
            while groups and not groups[-1]:
                groups.pop()
            out.append("=".join(groups))
        elif v is None:  # an empty value inside a multi-valued attribute (PS3.18 F.2.5)
            out.append("")
        else:
            out.append(str(v))
    return "\\".join(out).strip()


def norm_time(tm: str) -> str:
    """TM -> 'HHMMSS' (fraction dropped, missing parts zero) for range matching; '' if absent."""
    digits = tm.replace(":", "").split(".")[0].strip()
    if not digits.isdigit():
        return ""
    return (digits + "000000")[:6]


def _int_or_none(s: str) -> int | None:
    try:
        return int(s.split("\\")[0])
    except ValueError:
        return None


def rows_for(env: pb.Envelope, partition: int, offset: int) -> Rows:
    kind = env.WhichOneof("payload")
    if kind != "instance_stored":
        return {}
    e = env.instance_stored
    header = json.loads(e.header_json) if e.header_json else {}

    def v(name: str) -> str:
        return json_value(header, _T[name])

    log = {
        "log_partition": partition,
        "log_offset": offset,
        "log_version": offset,
        "event_id": env.event_id,
    }
    patient = {
        "patient_id": e.patient.patient_id,
        "issuer_of_patient_id": e.patient.issuer_of_patient_id,
        "patient_name": v("PatientName"),
        "patient_birth_date": v("PatientBirthDate"),
        "patient_sex": v("PatientSex"),
    }
    study_time = v("StudyTime")
    study = {
        "study_uid": e.study_instance_uid,
        "study_date": v("StudyDate"),
        "study_time": study_time,
        "study_time_norm": norm_time(study_time),
        "accession_number": v("AccessionNumber"),
        "study_id": v("StudyID"),
        "study_description": v("StudyDescription"),
        "referring_physician_name": v("ReferringPhysicianName"),
    }
    series = {
        "series_uid": e.series_instance_uid,
        "modality": e.modality,
        "series_number": _int_or_none(v("SeriesNumber")),
        "series_description": v("SeriesDescription"),
        "body_part_examined": v("BodyPartExamined"),
    }
    instance = {
        **patient,
        **study,
        **series,
        "sop_uid": e.sop_instance_uid,
        "sop_class_uid": e.sop_class_uid,
        "instance_number": _int_or_none(v("InstanceNumber")),
        "transfer_syntax_uid": e.transfer_syntax_uid,
        "size_bytes": e.size_bytes,
        "sha256": e.sha256,
        "tier": e.location.tier,
        "storage_key": e.location.key,
        "calling_ae_title": e.calling_ae_title,
        "called_ae_title": e.called_ae_title,
        "ingest_node": e.ingest_node,
        "received_at": e.received_at.ToDatetime(tzinfo=UTC)
        if e.HasField("received_at")
        else datetime.fromtimestamp(0, UTC),
        "header_json": e.header_json,
        **log,
    }
    version = {
        "study_uid": e.study_instance_uid,
        "series_uid": e.series_instance_uid,
        "sop_uid": e.sop_instance_uid,
        "sha256": e.sha256,
        "supersedes_sha256": e.supersedes_sha256,
        "size_bytes": e.size_bytes,
        "tier": e.location.tier,
        "storage_key": e.location.key,
        "calling_ae_title": e.calling_ae_title,
        "received_at": instance["received_at"],
        **log,
    }
    return {
        "instances": [instance],
        "instance_versions": [version],
        "series": [
            {"study_uid": e.study_instance_uid, **series, "header_json": e.header_json, **log}
        ],
        "studies": [{**patient, **study, "header_json": e.header_json, **log}],
    }


def merge(batch: list[Rows]) -> Rows:
    out: Rows = {}
    for rows in batch:
        for table, rs in rows.items():
            out.setdefault(table, []).extend(rs)
    return out
