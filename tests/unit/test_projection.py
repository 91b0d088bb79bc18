"""processors.index.projection: events -> index rows, pure and deterministic."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom import Dataset

from strata.common.dicom import header_json
from strata.common.events import envelope, timestamp
from strata.processors.index.projection import json_value, norm_time, rows_for
from strata.proto.strata.v1 import events_pb2 as pb

STUDY = "1.2.826.0.1.3680043.10.543.9000"
SERIES = STUDY + ".1"
SOP = STUDY + ".1.1"
RECEIVED = datetime(2024, 3, 1, 8, 30, 15, 250000, tzinfo=UTC)


def header() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Müller^Jürgen"
    ds.PatientID = "P1"
    ds.PatientBirthDate = "19700102"
    ds.PatientSex = "M"
    ds.StudyDate = "20240301"
    ds.StudyTime = "083015.25"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "S1"
    ds.StudyDescription = "CT Thorax"
    ds.ReferringPhysicianName = "Ref^Doc"
    ds.SeriesNumber = 3
    ds.SeriesDescription = "Axial"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = 12
    return ds


def stored(received: bool = True, **overrides: str) -> pb.Envelope:
    payload = pb.InstanceStored(
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        sop_instance_uid=SOP,
        series_instance_uid=SERIES,
        study_instance_uid=STUDY,
        patient=pb.PatientRef(patient_id="P1", issuer_of_patient_id="HOSP"),
        modality="CT",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size_bytes=4242,
        sha256="ab" * 32,
        location=pb.StorageLocation(tier="hot", key="k/1"),
        calling_ae_title="CT1",
        called_ae_title="STRATA",
        ingest_node="ingest-0",
        received_via="store",
        **{"header_json": header_json(header()), **overrides},
    )
    if received:
        payload.received_at.CopyFrom(timestamp(RECEIVED))
    return envelope(
        payload,
        study_uid=STUDY,
        service="ingest",
        node="ingest-0",
        occurred_at=RECEIVED,
        event_id="evt-1",
    )


# --- rows_for --------------------------------------------------------------------------------


def test_rows_for_is_deterministic() -> None:
    env = stored()
    first = rows_for(env, 2, 41)
    time.sleep(0.01)  # a wall-clock dependency would show up as a differing timestamp
    again = rows_for(env, 2, 41)
    assert first == again
    # a decoded copy of the same record (a redelivery) projects to the same rows
    copy = pb.Envelope()
    copy.ParseFromString(env.SerializeToString())
    assert rows_for(copy, 2, 41) == first


def test_rows_for_uses_the_log_position_as_version() -> None:
    rows = rows_for(stored(), 2, 41)
    for table in ("instances", "series", "studies"):
        [row] = rows[table]
        assert (row["log_partition"], row["log_offset"], row["log_version"]) == (2, 41, 41)
        assert row["event_id"] == "evt-1"
    later = rows_for(stored(), 2, 99)
    assert later["instances"][0]["log_version"] == 99
    # only the log position differs between two projections of the same event
    strip = {"log_offset", "log_version"}
    assert {k: v for k, v in later["instances"][0].items() if k not in strip} == {
        k: v for k, v in rows["instances"][0].items() if k not in strip
    }


def test_rows_for_takes_time_from_the_event_not_the_clock() -> None:
    [row] = rows_for(stored(), 0, 1)["instances"]
    assert row["received_at"] == RECEIVED
    [row] = rows_for(stored(received=False), 0, 1)["instances"]
    assert row["received_at"] == datetime.fromtimestamp(0, UTC)


def test_rows_for_projects_every_table() -> None:
    env = stored()
    rows = rows_for(env, 0, 7)
    [inst] = rows["instances"]
    [series] = rows["series"]
    [study] = rows["studies"]
    expected_patient = {
        "patient_id": "P1",
        "issuer_of_patient_id": "HOSP",
        "patient_name": "Müller^Jürgen",
        "patient_birth_date": "19700102",
        "patient_sex": "M",
    }
    expected_study = {
        "study_uid": STUDY,
        "study_date": "20240301",
        "study_time": "083015.25",
        "study_time_norm": "083015",
        "accession_number": "ACC1",
        "study_id": "S1",
        "study_description": "CT Thorax",
        "referring_physician_name": "Ref^Doc",
    }
    expected_series = {
        "series_uid": SERIES,
        "modality": "CT",
        "series_number": 3,
        "series_description": "Axial",
        "body_part_examined": "CHEST",
    }
    assert inst.items() >= {**expected_patient, **expected_study, **expected_series}.items()
    assert inst["sop_uid"] == SOP
    assert inst["instance_number"] == 12
    assert (inst["tier"], inst["storage_key"], inst["size_bytes"]) == ("hot", "k/1", 4242)
    assert inst["header_json"] == env.instance_stored.header_json
    assert series.items() >= {"study_uid": STUDY, **expected_series}.items()
    assert "patient_id" not in series
    assert study.items() >= {**expected_patient, **expected_study}.items()
    assert "series_uid" not in study


def test_rows_for_missing_optional_values() -> None:
    ds = Dataset()
    ds.PatientID = "P1"
    ds.SeriesNumber = ""
    rows = rows_for(stored(header_json=header_json(ds)), 0, 1)
    [inst] = rows["instances"]
    assert inst["series_number"] is None
    assert inst["instance_number"] is None
    assert inst["study_date"] == inst["study_time"] == inst["study_time_norm"] == ""
    assert inst["patient_name"] == ""


def test_rows_for_empty_header() -> None:
    [inst] = rows_for(stored(header_json=""), 0, 1)["instances"]
    assert inst["patient_name"] == "" and inst["series_number"] is None


def test_other_events_only_reach_the_events_table() -> None:
    env = envelope(
        pb.InstanceQuarantined(reason="missing-uid", study_instance_uid=STUDY),
        study_uid=STUDY,
        service="ingest",
        node="n",
        occurred_at=RECEIVED,
    )
    rows = rows_for(env, 0, 1, topic="strata.quarantine.v1")
    assert set(rows) == {"events"}
    [ev] = rows["events"]
    assert ev["event_type"] == "InstanceQuarantined" and ev["topic"] == "strata.quarantine.v1"
    assert (ev["log_partition"], ev["log_offset"]) == (0, 1)
    assert '"reason": "missing-uid"' in ev["payload_json"] or '"reason":"missing-uid"' in (
        ev["payload_json"].replace(" ", "")
    )
    assert ev["occurred_at"] == RECEIVED


def test_study_stable_projects_to_study_stability() -> None:
    env = envelope(
        pb.StudyStable(
            study_instance_uid=STUDY, through_partition=2, through_offset=41, quiet_seconds=30
        ),
        study_uid=STUDY,
        service="processors",
        node="n",
        occurred_at=RECEIVED,
    )
    rows = rows_for(env, 2, 42, topic="t")
    [st] = rows["study_stability"]
    assert st["through_offset"] == 41 and st["log_version"] == 42 and st["study_uid"] == STUDY


# --- json_value ------------------------------------------------------------------------------


def test_json_value_pn_alphabetic_only() -> None:
    h = {"00100010": {"vr": "PN", "Value": [{"Alphabetic": "Doe^John"}]}}
    assert json_value(h, "00100010") == "Doe^John"


def test_json_value_pn_component_groups() -> None:
    h = {
        "00100010": {
            "vr": "PN",
            "Value": [
                {
                    "Alphabetic": "Yamada^Tarou",
                    "Ideographic": "山田^太郎",
                    "Phonetic": "やまだ^たろう",
                }
            ],
        }
    }
    assert json_value(h, "00100010") == "Yamada^Tarou=山田^太郎=やまだ^たろう"
    h = {"00100010": {"vr": "PN", "Value": [{"Ideographic": "山田^太郎"}]}}
    assert json_value(h, "00100010") == "=山田^太郎"  # leading empty group kept


def test_json_value_multi_valued_pn() -> None:
    h = {"00081060": {"vr": "PN", "Value": [{"Alphabetic": "A^B"}, {"Alphabetic": "C^D"}]}}
    assert json_value(h, "00081060") == "A^B\\C^D"


def test_json_value_multi_values_and_numbers() -> None:
    h = {
        "00080008": {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]},
        "00200013": {"vr": "IS", "Value": [12]},
        "00280030": {"vr": "DS", "Value": [0.5, 0.5]},
    }
    assert json_value(h, "00080008") == "ORIGINAL\\PRIMARY\\AXIAL"
    assert json_value(h, "00200013") == "12"
    assert json_value(h, "00280030") == "0.5\\0.5"


def test_json_value_null_inside_multi_value_is_empty() -> None:
    # PS3.18 F.2.5: an empty value of a multi-valued attribute is JSON null
    h = {"00080008": {"vr": "CS", "Value": ["ORIGINAL", None, "AXIAL"]}}
    assert json_value(h, "00080008") == "ORIGINAL\\\\AXIAL"


@pytest.mark.parametrize(
    "h", [{}, {"00100010": {}}, {"00100010": {"vr": "PN"}}, {"00100010": {"vr": "PN", "Value": []}}]
)
def test_json_value_absent_is_empty(h: dict[str, object]) -> None:
    assert json_value(h, "00100010") == ""


def test_json_value_from_pydicom_header() -> None:
    h = json.loads(header_json(header()))
    assert json_value(h, "00100010") == "Müller^Jürgen"
    assert json_value(h, "00200011") == "3"


# --- norm_time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tm", "norm"),
    [
        ("083015", "083015"),
        ("083015.250000", "083015"),
        ("0830", "083000"),
        ("08", "080000"),
        ("08:30:15", "083015"),
        (" 083015 ", "083015"),
        ("", ""),
        ("abc", ""),
        ("08:3x", ""),
    ],
)
def test_norm_time(tm: str, norm: str) -> None:
    assert norm_time(tm) == norm


# --- header_values (msgspec fast path) == json_value over json.loads ----------------------


@pytest.mark.parametrize(
    "text",
    [
        header_json(header()),
        '{"00100010": {"vr": "PN", "Value": [{"Alphabetic": "A^B", "Phonetic": "x"}, null]}}',
        '{"00100010": {"vr": "PN", "Value": [{"Ideographic": "\\u5c71\\u7530"}]}}',
        '{"00200013": {"vr": "IS", "Value": [12, 1.5, -0.0, 123456789012345678901234567890]}}',
        '{"00200013": {"vr": "IS", "Value": [NaN]}, "00080020": {"Value": ["20240101"]}}',
        '{"00080020": {"vr": "DA", "Value": null}}',
        '{"00080020": {"vr": "DA"}, "00081030": {}}',
        '{"00081030": {"vr": "LO", "Value": [" padded  ", "b"]}}',
        '{"00081030": {"vr": "LO", "Value": ["\\ud800"]}}',
        '{"00180015": {"vr": "CS", "Value": ["A"]}, "00180015": {"vr": "CS", "Value": ["B"]}}',
        "{}",
        "",
    ],
)
def test_header_values_equal_json_value(text: str) -> None:
    from strata.processors.index.projection import _T, header_values

    header = json.loads(text) if text else {}
    assert header_values(text) == {name: json_value(header, tag) for name, tag in _T.items()}


# --- Batch (column-ready rows) == the expected rows (rows_for of each event) -------------


def _ticks(rows: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """DateTime64 values as the insert encodes them (a Batch holds ticks where rows_for has
    datetimes)."""
    from strata.processors.index.projection import ticks_ms

    return {
        t: [{k: ticks_ms(v) if isinstance(v, datetime) else v for k, v in r.items()} for r in rs]
        for t, rs in rows.items()
    }


def _expected_rows(records: list) -> dict[str, list[dict]]:
    """The rows expected of the log: rows_for of every event, series and studies reduced to
    the row FINAL keeps (tests/support/rows.py)."""
    from tests.support.rows import expected_rows

    return _ticks(expected_rows((env, part, off, topic) for part, off, topic, env in records))


def _batch_rows(records: list) -> dict[str, list[dict]]:
    from strata.processors.index.projection import Batch

    b = Batch()
    for part, off, topic, env in records:
        b.add(env, part, off, topic)
    assert len(b) == len(records)
    out: dict[str, list[dict]] = {}
    for t, data in b.table_rows().items():
        if isinstance(data, tuple):
            names, tuples = data
            out[t] = [dict(zip(names, row, strict=True)) for row in tuples]
        else:
            out[t] = data
    return _ticks(out)


def test_batch_columns_are_the_row_keys_of_rows_for() -> None:
    from strata.processors.index.projection import TUPLE_TABLES

    rows = rows_for(stored(), 0, 1, "t")
    for t, names in TUPLE_TABLES.items():
        assert list(names) == list(rows[t][0]), t


def test_batch_equals_rows_for_on_an_awkward_log() -> None:
    """Every kind of event, awkward headers, versions, deletions, redelivery: the same rows in
    the same order (the order decides among equal versions), in one batch or in many."""
    from tests.support.awkward_log import records

    log = records()
    kinds = {env.WhichOneof("payload") for *_, env in log}
    assert len(kinds) >= 13
    assert _batch_rows(log) == _expected_rows(log)
    for size in (1, 2, 5, 7):
        for i in range(0, len(log), size):
            assert _batch_rows(log[i : i + size]) == _expected_rows(log[i : i + size])


def test_batch_equals_rows_for_on_real_headers() -> None:
    """Headers of pydicom's test files (real PN groups, multi-values, numbers) as ingest
    writes them."""
    import pydicom
    from pydicom.data import get_testdata_files

    from strata.common.dicom import header_json as to_json

    log = []
    for i, path in enumerate(sorted(get_testdata_files("*.dcm"))[:80]):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            text = to_json(ds)
        except Exception:  # noqa: BLE001, S112 (a deliberately malformed file: not a header)
            continue
        log.append((0, i, "t", stored(header_json=text)))
    assert len(log) > 40
    assert _batch_rows(log) == _expected_rows(log)


@settings(max_examples=3000, deadline=None)
@given(
    st.integers(min_value=-(2**40), max_value=2**40),
    st.one_of(
        st.integers(min_value=0, max_value=999_999).map(lambda us: us * 1000),
        st.sampled_from([0, 999_000, 999_999_000, 1_000_000, 500_000, 999_500_000]),
        st.integers(min_value=-(2**31), max_value=2**31 - 1),
    ),
)
def test_event_ticks_equal_the_ticks_of_event_time(seconds: int, nanos: int) -> None:
    """The Batch's DateTime64 ticks straight from the protobuf Timestamp are what the insert
    made of event_time's datetime (or the same error)."""
    from google.protobuf.timestamp_pb2 import Timestamp

    from strata.common.events import event_time
    from strata.processors.index.projection import event_ticks, ticks_ms

    t = Timestamp(seconds=seconds, nanos=nanos)
    try:
        want: object = ticks_ms(event_time(t))
    except (ValueError, OverflowError, OSError) as exc:
        want = type(exc)
    try:
        got: object = event_ticks(t)
    except (ValueError, OverflowError, OSError) as exc:
        got = type(exc)
    assert got == want
