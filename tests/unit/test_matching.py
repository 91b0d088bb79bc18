"""processors.index.matching: DICOM matching (PS3.4 C.2.2.2) -> ClickHouse SQL conditions and
parameters."""

from __future__ import annotations

import pytest

from strata.processors.index.matching import (
    ATTRIBUTES,
    MatchError,
    Params,
    condition,
    has_wildcard,
    like_pattern,
)


def cond(keyword: str, raw: str) -> tuple[str | None, dict[str, object]]:
    params = Params()
    return condition(ATTRIBUTES[keyword], raw, params), params.values


# --- Params ------------------------------------------------------------------------------------


def test_params_names_placeholders_in_order() -> None:
    params = Params()
    assert params.add("a", "String") == "{p0:String}"
    assert params.add([1, 2], "Array(Int64)") == "{p1:Array(Int64)}"
    assert params.values == {"p0": "a", "p1": [1, 2]}


def test_params_continue_across_conditions() -> None:
    params = Params()
    first = condition(ATTRIBUTES["PatientID"], "P1", params)
    second = condition(ATTRIBUTES["AccessionNumber"], "A1", params)
    assert first == "patient_id = {p0:String}"
    assert second == "accession_number = {p1:String}"
    assert params.values == {"p0": "P1", "p1": "A1"}


# --- universal ---------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["", "   ", "*", " * "])
@pytest.mark.parametrize(
    "keyword",
    [
        "PatientName",
        "PatientID",
        "StudyDate",
        "StudyTime",
        "StudyInstanceUID",
        "Modality",
        "ModalitiesInStudy",
        "SeriesNumber",
        "NumberOfStudyRelatedSeries",
    ],
)
def test_universal_matching_adds_no_condition(keyword: str, raw: str) -> None:
    assert cond(keyword, raw) == (None, {})


# --- single value / wildcard -------------------------------------------------------------------


def test_single_value_is_exact_and_trimmed() -> None:
    assert cond("PatientID", " 12345 ") == ("patient_id = {p0:String}", {"p0": "12345"})


def test_wildcards_become_like_pattern() -> None:
    assert cond("PatientID", "12*3?") == ("patient_id LIKE {p0:String}", {"p0": "12%3_"})


@pytest.mark.parametrize(
    ("value", "pattern"),
    [
        ("*", "%"),
        ("?", "_"),
        ("A*B?C", "A%B_C"),
        ("50%", "50\\%"),
        ("a_b", "a\\_b"),
        ("back\\slash", "back\\\\slash"),
        ("%_\\*?", "\\%\\_\\\\%_"),
        ("plain", "plain"),
    ],
)
def test_like_pattern_translates_wildcards_and_escapes_like_metacharacters(
    value: str, pattern: str
) -> None:
    assert like_pattern(value) == pattern


def test_wildcard_value_with_like_metacharacters_is_escaped() -> None:
    sql, params = cond("StudyDescription", "50%_off*")
    assert sql == "study_description LIKE {p0:String}"
    assert params == {"p0": "50\\%\\_off%"}


def test_value_with_like_metacharacters_but_no_wildcard_is_compared_literally() -> None:
    assert cond("StudyDescription", "50%_off") == (
        "study_description = {p0:String}",
        {"p0": "50%_off"},
    )


def test_has_wildcard() -> None:
    assert has_wildcard("a*") and has_wildcard("?b")
    assert not has_wildcard("a%b_c")


# --- CS (case-sensitive) and PN (case-insensitive) ---------------------------------------------


def test_cs_is_case_sensitive() -> None:
    assert cond("Modality", "CT") == ("modality = {p0:String}", {"p0": "CT"})
    assert cond("Modality", "c?") == ("modality LIKE {p0:String}", {"p0": "c_"})
    assert cond("BodyPartExamined", "head") == ("body_part_examined = {p0:String}", {"p0": "head"})


def test_pn_single_value_is_case_insensitive_utf8() -> None:
    assert cond("PatientName", "Müller^Jürgen") == (
        "lowerUTF8(patient_name) = lowerUTF8({p0:String})",
        {"p0": "Müller^Jürgen"},
    )


def test_pn_wildcard_is_case_insensitive_utf8() -> None:
    assert cond("ReferringPhysicianName", "doe^j*") == (
        "lowerUTF8(referring_physician_name) LIKE lowerUTF8({p0:String})",
        {"p0": "doe^j%"},
    )


# --- DA ranges -------------------------------------------------------------------------------


def test_da_single_value() -> None:
    assert cond("StudyDate", "20240115") == ("study_date = {p0:String}", {"p0": "20240115"})


def test_da_single_value_acr_nema_dots_are_normalised() -> None:
    assert cond("PatientBirthDate", "1970.01.02") == (
        "patient_birth_date = {p0:String}",
        {"p0": "19700102"},
    )


def test_da_closed_range() -> None:
    assert cond("StudyDate", "20240101-20241231") == (
        "study_date != '' AND study_date >= {p0:String} AND study_date <= {p1:String}",
        {"p0": "20240101", "p1": "20241231"},
    )


def test_da_open_upper_range() -> None:
    assert cond("StudyDate", "20240101-") == (
        "study_date != '' AND study_date >= {p0:String}",
        {"p0": "20240101"},
    )


def test_da_open_lower_range() -> None:
    assert cond("StudyDate", "-20241231") == (
        "study_date != '' AND study_date <= {p0:String}",
        {"p0": "20241231"},
    )


