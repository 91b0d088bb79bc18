"""Synthetic CT studies for load and fault tests: fresh UIDs, realistic headers, small pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def ct_series(out: Path, n: int, patient_id: str = "SYN0001", rows: int = 64) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    pixels = (np.arange(rows * rows, dtype=np.uint16) % 4096).reshape(rows, rows)
    files = []
    for i in range(n):
        sop = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID, ds.PatientName = patient_id, "Synthetic^Patient"
        ds.PatientBirthDate, ds.PatientSex = "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261127", "120000", "ACC" + patient_id
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness, ds.ImagePositionPatient = 1.0, [0, 0, float(i)]
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = (pixels + i).astype(np.uint16).tobytes()
        f = out / f"{i:05d}.dcm"
        ds.save_as(str(f), enforce_file_format=True)
        files.append(f)
    return files
