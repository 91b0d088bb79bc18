"""query.find.to_json (the gRPC search's direct DICOM JSON) is exactly
to_identifier(...).to_json() for every row, plain or not."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dsutils import encode

from strata.query.find import FindQuery, to_identifier, to_json

STUDY_KEYS = [
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "ModalitiesInStudy",
    "ReferringPhysicianName",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "StudyDescription",
    "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances",
    "SeriesDescription",  # a lower-level key: returned empty
    "SOPClassesInStudy",
]

text = st.text(alphabet=st.sampled_from(list("AZaz09^ .=\\-_*é\t中")), max_size=12)
row_strategy = st.fixed_dictionaries(
    {
        "patient_id": text,
        "issuer_of_patient_id": text,
        "patient_name": text,
        "patient_birth_date": st.sampled_from(["", "19700101"]),
        "patient_sex": st.sampled_from(["", "M", "F", "O "]),
        "study_uid": st.sampled_from(["1.2.3", "1.2.840.10008.1", ""]),
        "study_date": st.sampled_from(["", "20240101"]),
        "study_time": st.sampled_from(["", "101500", "101500.25"]),
        "study_time_norm": st.just(""),
        "accession_number": text,
        "study_id": text,
        "study_description": text,
        "referring_physician_name": text,
        "header_json": st.just(""),
        "modalities_in_study": st.lists(st.sampled_from(["CT", "MR", "SR", "C\\T"]), max_size=3),
        "sop_classes_in_study": st.lists(
            st.sampled_from(["1.2.840.10008.5.1.4.1.1.2"]), max_size=2
        ),
        "n_series": st.integers(0, 5000),
        "n_instances": st.integers(0, 10**7),
    }
)


@settings(max_examples=300, deadline=None)
@given(row=row_strategy, keys=st.permutations(STUDY_KEYS))
def test_to_json_equals_pydicom(row: dict[str, Any], keys: list[str]) -> None:
    q = FindQuery("STUDY", [(k, "") for k in keys], 100)
    try:
        expected = to_identifier(q, row).to_json()
    except Exception as exc:  # pydicom cannot write some odd values (e.g. a PN of '\\')
        with pytest.raises(type(exc)):
            to_json(q, row)
        return
    assert to_json(q, row) == expected


def test_plain_row_and_header_keys() -> None:
    row = {
        "patient_id": "P1",
        "patient_name": "Doe^John",
        "study_uid": "1.2.3",
        "n_instances": 12,
        "modalities_in_study": ["CT", "MR"],
        "header_json": '{"00080080": {"vr": "LO", "Value": ["General Hospital"]}}',
    }
    for keys in (
        ["PatientID", "PatientName", "StudyInstanceUID", "NumberOfStudyRelatedInstances"],
        ["ModalitiesInStudy", "InstitutionName", "PatientName"],  # one key from the header
    ):
        q = FindQuery("STUDY", [(k, "") for k in keys], 10)
        assert to_json(q, row) == to_identifier(q, row).to_json()


def test_non_ascii_names_are_written_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    """A patient or physician name outside ASCII (common: MÜLLER, SØREN) is written without
    pydicom, as UTF-8 under the 'ISO_IR 192' pydicom would declare, with the same result."""
    import strata.query.find as find
    from strata.query.find import to_bytes

    row = {
        "patient_id": "MRN0001",
        "issuer_of_patient_id": "GH",
        "patient_name": "MÜLLER^JÜRGEN",
        "patient_birth_date": "19640229",
        "patient_sex": "M",
        "study_uid": "1.2.3",
        "study_date": "20240101",
        "study_time": "101500",
        "accession_number": "A0001",
        "study_id": "1",
        "sop_classes_in_study": ["1.2.840.10008.5.1.4.1.1.4"],
        "n_series": 2,
        "study_description": "IRM CÉRÉBRALE",
        "referring_physician_name": "SØRENSEN^SØREN-ANNE",
        "n_instances": 12,
        "modalities_in_study": ["MR"],
    }
    q = FindQuery("STUDY", [(k, "") for k in STUDY_KEYS], 10)
    expected_json = to_identifier(q, row).to_json()
    expected = {imp: encode(to_identifier(q, row), imp, True) for imp in (True, False)}
    assert "ISO_IR 192" in expected_json and "\\u00dc" in expected_json

    def no_pydicom(*_a: Any) -> None:
        raise AssertionError("took the pydicom path")

    monkeypatch.setattr(find, "to_identifier", no_pydicom)
    assert to_json(q, row) == expected_json
    for imp in (True, False):
        assert to_bytes(q, row, imp) == expected[imp]
