"""Events -> index rows. Pure: rows depend only on the event and its log position (no clock, no
random ids), so replaying the log into an empty store rebuilds the same index."""

from __future__ import annotations

import json
import re
from datetime import datetime
from json.encoder import encode_basestring_ascii
from math import floor
from typing import Any

import msgspec
from google.protobuf.timestamp_pb2 import Timestamp

from strata.common.events import event_time
from strata.processors.index.routing import routing_rows
from strata.proto.strata.v1 import events_pb2 as pb

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
    return _values_text(elem.get("Value") or [])


def _values_text(values: list[Any]) -> str:
    """The DICOM string form of one attribute's JSON "Value" list (json_value's second half)."""
    if len(values) == 1 and type(values[0]) is str:  # the common case, same result as below
        return values[0].strip()
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


class _Element(msgspec.Struct):
    Value: list[Any] = []


# A decoder of just the indexed attributes of a header: msgspec skips every other element
# without building it (~2.5x faster than json.loads of the whole ~3.3 KB header, which was half
# of the projection's time). It yields the same Python values as json.loads for these
# attributes; anything it refuses (NaN, lone surrogates, a "Value": null, a non-object
# element...) goes through json.loads and json_value as before, so the rows are identical.
_Indexed = msgspec.defstruct(
    "_Indexed",
    [(name, _Element | None, None) for name in _T],
    rename=_T,
)
_INDEXED = msgspec.json.Decoder(_Indexed)


_NAMES = tuple(_T)
_TAGS = tuple(_T.values())
_astuple = msgspec.structs.astuple


# The same decoder keeping each indexed element as its raw JSON text (building the elements as
# objects cost more than skipping the rest of the header). An element of the shapes ingest
# writes for these attributes - one plain string, one PN with only an alphabetic group, one
# integer, or no value - is read from its text by _SIMPLE; any other is decoded by _ELEMENT,
# as _INDEXED would have. Plain means no escape, quote or control character in the JSON string,
# so its text is the value; a JSON integer without a leading zero or "-0" reads back as itself.
_ABSENT = msgspec.Raw(b"null")
_RawIndexed = msgspec.defstruct(
    "_RawIndexed",
    [(name, msgspec.Raw, _ABSENT) for name in _T],
    rename=_T,
    gc=False,
)
_RAW_INDEXED = msgspec.json.Decoder(_RawIndexed)
_ELEMENT = msgspec.json.Decoder(_Element | None)
_SIMPLE = re.compile(
    rb'\{"vr":"[A-Z]{2}"(?:,"Value":\[(?:"([^"\\\x00-\x1f]*)"'
    rb'|\{"Alphabetic":"([^"\\\x00-\x1f]*)"\}'
    rb"|(0|-?[1-9][0-9]{0,17}))\])?\}"
)
_simple = _SIMPLE.fullmatch


def _element_text(raw: bytes) -> str:
    """One indexed element's raw JSON text -> json_value's string; msgspec errors propagate."""
    m = _simple(raw)
    if m is not None:
        text, alphabetic, number = m.groups()
        if text is not None:
            return text.decode().strip()
        if alphabetic is not None:
            return alphabetic.decode().strip()
        if number is not None:
            return number.decode()
        return ""  # no "Value"
    elem = _ELEMENT.decode(raw)
    if elem is None:  # absent, or null
        return ""
    values = elem.Value
    if len(values) == 1 and type(values[0]) is str:
        return values[0].strip()
    return _values_text(values)


# Element text -> its string: the patient/study/series attributes repeat in every instance of
# a study, so most elements are looked up, not read. A pure function of the text: exact.
_MEMO: dict[bytes, str] = {}
# The same for the first twelve elements at once (all but InstanceNumber, the one that changes
# from instance to instance): one lookup keyed by their texts joined with NUL, a byte valid JSON
# never holds (msgspec refuses it), so the key splits back into the same twelve texts only.
_HEAD_MEMO: dict[bytes, tuple[str, ...]] = {}
_MEMO_MAX = 100_000
_HEAD = len(_T) - 1
assert _NAMES[_HEAD] == "InstanceNumber"


def _memo_text(key: bytes) -> str:
    text = _MEMO.get(key)
    if text is None:
        if len(_MEMO) > _MEMO_MAX:
            _MEMO.clear()
        text = _MEMO[key] = _element_text(key)
    return text