@pytest.mark.parametrize(
    "raw", ["2024-01-15", "2024", "20240115-2024", "2024011a", "202401150", "20240101-x"]
)
def test_da_malformed_raises(raw: str) -> None:
    with pytest.raises(MatchError):
        cond("StudyDate", raw)


@pytest.mark.parametrize(
    ("kw", "raw"),
    [("PatientBirthDate", "DOE^JOHN"), ("StudyTime", "SECRET"), ("SeriesNumber", "MRN42")],
)
def test_match_errors_echo_no_value(kw: str, raw: str) -> None:
    """Refusal texts go back to clients and into logs: they name the VR, never the value."""
    with pytest.raises(MatchError) as e:
        cond(kw, raw)
    assert raw not in str(e.value)


# --- TM ranges and single values ---------------------------------------------------------------


def test_tm_single_full_time_matches_that_second() -> None:
    assert cond("StudyTime", "101500") == (
        "study_time_norm != '' AND study_time_norm >= {p0:String} AND study_time_norm <= "
        "{p1:String}",
        {"p0": "101500", "p1": "101500"},
    )


@pytest.mark.parametrize(
    ("raw", "lo", "hi"),
    [
        ("10", "100000", "105959"),  # a whole hour
        ("1015", "101500", "101559"),  # a whole minute
        ("10:15", "101500", "101559"),  # ACR-NEMA colons
        ("101500.123", "101500", "101500"),  # fraction dropped
    ],
)
def test_tm_single_value_is_normalised_to_hhmmss_bounds(raw: str, lo: str, hi: str) -> None:
    _, params = cond("StudyTime", raw)
    assert params == {"p0": lo, "p1": hi}


def test_tm_closed_range() -> None:
    assert cond("StudyTime", "0800-1000") == (
        "study_time_norm != '' AND study_time_norm >= {p0:String} AND study_time_norm <= "
        "{p1:String}",
        {"p0": "080000", "p1": "100059"},
    )


def test_tm_open_ranges() -> None:
    assert cond("StudyTime", "12-") == (
        "study_time_norm != '' AND study_time_norm >= {p0:String}",
        {"p0": "120000"},
    )
    assert cond("StudyTime", "-0930") == (
        "study_time_norm != '' AND study_time_norm <= {p0:String}",
        {"p0": "093059"},
    )


@pytest.mark.parametrize("raw", ["1", "10a0", "1015000", "25*", "10-1x"])
def test_tm_malformed_raises(raw: str) -> None:
    with pytest.raises(MatchError):
        cond("StudyTime", raw)


# --- UI lists, IS lists ----------------------------------------------------------------------


def test_ui_single_value() -> None:
    assert cond("StudyInstanceUID", "1.2.3") == ("study_uid = {p0:String}", {"p0": "1.2.3"})


def test_ui_list_matching() -> None:
    assert cond("SeriesInstanceUID", "1.2.3\\1.2.4\\ 1.2.5 ") == (
        "series_uid IN {p0:Array(String)}",
        {"p0": ["1.2.3", "1.2.4", "1.2.5"]},
    )


def test_ui_list_ignores_empty_components() -> None:
    assert cond("SOPInstanceUID", "1.2.3\\\\") == ("sop_uid = {p0:String}", {"p0": "1.2.3"})


def test_is_single_and_list() -> None:
    assert cond("InstanceNumber", "7") == ("instance_number IN {p0:Array(Int64)}", {"p0": [7]})
    assert cond("SeriesNumber", "1\\ 3\\12") == (
        "series_number IN {p0:Array(Int64)}",
        {"p0": [1, 3, 12]},
    )


def test_is_aggregate_matches_the_count_column() -> None:
    assert cond("NumberOfStudyRelatedInstances", "5") == (
        "n_instances IN {p0:Array(Int64)}",
        {"p0": [5]},
    )


@pytest.mark.parametrize("raw", ["x", "1\\two", "1.5", "1*"])
def test_is_malformed_raises(raw: str) -> None:
    with pytest.raises(MatchError):
        cond("InstanceNumber", raw)


# --- array aggregates ------------------------------------------------------------------------


def test_modalities_in_study_any_of_the_values() -> None:
    assert cond("ModalitiesInStudy", "CT\\MR") == (
        "hasAny(modalities_in_study, {p0:Array(String)})",
        {"p0": ["CT", "MR"]},
    )


def test_modalities_in_study_single_value() -> None:
    assert cond("ModalitiesInStudy", "CT") == (
        "hasAny(modalities_in_study, {p0:Array(String)})",
        {"p0": ["CT"]},
    )


def test_array_aggregate_with_wildcards() -> None:
    assert cond("SOPClassesInStudy", "1.2.840.10008.5.1.4.1.1.*\\1.2.3") == (
        "arrayExists(x -> arrayExists(p -> x LIKE p, {p0:Array(String)}), sop_classes_in_study)",
        {"p0": ["1.2.840.10008.5.1.4.1.1.%", "1.2.3"]},
    )


# --- column override -------------------------------------------------------------------------


def test_explicit_column_overrides_the_attribute_column() -> None:
    params = Params()
    assert condition(ATTRIBUTES["PatientID"], "P1", params, column="s.patient_id") == (
        "s.patient_id = {p0:String}"
    )
