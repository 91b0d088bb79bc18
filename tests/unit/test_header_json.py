"""common.dicom.header_json (written from the undecoded elements where values are plain) is
the same text as header_json_pydicom (pydicom's to_json_dict of the stripped dataset), over
every file of pydicom's test corpus (charsets, implicit/explicit/big endian, sequences, private
tags, odd values) and over generated CT headers with awkward values."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from strata.common.dicom import header_json, header_json_pydicom, read_header

CORPUS = sorted((Path(pydicom.__file__).parent / "data" / "test_files").rglob("*.dcm"))


def _read(path: Path) -> pydicom.Dataset:
    return pydicom.dcmread(str(path), stop_before_pixels=True, defer_size="64 KB", force=True)


@pytest.mark.parametrize("path", CORPUS, ids=[p.name for p in CORPUS])
def test_same_text_as_pydicom_on_the_corpus(path: Path) -> None:
    try:
        expected = header_json_pydicom(_read(path))
    except Exception:
        pytest.fail(f"pydicom cannot read {path.name}")  # the corpus is readable
    assert header_json(_read(path)) == expected


def test_the_corpus_is_there() -> None:
    assert len(CORPUS) > 50


text = st.text(alphabet=st.sampled_from(list(" AZaz09^.=\\-_*é\t\0+eE")), max_size=14)


@settings(max_examples=300, deadline=None)
@given(
    name=text,
    desc=text,
    ds_value=text,
    is_value=text,
    cs_value=text,
    implicit=st.booleans(),
    charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "ISO_IR 6"]),
)
def test_same_text_as_pydicom_on_awkward_values(
    tmp_path_factory, name, desc, ds_value, is_value, cs_value, implicit, charset
) -> None:
    ds = pydicom.dcmread(str(CORPUS[0].parent / "CT_small.dcm"))
    enc = "latin-1" if charset in (None, "ISO_IR 100", "ISO_IR 6") else "utf-8"
    if charset:
        ds.SpecificCharacterSet = charset
    elif "SpecificCharacterSet" in ds:
        del ds.SpecificCharacterSet
    raw = {
        (0x0010, 0x0010): ("PN", name),
        (0x0008, 0x1030): ("LO", desc),
        (0x0028, 0x0030): ("DS", ds_value),
        (0x0020, 0x0013): ("IS", is_value),
        (0x0008, 0x0060): ("CS", cs_value),
    }
    path = tmp_path_factory.mktemp("h") / "x.dcm"
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    for (g, e), (vr, v) in raw.items():
        # written as raw bytes: whatever a modality might send, valid or not
        b = v.encode(enc, "replace")
        b += b" " * (len(b) % 2)
        tag = Tag(g, e)
        ds._dict[tag] = RawDataElement(tag, vr, len(b), b, 0, implicit, True)
    try:
        ds.save_as(str(path), enforce_file_format=True)
    except Exception:
        return  # not writable at all: nothing a modality could send either
    assert header_json(read_header(path)) == header_json_pydicom(read_header(path))


# --------------------------------------------------------------------------- bounded headers
def _with(tmp_path: Path, mutate) -> pydicom.Dataset:  # noqa: ANN001
    ds = pydicom.dcmread(str(CORPUS[0].parent / "CT_small.dcm"))
    mutate(ds)
    p = tmp_path / "x.dcm"
    ds.save_as(str(p), enforce_file_format=True)
    return read_header(p)


def test_a_value_over_the_element_bound_is_marked_as_bulk_data(tmp_path: Path) -> None:
    """Finding #15.1: a 2 MB UT went whole into the event, which Kafka then refused."""
    ds = _with(tmp_path, lambda d: setattr(d, "TextValue", "x" * 2_000_000))  # (0040,A160) UT
    text = header_json(ds, 64 * 1024, 512 * 1024)
    assert len(text.encode()) < 64 * 1024
    obj = json.loads(text)
    assert obj["0040A160"] == {"vr": "UT", "BulkDataURI": ""}
    assert obj["00100010"]["Value"] == [{"Alphabetic": "CompressedSamples^CT1"}]
    # unbounded: as before (the whole value)
    assert len(header_json(ds)) > 2_000_000


def test_many_values_under_the_element_bound_are_kept_within_the_total(tmp_path: Path) -> None:
    def many(d: pydicom.Dataset) -> None:
        for i in range(12):  # 12 x 60 KB private LT values: each under 64 KiB, 720 KB together
            d.add_new(0x00291000 + i, "LT", chr(65 + i) * 60_000)
        d.add_new(0x00290010, "LO", "ACME")

    ds = _with(tmp_path, many)
    text = header_json(ds, 64 * 1024, 256 * 1024)
    assert len(text.encode()) <= 256 * 1024
    obj = json.loads(text)
    marked = {t for t, v in obj.items() if "BulkDataURI" in v}
    private = {f"{0x00291000 + i:08X}" for i in range(12)}
    assert len(marked) == 8 and marked < private  # the fewest, largest first; 4 kept whole
    assert all(obj[t]["Value"] == [obj[t]["Value"][0]] for t in private - marked)
    assert obj["00100020"]["Value"] == ["1CT1"]


def test_a_large_sequence_is_marked_whole(tmp_path: Path) -> None:
    def seq(d: pydicom.Dataset) -> None:
        items = []
        for i in range(40):
            it = pydicom.Dataset()
            it.add_new(0x00080104, "LO", f"{i:03d}" + "y" * 3000)  # CodeMeaning
            items.append(it)
        d.ConceptNameCodeSequence = items  # 40 x 3 KB: 120 KB as JSON

    ds = _with(tmp_path, seq)
    obj = json.loads(header_json(ds, 64 * 1024, 512 * 1024))
    assert obj["0040A043"] == {"vr": "SQ", "BulkDataURI": ""}


def test_bounds_do_not_change_an_ordinary_header(tmp_path: Path) -> None:
    for path in CORPUS[:40]:
        ds = _read(path)
        plain = header_json(ds)
        if len(plain.encode()) <= 64 * 1024:
            assert header_json(_read(path), 64 * 1024, 512 * 1024) == plain
