"""archive.transcode: which syntax an object goes out in, and what transcoding changes (only
the pixel data and the image pixel attributes the standard requires) and keeps."""

from __future__ import annotations

import zlib
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pynetdicom.dsutils import decode

from strata.archive import transcode as t

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
MAY_CHANGE = {
    "PixelData",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "LossyImageCompression",
}


def _file(name: str) -> Path:
    return Path(str(get_testdata_file(name)))


def _read(data: bytes, target: str) -> Dataset:
    if target == t.DEFLATED_LE:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    ds = decode(BytesIO(data), target == t.IMPLICIT_LE, True)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = target
    return ds


def test_choose_prefers_the_stored_syntax_then_the_offerers_order() -> None:
    assert t.choose(t.RLE, [t.EXPLICIT_LE, t.RLE]) == t.RLE
    assert t.choose(t.RLE, [t.IMPLICIT_LE, t.EXPLICIT_LE]) == t.IMPLICIT_LE
    assert t.choose(t.EXPLICIT_LE, [JPEG_BASELINE, t.J2K_LOSSLESS]) == t.J2K_LOSSLESS
    # nothing lossy is produced, and what no decoder reads goes out only as stored
    assert t.choose(t.EXPLICIT_LE, [JPEG_BASELINE]) is None
    mpeg2 = "1.2.840.10008.1.2.4.100"
    assert t.choose(mpeg2, [t.EXPLICIT_LE]) is None
    assert t.choose(mpeg2, [t.EXPLICIT_LE, mpeg2]) == mpeg2
    assert not t.can_produce(t.EXPLICIT_BE, t.EXPLICIT_LE)


def test_as_stored_is_the_files_dataset_bytes() -> None:
    path = _file("SC_rgb_rle.dcm")
    from pynetdicom.dsutils import split_dataset

    _meta, offset = split_dataset(path)
    assert t.dataset_bytes(path, t.RLE) == path.read_bytes()[offset:]


@pytest.mark.parametrize(
    "name",
    [
        "SC_rgb_rle.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "GDCMJ2K_TextGBR.dcm",  # YBR_RCT: decodes to RGB
        "SC_rgb_jpeg_gdcm.dcm",
        "JPEG2000.dcm",
        "image_dfl.dcm",
    ],
)
@pytest.mark.parametrize("target", [t.EXPLICIT_LE, t.IMPLICIT_LE, t.J2K_LOSSLESS, t.RLE])
def test_decoded_pixels_and_other_elements_are_kept(name: str, target: str) -> None:
    path = _file(name)
    original = dcmread(path)
    out = _read(t.dataset_bytes(path, target), target)
    assert np.array_equal(out.pixel_array, original.pixel_array)
    for elem in original:
        if elem.tag.is_private and target == t.IMPLICIT_LE:
            continue  # read back without its VR: the same bytes, another interpretation
        if elem.keyword not in MAY_CHANGE:
            assert out[elem.tag].value == elem.value, elem.tag
    assert out.SOPInstanceUID == original.SOPInstanceUID


def test_lossy_ycbcr_becomes_rgb_and_stays_marked_lossy() -> None:
    path = _file("SC_rgb_dcmtk_+eb+cy+s2.dcm")  # JPEG baseline, YBR_FULL_422
    original = dcmread(path)
    assert original.PhotometricInterpretation == "YBR_FULL_422"
    out = _read(t.dataset_bytes(path, t.EXPLICIT_LE), t.EXPLICIT_LE)
    assert out.PhotometricInterpretation == "RGB" and out.PlanarConfiguration == 0
    assert out.LossyImageCompression == "01"
    assert np.array_equal(out.pixel_array, original.pixel_array)  # pydicom's own decoding
    assert len(out.PixelData) == out.Rows * out.Columns * 3


def test_part10_has_new_file_meta() -> None:
    path = _file("SC_rgb_rle.dcm")
    ds = dcmread(BytesIO(t.part10_bytes(path, t.EXPLICIT_LE)))
    assert ds.file_meta.TransferSyntaxUID == t.EXPLICIT_LE
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID


def test_an_undecodable_object_raises() -> None:
    with pytest.raises(Exception):  # noqa: B017 - whichever error the codec gives
        t.dataset_bytes(_file("JPEG-lossy.dcm"), t.EXPLICIT_LE)


def test_the_pool_transcodes_and_recovers_from_a_dead_worker() -> None:
    import os

    t.configure(2)
    jobs = [(_file("SC_rgb_rle.dcm"), t.EXPLICIT_LE), (_file("JPEG2000.dcm"), t.IMPLICIT_LE)]
    assert [t.submit(p, ts).result() for p, ts in jobs] == [
        t.dataset_bytes(p, ts) for p, ts in jobs
    ]
    assert t.workers() == 2
    # a worker dying (as in a codec crash) fails its job and breaks the pool: the next job
    # gets a new pool
    from concurrent.futures.process import BrokenProcessPool

    with pytest.raises(BrokenProcessPool):
        t.pool().submit(os._exit, 1).result(timeout=60)
    assert t.submit(*jobs[0]).result(timeout=60) == t.dataset_bytes(*jobs[0])


def test_lossless_grayscale_keeps_the_stored_bytes_before_the_pixel_data() -> None:
    """The fast path: only the Pixel Data element differs from the stored dataset bytes."""
    path = _file("MR_small_jp2klossless.dcm")  # with Data Set Trailing Padding after it
    stored = t.stored_dataset_bytes(path)
    out = t._spliced(str(path), t.J2K_LOSSLESS)  # noqa: SLF001 - the path taken
    assert out is not None and out == t.dataset_bytes(path, t.EXPLICIT_LE)
    head = stored.index(b"\xe0\x7f\x10\x00")
    assert out[:head] == stored[:head]
    assert out[head : head + 6] == b"\xe0\x7f\x10\x00OW"
    got = _read(out, t.EXPLICIT_LE)
    assert np.array_equal(got.pixel_array, dcmread(path).pixel_array)
    assert got[0xFFFCFFFC].value == dcmread(path)[0xFFFCFFFC].value  # after it: kept
    # the colour space converted by the decoder: the general path
    assert t._spliced(str(_file("GDCMJ2K_TextGBR.dcm")), t.J2K_LOSSLESS) is None  # noqa: SLF001


def test_too_small_for_jpeg_2000_is_a_precise_error(tmp_path: Path) -> None:
    from tests.support.synthetic import ct_series

    [small] = ct_series(tmp_path, 1, rows=16)
    with pytest.raises(t.TranscodeError, match="32x32"):
        t.dataset_bytes(small, t.J2K_LOSSLESS)
    assert t.dataset_bytes(small, t.RLE)  # the other lossless encoders take it


def test_pool_workers_die_with_a_killed_server(tmp_path: Path) -> None:
    """kill -9 of the process that owns the transcoding pool leaves no orphan workers."""
    import os
    import signal
    import subprocess
    import sys

    from tests.support.wait import wait_for

    script = (
        "import sys; from strata.archive import transcode as t; t.configure(2); t.warm(); "
        "print(' '.join(str(p) for p in t.pool()._processes), flush=True); sys.stdin.read()"
    )
    root = Path(__file__).resolve().parents[2]
    owner = subprocess.Popen(
        [sys.executable, "-c", script], cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    assert owner.stdout is not None
    pids = [int(p) for p in owner.stdout.readline().split()]
    assert len(pids) == 2

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    assert all(alive(p) for p in pids)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    wait_for(lambda: not any(alive(p) for p in pids), 30, "the pool's workers to exit")