def header_strings(header_text: str) -> list[str]:
    """The indexed attributes of a DICOM JSON header as DICOM strings, in the order of ``_T``
    (``json_value`` of each: tested equal on real and awkward headers)."""
    if not header_text:
        return [""] * len(_T)
    try:
        raws = _astuple(_RAW_INDEXED.decode(header_text))
        key = b"\x00".join(raws[:_HEAD])
        head = _HEAD_MEMO.get(key)
        if head is None:
            if len(_HEAD_MEMO) > _MEMO_MAX:
                _HEAD_MEMO.clear()
            head = _HEAD_MEMO[key] = tuple(_memo_text(bytes(r)) for r in raws[:_HEAD])
        return [*head, _memo_text(bytes(raws[_HEAD]))]
    except (msgspec.DecodeError, msgspec.ValidationError):
        header = json.loads(header_text)
        return [json_value(header, tag) for tag in _TAGS]


def header_values(header_text: str) -> dict[str, str]:
    """The indexed attributes (keywords of ``_T``) of a DICOM JSON header as DICOM strings."""
    return dict(zip(_NAMES, header_strings(header_text), strict=True))


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


_ts = event_time  # protobuf Timestamp -> datetime, from the event (common.events)


def ticks_ms(value: Any) -> int:
    """A DateTime64(3) value as clickhouse-connect encodes it: an int is already ticks (ms), an
    aware datetime is floored to the millisecond (driver/datatypes/temporal.py)."""
    if type(value) is int:
        return value
    if isinstance(value, datetime) and value.tzinfo is not None:
        return ((floor(value.timestamp()) * 1_000_000 + value.microsecond) * 1000) // 1_000_000
    raise TypeError(f"not a DateTime64 value: {value!r}")


def event_ticks(t: Timestamp) -> int:
    """ticks_ms(event_time(t)) without building the datetime, where that is exact: whole
    microseconds (what a datetime makes) and 0 <= seconds < 2**32. There the float
    seconds + nanos / 1e9 that event_time reads is within 0.24 us of the exact value, so its
    rounding to microseconds gives the exact microsecond; anything else takes event_time."""
    s, n = t.seconds, t.nanos
    if 0 <= s < 4_294_967_296 and 0 <= n < 1_000_000_000 and n % 1000 == 0:
        return s * 1000 + n // 1_000_000
    return ticks_ms(event_time(t))


# One encoder for every payload (json.dumps with arguments builds a new encoder per call).
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_esc = encode_basestring_ascii  # what _COMPACT writes a str with (ensure_ascii)
_int_repr = int.__repr__


def event_row(env: pb.Envelope, topic: str, partition: int, offset: int) -> Row:
    """The analysts' row of any event: envelope columns + a compact JSON of the payload."""
    kind = env.WhichOneof("payload")
    if kind == "instance_stored":
        e = env.instance_stored
        payload = _COMPACT.encode(
            {
                "sop_instance_uid": e.sop_instance_uid,
                "series_instance_uid": e.series_instance_uid,
                "sop_class_uid": e.sop_class_uid,
                "modality": e.modality,
                "size_bytes": e.size_bytes,
                "sha256": e.sha256,
                "supersedes_sha256": e.supersedes_sha256,
                "tier": e.location.tier,
                "key": e.location.key,
                "calling_ae_title": e.calling_ae_title,
                "ingest_node": e.ingest_node,
            }
        )
    elif kind is None:
        payload = "{}"
    else:
        from google.protobuf.json_format import MessageToJson

        payload = MessageToJson(getattr(env, kind), indent=None)
    return {
        "topic": topic,
        "log_partition": partition,
        "log_offset": offset,
        "event_id": env.event_id,
        "event_type": env.event_type,
        "schema_version": env.schema_version,
        "study_uid": env.study_instance_uid,
        "occurred_at": _ts(env.occurred_at),
        "producer_service": env.producer.service,
        "producer_node": env.producer.node,
        "payload_json": payload,
    }


