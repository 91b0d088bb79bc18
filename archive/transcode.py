"""On-the-fly transcoding of stored objects for retrieve (C-GET, C-MOVE, WADO-RS) and routing.

One place decides which transfer syntax an object can go out in (``can_produce``, ``choose``)
and produces its bytes there (``dataset_bytes``, ``part10_bytes``); no network code here.

- As stored: the dataset bytes read from the file, unchanged.
- To an uncompressed syntax (Explicit / Implicit VR Little Endian, Deflated Explicit VR LE):
  the pixel data is decoded with pydicom's decoders (RLE, JPEG baseline / extended / lossless,
  JPEG-LS, JPEG 2000, HTJ2K, as the installed plugins allow). Lossy sources are converted to
  RGB where they are YCbCr (PS3.5 8.2.1: the uncompressed YBR_FULL_422 layout is not what the
  decoder gives), lossless ones keep their colour space; Photometric Interpretation, Planar
  Configuration and Number of Frames follow the decoded data, Lossy Image Compression stays
  (or becomes) "01" for a lossy source. Every other element is written from its stored bytes.
- To a lossless compressed syntax (RLE, JPEG-LS lossless, JPEG 2000 lossless) when that is
  all the peer takes: decoded as above, then encoded.
The SOP Instance UID is kept (PS3.4 C.4.2.1.3.1 / PS3.3 C.12.1.1.5: lossless conversion
is the same instance; a lossy source stays marked lossy).

Decoding is CPU-bound: ``pool()`` is a bounded process pool shared by a process's callers, so
a study's objects decode in parallel and off any association's thread.
"""

from __future__ import annotations

import io
import multiprocessing
import multiprocessing.connection
import os
import struct
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydicom import Dataset

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
DEFLATED_LE = "1.2.840.10008.1.2.1.99"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
RLE = "1.2.840.10008.1.2.5"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"

UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)
NATIVE = frozenset({IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE, DEFLATED_LE})
# Lossless compressed syntaxes this module encodes to, in order of preference as a target.
LOSSLESS_TARGETS = (J2K_LOSSLESS, JPEG_LS_LOSSLESS, RLE)
# Syntaxes whose pixel data has always lost information (JPEG baseline / extended).
ALWAYS_LOSSY = frozenset({"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"})
# Syntaxes that may be lossy (the Lossy Image Compression attribute says), decoded to RGB
# when YCbCr, like the always-lossy ones.
MAYBE_LOSSY = frozenset(
    {"1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
)
# Lossless-only compressed syntaxes: decoding one changes nothing but the pixel data unless the
# decoder converts the colour space (``_spliced`` checks).
LOSSLESS_ONLY = frozenset(
    {
        RLE,
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        JPEG_LS_LOSSLESS,
        J2K_LOSSLESS,
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
    }
)
_PIXEL_DATA = 0x7FE00010


class TranscodeError(Exception):
    """The object cannot be produced in the asked transfer syntax."""


@cache
def decodable() -> frozenset[str]:
    """Compressed syntaxes an installed pydicom decoder plugin handles."""
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID, AllTransferSyntaxes

    out = set()
    for uid in AllTransferSyntaxes:
        u = UID(uid)
        if not u.is_compressed:
            continue
        try:
            if get_decoder(u).is_available:
                out.add(str(u))
        except NotImplementedError:
            continue
    return frozenset(out)


@cache
def encodable() -> frozenset[str]:
    """Lossless compressed syntaxes an installed pydicom encoder plugin handles."""
    from pydicom.pixels import get_encoder
    from pydicom.uid import UID

    out = set()
    for uid in LOSSLESS_TARGETS:
        try:
            if get_encoder(UID(uid)).is_available:
                out.add(uid)
        except NotImplementedError:
            continue
    return frozenset(out)


def can_produce(stored: str, target: str) -> bool:
    """Whether an object stored in ``stored`` can be sent in ``target``."""
    if stored == target:
        return True
    if stored == EXPLICIT_BE:  # retired (PS3.5 A.3); its byte-swapped OW values are not converted
        return False
    if stored not in NATIVE and stored not in decodable():
        return False
    if target in (EXPLICIT_LE, IMPLICIT_LE, DEFLATED_LE):
        return True
    return target in encodable()


def choose(stored: str, offered: Iterable[str]) -> str | None:
    """The syntax to send an object stored in ``stored`` in, of those ``offered`` (in the
    offerer's order): the stored one when offered (no work, nothing changed), else the first
    one this module can produce; None when there is none."""
    offered = list(offered)
    if stored in offered:
        return stored
    return next((ts for ts in offered if can_produce(stored, ts)), None)


def stored_syntax(path: Path | str) -> str:
    """The transfer syntax of a stored Part 10 file."""
    from pynetdicom.dsutils import split_dataset

    return str(split_dataset(Path(path))[0].get("TransferSyntaxUID", ""))


def stored_dataset_bytes(path: Path | str) -> bytes:
    """The dataset bytes of a Part 10 file as stored (the file meta group left out)."""
    from pynetdicom.dsutils import split_dataset

    _meta, offset = split_dataset(Path(path))
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read()


def decoded(path: Path | str, target: str) -> Dataset:
    """The object read and, unless it stays as stored, with its pixel data in ``target``."""
    from pydicom import dcmread
    from pydicom.uid import UID

    ds = dcmread(str(path))
    stored = str(ds.file_meta.TransferSyntaxUID)
    if not can_produce(stored, target):
        raise TranscodeError(f"cannot convert {stored} to {target}")
    if stored in NATIVE or "PixelData" not in ds:
        pass
    else:
        # YCbCr from a (possibly) lossy codec goes out as RGB, as its decoder gives it
        as_rgb = stored in ALWAYS_LOSSY or stored in MAYBE_LOSSY
        ds.decompress(as_rgb=as_rgb, generate_instance_uid=False)
        if stored in ALWAYS_LOSSY and str(ds.get("LossyImageCompression", "")) != "01":
            ds.LossyImageCompression = "01"
    if target not in NATIVE and "PixelData" in ds:
        if target == J2K_LOSSLESS and min(int(ds.Rows), int(ds.Columns)) < 32:
            # openjpeg's encoder (6 resolution levels, not configurable through pydicom)
            raise TranscodeError("JPEG 2000 encoding needs at least 32x32 pixels")
        if str(ds.file_meta.TransferSyntaxUID) != EXPLICIT_LE:  # native in another syntax
            ds.file_meta.TransferSyntaxUID = UID(EXPLICIT_LE)
        ds.compress(UID(target), generate_instance_uid=False)
    ds.file_meta.TransferSyntaxUID = UID(target)
    return ds


def _spliced(path: str, stored: str) -> bytes | None:
    """Explicit VR Little Endian dataset bytes of an object stored in a lossless-only
    compressed syntax, when decoding changes nothing but the pixel data: the stored bytes up
    to Pixel Data unchanged (they are explicit VR little endian already), then the decoded
    Pixel Data, then the elements after it (e.g. trailing padding) as stored. None when another
    attribute would change (the decoder converted the colour space, frames without Number of
    Frames): the caller then takes the general path. Saves parsing and re-writing every
    element (~10% of a JPEG 2000 slice's transcoding time)."""
    if stored not in LOSSLESS_ONLY or stored not in decodable():
        return None
    from pydicom import dcmread
    from pydicom.pixels import get_decoder
    from pydicom.tag import Tag
    from pydicom.uid import UID
    from pynetdicom.dsutils import split_dataset

    _meta, start = split_dataset(Path(path))
    raw = Path(path).read_bytes()
    ds = dcmread(io.BytesIO(raw))
    elem = ds._dict.get(Tag(_PIXEL_DATA))  # noqa: SLF001 - the raw element, for its file offset
    if elem is None or not hasattr(elem, "value_tell"):
        return None
    head_end = elem.value_tell - 12  # explicit VR OB/OW: tag, VR, 2 reserved, 4 length
    if raw[head_end : head_end + 4] != b"\xe0\x7f\x10\x00":
        return None
    # the end of the encapsulated value: its items, then the sequence delimitation item
    tail = elem.value_tell
    while True:
        if tail + 8 > len(raw):
            return None
        group, element, length = struct.unpack_from("<HHL", raw, tail)
        tail += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000):
            return None
        tail += length
    photometric = str(ds.get("PhotometricInterpretation", ""))
    planar = int(ds.get("PlanarConfiguration", 0) or 0)
    frames = []
    for arr, pixel in get_decoder(UID(stored)).iter_array(ds, as_rgb=False):
        if pixel["photometric_interpretation"] != photometric or (
            int(pixel["samples_per_pixel"]) > 1 and int(pixel["planar_configuration"]) != planar
        ):
            return None
        frames.append(arr.tobytes())
    if len(frames) > 1 and "NumberOfFrames" not in ds:
        return None
    data = b"".join(frames)
    if len(data) % 2:
        data += b"\x00"
    vr = b"OB" if int(ds.BitsAllocated) <= 8 else b"OW"
    header = struct.pack("<HH2sHL", 0x7FE0, 0x0010, vr, 0, len(data))
    return raw[start:head_end] + header + data + raw[tail:]  # what follows: as stored


