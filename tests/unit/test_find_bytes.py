"""query.find.to_bytes (the C-FIND response identifier written directly) is exactly what
pydicom/pynetdicom encode from to_identifier(...) for every row, plain or not, in both little
endian transfer syntaxes."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynetdicom.dsutils import encode

from strata.query.find import FindQuery, to_bytes, to_identifier
from tests.unit.test_find_json import STUDY_KEYS, row_strategy

IMAGE_KEYS = ["SOPInstanceUID", "SOPClassUID", "InstanceNumber", "SeriesInstanceUID", "Modality"]


def _expected(q: FindQuery, row: dict[str, Any], implicit: bool) -> bytes:
    return encode(to_identifier(q, row), implicit, True)


@settings(max_examples=300, deadline=None)
@given(row=row_strategy, keys=st.permutations(STUDY_KEYS), implicit=st.booleans())
def test_to_bytes_equals_pydicom(row: dict[str, Any], keys: list[str], implicit: bool) -> None:
    q = FindQuery("STUDY", [(k, "") for k in keys], 100)
    try:
        expected = _expected(q, row, implicit)
    except Exception as exc:  # pydicom cannot write some odd values (e.g. a PN of '\\')
        with pytest.raises(type(exc)):
            to_bytes(q, row, implicit)
        return
    assert to_bytes(q, row, implicit) == expected


@settings(max_examples=100, deadline=None)
@given(
    row=row_strategy,
    extra=st.fixed_dictionaries(
        {
            "series_uid": st.sampled_from(["1.2.3.4", "1.2.3.45"]),
            "modality": st.sampled_from(["CT", "", "MR "]),
            "series_number": st.sampled_from(["1", "012", "", "-3"]),
            "series_description": st.just("x"),
            "body_part_examined": st.just(""),
            "sop_uid": st.sampled_from(["1.2.3.4.5", "1.2.3.4.56"]),
            "sop_class_uid": st.just("1.2.840.10008.5.1.4.1.1.2"),
            "instance_number": st.sampled_from(["7", "0", "", "0012", 12]),
        }
    ),
    implicit=st.booleans(),
)
def test_image_level_equals_pydicom(
    row: dict[str, Any], extra: dict[str, Any], implicit: bool
) -> None:
    q = FindQuery("IMAGE", [(k, "") for k in IMAGE_KEYS + ["StudyInstanceUID"]], 100)
    r = {**row, **extra}
    try:
        expected = _expected(q, r, implicit)
    except Exception as exc:
        with pytest.raises(type(exc)):
            to_bytes(q, r, implicit)
        return
    assert to_bytes(q, r, implicit) == expected


def test_header_keys_and_big_endian_go_through_pydicom() -> None:
    row = {
        "patient_id": "P1",
        "study_uid": "1.2.3",
        "header_json": '{"00080080": {"vr": "LO", "Value": ["General Hospital"]}}',
    }
    q = FindQuery(
        "STUDY", [("PatientID", ""), ("InstitutionName", ""), ("StudyInstanceUID", "")], 5
    )
    for implicit in (True, False):
        data = to_bytes(q, row, implicit)
        assert data == _expected(q, row, implicit)
        assert b"General Hospital" in data
    assert to_bytes(q, row, False, little=False) == encode(to_identifier(q, row), False, False)