def rows_for(env: pb.Envelope, partition: int, offset: int, topic: str = "") -> Rows:
    kind = env.WhichOneof("payload")
    log = {
        "log_partition": partition,
        "log_offset": offset,
        "log_version": offset,
        "event_id": env.event_id,
    }
    out: Rows = {"events": [event_row(env, topic, partition, offset)]}
    if kind == "study_stable":
        st = env.study_stable
        out["study_stability"] = [
            {
                "study_uid": st.study_instance_uid,
                "through_partition": st.through_partition,
                "through_offset": st.through_offset,
                "quiet_seconds": st.quiet_seconds,
                "last_arrival_at": _ts(st.last_arrival_at),
                **log,
                "through_event_id": st.through_event_id,
            }
        ]
        return out
    if kind is not None and kind.startswith("route_"):
        out.update(routing_rows(env, kind, log))
        return out
    if kind == "instance_stored":
        out.update(_instance_rows(env.instance_stored, log, None, with_parents=True))
    elif kind == "tier_transitioned":
        tt = env.tier_transitioned
        # The instance's full row comes from the facts the event carries; only the location
        # (and the log position) differ from the row it replaces.
        out.update(_instance_rows(tt.instance, log, tt.target, with_parents=False))
        out["tier_transitions"] = [
            {
                "study_uid": env.study_instance_uid,
                "series_uid": tt.series_instance_uid,
                "sop_uid": tt.sop_instance_uid,
                "sha256": tt.sha256,
                "size_bytes": tt.size_bytes,
                "source_tier": tt.source.tier,
                "source_key": tt.source.key,
                "target_tier": tt.target.tier,
                "target_key": tt.target.key,
                "policy": tt.policy,
                "occurred_at": _ts(env.occurred_at),
                **log,
            }
        ]
    elif kind == "instance_deleted":
        out.update(_deleted_rows(env.study_instance_uid, env.instance_deleted, log))
    elif kind == "legal_hold_placed":
        h = env.legal_hold_placed
        out["legal_holds"] = [_hold_row(env, h.hold_id, 1, h.reason, h.placed_by, log)]
    elif kind == "legal_hold_released":
        r = env.legal_hold_released
        out["legal_holds"] = [_hold_row(env, r.hold_id, 0, r.reason, r.released_by, log)]
    elif kind == "study_accessed":
        a = env.study_accessed
        out["study_access"] = [
            {
                "study_uid": env.study_instance_uid,
                "last_accessed_at": _ts(a.accessed_at),
                "via": a.via,
                **log,
            }
        ]
    return out


def _hold_row(env: pb.Envelope, hold_id: str, active: int, reason: str, by: str, log: Row) -> Row:
    return {
        "study_uid": env.study_instance_uid,
        "hold_id": hold_id,
        "active": active,
        "reason": reason,
        "changed_by": by,
        "changed_at": _ts(env.occurred_at),
        **log,
    }


