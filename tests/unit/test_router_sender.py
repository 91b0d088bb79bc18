"""Status classification and lossless transcoding of the router's sender."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pynetdicom.dsutils import decode

from strata.archive.transcode import DEFLATED_LE, IMPLICIT_LE, dataset_bytes
from strata.processors.router.rules import TRANSCODE_TARGETS
from strata.processors.router.sender import classify


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(0x0000, "delivered"), (0xB000, "delivered"), (0xB007, "delivered"),
     (0xA700, "retry"), (0xA7FF, "retry"), (0x0213, "retry"),
     (0xA900, "rejected"), (0xC000, "rejected"), (0x0122, "rejected"), (0x0211, "rejected")],
)  # fmt: skip
def test_dimse_statuses_are_classified(status: int, outcome: str) -> None:
    assert classify(status) == outcome


@pytest.mark.parametrize("name", sorted(TRANSCODE_TARGETS))
@pytest.mark.parametrize("source", ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm"])
def test_transcoding_is_lossless_and_keeps_the_instance(name: str, source: str) -> None:
    path = Path(str(get_testdata_file(source)))
    original = dcmread(path)
    target = TRANSCODE_TARGETS[name]
    data = dataset_bytes(path, target)  # the router's transcoding: archive.transcode
    if target == DEFLATED_LE:
        import zlib

        data = zlib.decompress(data, -zlib.MAX_WBITS)
    out = decode(BytesIO(data), target == IMPLICIT_LE, True)
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = target
    assert out.SOPInstanceUID == original.SOPInstanceUID
    assert np.array_equal(out.pixel_array, original.pixel_array)
