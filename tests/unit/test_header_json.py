"""common.dicom.header_json (written from the undecoded elements where values are plain) is
the same text as header_json_pydicom (pydicom's to_json_dict of the stripped dataset), over
every file of pydicom's test corpus (charsets, implicit/explicit/big endian, sequences, private
tags, odd values) and over generated CT headers with awkward values."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from common.dicom import header_json, header_json_pydicom, read_header

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