def _instance_rows(
    e: pb.InstanceStored, log: Row, location: pb.StorageLocation | None, with_parents: bool
) -> Rows:
    """Rows of one instance from its InstanceStored facts; ``location`` overrides where the
    bytes are (a tier move); ``with_parents`` also derives its series and study rows."""
    out: Rows = {}
    # Every protobuf field read copies it out of the message: read each one once.
    header_text = e.header_json
    v = header_values(header_text).__getitem__

    study_uid = e.study_instance_uid
    series_uid = e.series_instance_uid
    sop_uid = e.sop_instance_uid
    sha256 = e.sha256
    size_bytes = e.size_bytes
    where = location if location is not None else e.location
    tier, storage_key = where.tier, where.key
    calling_ae_title = e.calling_ae_title
    patient_ref = e.patient
    patient = {
        "patient_id": patient_ref.patient_id,
        "issuer_of_patient_id": patient_ref.issuer_of_patient_id,
        "patient_name": v("PatientName"),
        "patient_birth_date": v("PatientBirthDate"),
        "patient_sex": v("PatientSex"),
    }
    study_time = v("StudyTime")
    study = {
        "study_uid": study_uid,
        "study_date": v("StudyDate"),
        "study_time": study_time,
        "study_time_norm": norm_time(study_time),
        "accession_number": v("AccessionNumber"),
        "study_id": v("StudyID"),
        "study_description": v("StudyDescription"),
        "referring_physician_name": v("ReferringPhysicianName"),
    }
    series = {
        "series_uid": series_uid,
        "modality": e.modality,
        "series_number": _int_or_none(v("SeriesNumber")),
        "series_description": v("SeriesDescription"),
        "body_part_examined": v("BodyPartExamined"),
    }
    received_at = _ts(e.received_at)
    instance = {
        **patient,
        **study,
        **series,
        "sop_uid": sop_uid,
        "sop_class_uid": e.sop_class_uid,
        "instance_number": _int_or_none(v("InstanceNumber")),
        "transfer_syntax_uid": e.transfer_syntax_uid,
        "size_bytes": size_bytes,
        "sha256": sha256,
        "tier": tier,
        "storage_key": storage_key,
        "calling_ae_title": calling_ae_title,
        "called_ae_title": e.called_ae_title,
        "ingest_node": e.ingest_node,
        "received_at": received_at,
        "header_json": header_text,
        **log,
    }
    version = {
        "study_uid": study_uid,
        "series_uid": series_uid,
        "sop_uid": sop_uid,
        "sha256": sha256,
        "supersedes_sha256": e.supersedes_sha256,
        "size_bytes": size_bytes,
        "tier": tier,
        "storage_key": storage_key,
        "calling_ae_title": calling_ae_title,
        "received_at": received_at,
        **log,
    }
    alive = {**log, "is_deleted": 0}
    instance.update(alive)
    version.update(alive)
    out["instances"] = [instance]
    out["instance_versions"] = [version]
    if with_parents:
        out["series"] = [{"study_uid": study_uid, **series, "header_json": header_text, **alive}]
        out["studies"] = [
            {
                **patient,
                **study,
                "last_received_at": received_at,
                "header_json": header_text,
                **alive,
            }
        ]
    return out


def _deleted_rows(study_uid: str, d: pb.InstanceDeleted, log: Row) -> Rows:
    """Tombstones (is_deleted = 1) keyed like the rows they delete; other columns blank."""
    blank = pb.InstanceStored(
        study_instance_uid=study_uid,
        series_instance_uid=d.series_instance_uid,
        sop_instance_uid=d.sop_instance_uid,
        sha256=d.sha256,
    )
    rows = _instance_rows(blank, log, None, with_parents=True)
    out: Rows = {"instances": rows["instances"], "instance_versions": rows["instance_versions"]}
    if d.series_emptied:
        out["series"] = rows["series"]
    if d.study_emptied:
        out["studies"] = rows["studies"]
    for rs in out.values():
        for r in rs:
            r["is_deleted"] = 1
    return out


# Column order of the rows a Batch holds as tuples (the keys of the row dicts rows_for builds
# for these tables; tests/unit/test_projection.py checks that they are the same).
EVENT_COLUMNS = (
    "topic",
    "log_partition",
    "log_offset",
    "event_id",
    "event_type",
    "schema_version",
    "study_uid",
    "occurred_at",
    "producer_service",
    "producer_node",
    "payload_json",
)
INSTANCE_COLUMNS = (
    "patient_id",
    "issuer_of_patient_id",
    "patient_name",
    "patient_birth_date",
    "patient_sex",
    "study_uid",
    "study_date",
    "study_time",
    "study_time_norm",
    "accession_number",
    "study_id",
    "study_description",
    "referring_physician_name",
    "series_uid",
    "modality",
    "series_number",
    "series_description",
    "body_part_examined",
    "sop_uid",
    "sop_class_uid",
    "instance_number",
    "transfer_syntax_uid",
    "size_bytes",
    "sha256",
    "tier",
    "storage_key",
    "calling_ae_title",
    "called_ae_title",
    "ingest_node",
    "received_at",
    "header_json",
    "log_partition",
    "log_offset",
    "log_version",
    "event_id",
    "is_deleted",
)
VERSION_COLUMNS = (
    "study_uid",
    "series_uid",
    "sop_uid",
    "sha256",
    "supersedes_sha256",
    "size_bytes",
    "tier",
    "storage_key",
    "calling_ae_title",
    "received_at",
    "log_partition",
    "log_offset",
    "log_version",
    "event_id",
    "is_deleted",
)
SERIES_KEY = ("study_uid", "series_uid")
TUPLE_TABLES = {
    "events": EVENT_COLUMNS,
    "instances": INSTANCE_COLUMNS,
    "instance_versions": VERSION_COLUMNS,
}
# Tables that get many rows per key in one batch (every instance event of a series/study
# writes its series and study row): a Batch keeps only the row that survives FINAL.
DEDUPLICATED = {"series": SERIES_KEY, "studies": ("study_uid",)}