def dataset_bytes(path: Path | str, target: str) -> bytes:
    """The object's dataset (no file meta) encoded in ``target``, ready for a C-STORE."""
    path = str(path)
    stored = stored_syntax(path)
    if stored == target:
        return stored_dataset_bytes(path)
    if target == EXPLICIT_LE:
        spliced = _spliced(path, stored)
        if spliced is not None:
            return spliced
    from pynetdicom.dsutils import encode

    ds = decoded(path, target)
    data = encode(ds, target == IMPLICIT_LE, target != EXPLICIT_BE, target == DEFLATED_LE)
    if data is None:
        raise TranscodeError(f"the dataset cannot be encoded in {target}")
    return data


def part10_bytes(path: Path | str, target: str) -> bytes:
    """The object as a Part 10 file in ``target`` (new file meta: transfer syntax, and this
    implementation's class UID / version name as the file's writer)."""
    from pydicom import dcmread

    path = str(path)
    ds = decoded(path, target) if target else dcmread(path)
    buf = io.BytesIO()
    ds.file_meta.pop("ImplementationVersionName", None)
    ds.file_meta.pop("ImplementationClassUID", None)
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# ------------------------------------------------------------------------ the process pool
_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()
_workers = 0  # configured (0: one per CPU)
_size = 0  # the pool's


def configure(workers: int) -> None:
    """The pool's size (0: one per CPU). Call before the first ``pool()``."""
    global _workers
    _workers = workers


def pool() -> ProcessPoolExecutor:
    """This process's transcoding pool (created on first use; spawned, not forked: the
    callers are multithreaded servers)."""
    global _pool, _size
    with _pool_lock:
        # a worker that died (a codec crash) breaks the whole pool: start a new one
        if _pool is None or getattr(_pool, "_broken", False):
            if _pool is not None:
                _pool.shutdown(wait=False, cancel_futures=True)
            _size = _workers or os.cpu_count() or 1
            _pool = ProcessPoolExecutor(
                _size, mp_context=multiprocessing.get_context("spawn"), initializer=_follow_parent
            )
        return _pool


def _follow_parent() -> None:
    """In each worker: exit when the process that owns the pool dies (kill -9 included). A
    pool worker waits on its call queue, which other workers also hold open, so without this
    it would outlive a killed server as an orphan. (Not PR_SET_PDEATHSIG: that fires when the
    *thread* that started the worker ends, and workers are started by whichever association
    thread submits first.)"""
    parent = multiprocessing.parent_process()
    if parent is None or parent.sentinel is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(0)

    threading.Thread(target=watch, name="follow-parent", daemon=True).start()


def workers() -> int:
    """The pool's number of worker processes."""
    pool()
    return _size


def warm() -> None:
    """Start the pool's workers and load the codecs in each (the first retrieve then pays
    no process start)."""
    p = pool()
    for f in [p.submit(_warm_one) for _ in range(workers())]:
        f.result()


def _warm_one() -> None:
    decodable()
    encodable()


def submit(path: Path | str, target: str) -> Future[bytes]:
    """``dataset_bytes(path, target)`` in the pool."""
    return pool().submit(dataset_bytes, str(path), target)
