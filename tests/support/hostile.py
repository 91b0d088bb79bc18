"""Hostile but legal (or cheap to make) objects: a huge header value, a deflate bomb."""

from __future__ import annotations

import io
import random
import string
import zlib
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, generate_uid

from tests.support.synthetic import ct_series

DEFLATED = "1.2.840.10008.1.2.1.99"


def ct_with_text(out: Path, nbytes: int, random_text: bool = False) -> Path:
    """One synthetic CT with a Text Value (0040,A160, UT) of ``nbytes`` characters: legal
    DICOM. ``random_text``: letters that compress badly (lz4 cannot shrink them much)."""
    (f,) = ct_series(out, 1, patient_id="BIG-HEADER")
    ds = pydicom.dcmread(str(f))
    if random_text:
        rng = random.Random(nbytes)
        value = "".join(rng.choices(string.ascii_letters + string.digits, k=nbytes))
    else:
        value = ("2 MB of legal report text. " * (nbytes // 27 + 1))[:nbytes]
    ds.add_new(0x0040A160, "UT", value)
    p = out / f"text-{generate_uid()}.dcm"
    ds.save_as(str(p), enforce_file_format=True)
    f.unlink()
    return p


def deflate_bomb(out: Path, inflated_bytes: int) -> tuple[Path, str]:
    """A Deflated Explicit VR Little Endian CT whose dataset inflates to ``inflated_bytes``
    or more (Pixel Data of zeros) from a few hundred KB. Returns (path, SOP Instance UID)."""
    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = DEFLATED
    meta.ImplementationClassUID = generate_uid()
    head = Dataset()
    head.SOPClassUID, head.SOPInstanceUID = CTImageStorage, sop
    head.StudyInstanceUID, head.SeriesInstanceUID = generate_uid(), generate_uid()
    head.PatientID, head.Modality = "BOMB", "CT"
    head.Rows = head.Columns = 4096
    head.BitsAllocated, head.BitsStored, head.HighBit = 8, 8, 7
    head.SamplesPerPixel, head.PhotometricInterpretation = 1, "MONOCHROME2"
    head.PixelRepresentation = 0
    frames = max(1, -(-inflated_bytes // (4096 * 4096)))
    head.NumberOfFrames = frames
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, head, implicit_vr=False, little_endian=True)
    body = buf.getvalue()
    n = 4096 * 4096 * frames
    z = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [z.compress(body), z.compress(b"\xe0\x7f\x10\x00OB\0\0" + n.to_bytes(4, "little"))]
    chunk = b"\0" * (1 << 20)
    for _ in range(n >> 20):
        parts.append(z.compress(chunk))
    parts.append(z.flush())
    mbuf = io.BytesIO()
    write_file_meta_info(mbuf, meta, enforce_standard=True)
    p = out / f"bomb-{sop}.dcm"
    p.write_bytes(b"\0" * 128 + b"DICM" + mbuf.getvalue() + b"".join(parts))
    return p, sop