class Batch:
    """The rows of a run of events, ready to insert table by table (``IndexStore.write``; the
    one write path of the live index agent and of a replay): exactly the rows of ``rows_for``
    of each event, per table in log order, with ``series`` and ``studies`` reduced to the row
    FINAL keeps per key (the highest log_version, the last among equal ones).

    The hot tables (events, instances, instance_versions) hold one tuple per row (columns in
    the order of ``TUPLE_TABLES``) instead of a dict; an InstanceStored event, nearly every
    event of the log, is projected straight into those tuples (``_add_instance_stored``, the
    same values as ``rows_for``, tested equal). Every other event goes through ``rows_for``.
    """

    def __init__(self) -> None:
        self.events = 0  # events added
        self.count: dict[str, int] = {}  # rows per table before deduplication
        self.tuples: dict[str, list[tuple[Any, ...]]] = {t: [] for t in TUPLE_TABLES}
        self.latest: dict[str, dict[tuple[Any, ...], Row]] = {t: {} for t in DEDUPLICATED}
        self.rows: Rows = {}  # every other table, row dicts in log order

    def __len__(self) -> int:
        return self.events

    def add(self, env: pb.Envelope, partition: int, offset: int, topic: str = "") -> None:
        self.events += 1
        if env.WhichOneof("payload") == "instance_stored":
            self._add_instance_stored(env, partition, offset, topic)
        else:
            self.add_rows(rows_for(env, partition, offset, topic))

    def add_rows(self, rows: Rows) -> None:
        """Rows as rows_for gives them."""
        for table, rs in rows.items():
            self.count[table] = self.count.get(table, 0) + len(rs)
            names = TUPLE_TABLES.get(table)
            if names is not None:
                self.tuples[table].extend(tuple(r[c] for c in names) for r in rs)
            elif table in DEDUPLICATED:
                for r in rs:
                    self._keep_latest(table, r)
            else:
                self.rows.setdefault(table, []).extend(rs)

    def _keep_latest(self, table: str, r: Row) -> None:
        # what FINAL keeps, row by row: the highest version, the last among equal ones
        latest = self.latest[table]
        k = tuple(r[c] for c in DEDUPLICATED[table])
        cur = latest.get(k)
        if cur is None or r["log_version"] >= cur["log_version"]:
            latest[k] = r

    def table_rows(self) -> dict[str, tuple[tuple[str, ...], list[tuple[Any, ...]]] | list[Row]]:
        """Per table with rows: (column names, row tuples) or a list of row dicts."""
        out: dict[str, Any] = {}
        for table, ts in self.tuples.items():
            if ts:
                out[table] = (TUPLE_TABLES[table], ts)
        for table, latest in self.latest.items():
            if latest:
                out[table] = list(latest.values())
        for table, rs in self.rows.items():
            if rs:
                out[table] = rs
        return out

    def studies(self) -> set[str]:
        """The studies whose instances this batch writes (their study_stats are recomputed)."""
        i = INSTANCE_COLUMNS.index("study_uid")
        return {r[i] for r in self.tuples["instances"]}

    def _add_instance_stored(
        self, env: pb.Envelope, partition: int, offset: int, topic: str
    ) -> None:
        """rows_for of an InstanceStored event (event_row + _instance_rows with parents),
        appended as tuples: the same values, without the dicts."""
        e = env.instance_stored
        header_text = e.header_json
        (
            patient_name,
            patient_birth_date,
            patient_sex,
            study_date,
            study_time,
            accession_number,
            study_id,
            study_description,
            referring_physician_name,
            series_number,
            series_description,
            body_part_examined,
            instance_number,
        ) = header_strings(header_text)
        event_id = env.event_id
        study_uid = e.study_instance_uid
        series_uid = e.series_instance_uid
        sop_uid = e.sop_instance_uid
        sop_class_uid = e.sop_class_uid
        modality = e.modality
        sha256 = e.sha256
        supersedes_sha256 = e.supersedes_sha256
        size_bytes = e.size_bytes
        loc = e.location
        tier, storage_key = loc.tier, loc.key
        calling_ae_title = e.calling_ae_title
        ingest_node = e.ingest_node
        patient_ref = e.patient
        patient_id = patient_ref.patient_id
        issuer = patient_ref.issuer_of_patient_id
        # DateTime64 columns as ticks (ms) in a Batch: what the insert would make of event_time
        received_at = event_ticks(e.received_at)
        producer = env.producer
        self.tuples["events"].append(
            (
                topic,
                partition,
                offset,
                event_id,
                env.event_type,
                env.schema_version,
                env.study_instance_uid,
                event_ticks(env.occurred_at),
                producer.service,
                producer.node,
                # event_row's payload, the text _COMPACT.encode gives for that dict: its C
                # encoder writes str values with encode_basestring_ascii and ints with
                # int.__repr__ (tested equal on awkward values)
                f'{{"sop_instance_uid":{_esc(sop_uid)},'
                f'"series_instance_uid":{_esc(series_uid)},'
                f'"sop_class_uid":{_esc(sop_class_uid)},'
                f'"modality":{_esc(modality)},'
                f'"size_bytes":{_int_repr(size_bytes)},'
                f'"sha256":{_esc(sha256)},'
                f'"supersedes_sha256":{_esc(supersedes_sha256)},'
                f'"tier":{_esc(tier)},'
                f'"key":{_esc(storage_key)},'
                f'"calling_ae_title":{_esc(calling_ae_title)},'
                f'"ingest_node":{_esc(ingest_node)}}}',
            )
        )
        study_time_norm = norm_time(study_time)
        series_number_int = _int_or_none(series_number)
        self.tuples["instances"].append(
            (
                patient_id,
                issuer,
                patient_name,
                patient_birth_date,
                patient_sex,
                study_uid,
                study_date,
                study_time,
                study_time_norm,
                accession_number,
                study_id,
                study_description,
                referring_physician_name,
                series_uid,
                modality,
                series_number_int,
                series_description,
                body_part_examined,
                sop_uid,
                sop_class_uid,
                _int_or_none(instance_number),
                e.transfer_syntax_uid,
                size_bytes,
                sha256,
                tier,
                storage_key,
                calling_ae_title,
                e.called_ae_title,
                ingest_node,
                received_at,
                header_text,
                partition,
                offset,
                offset,
                event_id,
                0,
            )
        )
        self.tuples["instance_versions"].append(
            (
                study_uid,
                series_uid,
                sop_uid,
                sha256,
                supersedes_sha256,
                size_bytes,
                tier,
                storage_key,
                calling_ae_title,
                received_at,
                partition,
                offset,
                offset,
                event_id,
                0,
            )
        )
        count = self.count
        for t in ("events", "instances", "instance_versions", "series", "studies"):
            count[t] = count.get(t, 0) + 1
        # series and studies: only a row that FINAL would keep replaces the one held
        series = self.latest["series"]
        cur = series.get((study_uid, series_uid))
        if cur is None or offset >= cur["log_version"]:
            series[(study_uid, series_uid)] = {
                "study_uid": study_uid,
                "series_uid": series_uid,
                "modality": modality,
                "series_number": series_number_int,
                "series_description": series_description,
                "body_part_examined": body_part_examined,
                "header_json": header_text,
                "log_partition": partition,
                "log_offset": offset,
                "log_version": offset,
                "event_id": event_id,
                "is_deleted": 0,
            }
        studies = self.latest["studies"]
        cur = studies.get((study_uid,))
        if cur is None or offset >= cur["log_version"]:
            studies[(study_uid,)] = {
                "patient_id": patient_id,
                "issuer_of_patient_id": issuer,
                "patient_name": patient_name,
                "patient_birth_date": patient_birth_date,
                "patient_sex": patient_sex,
                "study_uid": study_uid,
                "study_date": study_date,
                "study_time": study_time,
                "study_time_norm": study_time_norm,
                "accession_number": accession_number,
                "study_id": study_id,
                "study_description": study_description,
                "referring_physician_name": referring_physician_name,
                "last_received_at": received_at,
                "header_json": header_text,
                "log_partition": partition,
                "log_offset": offset,
                "log_version": offset,
                "event_id": event_id,
                "is_deleted": 0,
            }
