"""DICOMweb conformance with a real client (dicomweb-client): QIDO-RS, WADO-RS (study, series,
instance, metadata, frames, rendered), STOW-RS through the C-STORE contract, found by C-FIND."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pynetdicom.dsutils import split_dataset

from tests.support.dcmtk import findscu, storescu
from tests.support.stack import Stack, make_stack
from tests.support.synthetic import ct_series

pytestmark = pytest.mark.e2e
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


@pytest.fixture(scope="module")
def w(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    s = make_stack(tmp_path_factory.mktemp("dicomweb-home"))
    s.env["STRATA_DICOMWEB_CORS_ORIGINS"] = "http://viewer.example"
    s.up()
    files = ct_series(tmp_path_factory.mktemp("dw") / "ct", 12, patient_id="DW-PAT")
    s.cli("send", "-q", *map(str, files))
    code, rsp, out = storescu(
        s.settings.ingest_port, s.settings.ingest_ae_title, [TEST_FILES / "JPEG2000.dcm"], ["-xw"]
    )
    assert rsp == ["Success"], out
    url = f"http://127.0.0.1:{s.settings.dicomweb_port}{s.settings.dicomweb_prefix}"
    client = DICOMwebClient(url=url)
    deadline = time.monotonic() + 10

    def indexed() -> bool:
        # The index writes a batch table by table (no multi-table transactions in
        # ClickHouse): wait for the last of them, the study's counts, as well.
        if len(client.search_for_instances(search_filters={"PatientID": "DW-PAT"})) < 12:
            return False
        st = client.search_for_studies(search_filters={"PatientID": "DW-PAT"})
        return bool(st) and st[0].get("00201208", {}).get("Value") == [12]

    while time.monotonic() < deadline and not indexed():
        time.sleep(0.2)
    try:
        yield {"stack": s, "client": client, "files": files, "url": url}
    finally:
        s.down()


def _study(files: list[Path]) -> pydicom.Dataset:
    return pydicom.dcmread(str(files[0]), stop_before_pixels=True)


def test_qido_studies_series_instances(w: dict) -> None:
    c = w["client"]
    ds = _study(w["files"])
    studies = c.search_for_studies(search_filters={"PatientID": "DW-PAT"})
    assert len(studies) == 1
    st = pydicom.Dataset.from_json(studies[0])
    assert st.StudyInstanceUID == ds.StudyInstanceUID
    assert int(st.NumberOfStudyRelatedInstances) == 12 and st.ModalitiesInStudy == "CT"
    wild = c.search_for_studies(search_filters={"PatientName": "synth*"}, fields=["StudyDate"])
    assert any(pydicom.Dataset.from_json(x).StudyDate == "20261127" for x in wild)
    series = c.search_for_series(study_instance_uid=ds.StudyInstanceUID)
    assert len(series) == 1
    inst = c.search_for_instances(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        limit=5,
        offset=5,
    )
    numbers = [int(pydicom.Dataset.from_json(i).InstanceNumber) for i in inst]
    assert numbers == [6, 7, 8, 9, 10]
    r = requests.get(w["url"] + "/studies", params={"NoSuchAttr": "x"}, timeout=10)
    assert r.status_code == 400


def test_wado_instance_series_study_are_the_stored_bytes(w: dict) -> None:
    s: Stack = w["stack"]
    c = w["client"]
    ds = _study(w["files"])
    inst = c.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = next(s.settings.hot_dir.rglob(f"{ds.SOPInstanceUID}.*.dcm"))
    buf = io.BytesIO()
    inst.save_as(buf, enforce_file_format=True)
    assert inst.SOPInstanceUID == ds.SOPInstanceUID
    assert inst.PixelData == pydicom.dcmread(str(stored)).PixelData
    series = c.retrieve_series(ds.StudyInstanceUID, ds.SeriesInstanceUID)
    assert len(series) == 12
    study = c.retrieve_study(ds.StudyInstanceUID)
    assert sorted(x.SOPInstanceUID for x in study) == sorted(x.SOPInstanceUID for x in series)
    # raw bytes and caching headers through plain HTTP
    url = (
        f"{w['url']}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    r = requests.get(
        url,
        headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        timeout=10,
    )
    assert r.status_code == 200 and r.headers["ETag"]
    _meta, off = split_dataset(stored)
    assert stored.read_bytes()[off:] in r.content
    r2 = requests.get(url, headers={"If-None-Match": r.headers["ETag"]}, timeout=10)
    assert r2.status_code == 304
    assert requests.get(w["url"] + "/studies/1.2.3.4", timeout=10).status_code == 404


def test_metadata_from_the_index(w: dict) -> None:
    ds = _study(w["files"])
    md = w["client"].retrieve_study_metadata(ds.StudyInstanceUID)
    assert len(md) == 12
    one = pydicom.Dataset.from_json(md[0])
    assert one.Rows == 64 and one.Modality == "CT"
    stored = {
        str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in w["files"]
    }
    assert {m["00080018"]["Value"][0] for m in md} == stored  # one header per stored instance
    assert all("7FE00010" not in m for m in md)
    assert md[0]["00020010"]["Value"] == ["1.2.840.10008.1.2.1"]


def test_frames_native_and_compressed(w: dict) -> None:
    c = w["client"]
    ds = pydicom.dcmread(str(w["files"][0]))
    [frame] = c.retrieve_instance_frames(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1]
    )
    assert frame == ds.PixelData
    j = pydicom.dcmread(str(TEST_FILES / "JPEG2000.dcm"))
    [jf] = c.retrieve_instance_frames(
        j.StudyInstanceUID,
        j.SeriesInstanceUID,
        j.SOPInstanceUID,
        frame_numbers=[1],
        media_types=(("image/jp2", "1.2.840.10008.1.2.4.91"),),
    )
    from pydicom.encaps import generate_frames

    assert jf == next(generate_frames(j.PixelData, number_of_frames=1))
    # decompressed on request
    [raw] = c.retrieve_instance_frames(
        j.StudyInstanceUID,
        j.SeriesInstanceUID,
        j.SOPInstanceUID,
        frame_numbers=[1],
        media_types=(("application/octet-stream", "*"),),
    )
    assert len(raw) in (
        len(jf),
        int(j.Rows) * int(j.Columns) * int(j.SamplesPerPixel) * int(j.BitsAllocated) // 8,
    )


def test_rendered_jpeg_and_png(w: dict) -> None:
    from PIL import Image

    ds = _study(w["files"])
    base = (
        f"{w['url']}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/rendered"
    )
    for accept, fmt in (("image/jpeg", "JPEG"), ("image/png", "PNG")):
        r = requests.get(base, headers={"Accept": accept}, timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"] == accept
        img = Image.open(io.BytesIO(r.content))
        assert img.format == fmt and img.size == (64, 64)
        assert max(img.getdata()) > 0  # not blank


def test_stow_goes_through_the_store_contract(w: dict, tmp_path: Path) -> None:
    s: Stack = w["stack"]
    c = w["client"]
    files = ct_series(tmp_path / "stow", 3, patient_id="DW-STOW")
    datasets = [pydicom.dcmread(str(f)) for f in files]
    bad = pydicom.dcmread(str(files[0]))
    bad.SOPInstanceUID = pydicom.uid.generate_uid()
    del bad.StudyInstanceUID
    bad.file_meta.MediaStorageSOPInstanceUID = bad.SOPInstanceUID
    result = c.store_instances(datasets)
    assert len(result.ReferencedSOPSequence) == 3
    # a mixed request: 202 with the failure and its reason
    r = requests.post(
        w["url"] + "/studies",
        data=_multipart([datasets[0], bad], "B0UNDARY"),
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B0UNDARY'},
        timeout=30,
    )
    assert r.status_code == 202
    failed = r.json()["00081198"]["Value"]
    assert failed[0]["00081197"]["Value"] == [0xC001]
    r = requests.post(
        w["url"] + "/studies", data=b"x", timeout=10, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 415
    # STOW-stored instances are found by C-FIND like any other
    study = str(datasets[0].StudyInstanceUID)
    deadline = time.monotonic() + 5
    hits = []
    while time.monotonic() < deadline and len(hits) < 3:
        hits = findscu(
            s.settings.qr_port,
            s.settings.qr_ae_title,
            "IMAGE",
            {"StudyInstanceUID": study, "SOPInstanceUID": ""},
        )
        time.sleep(0.2)
    assert len(hits) == 3


def test_cors_for_a_viewer_on_another_origin(w: dict) -> None:
    r = requests.options(
        w["url"] + "/studies",
        timeout=10,
        headers={"Origin": "http://viewer.example", "Access-Control-Request-Method": "GET"},
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
    r = requests.get(w["url"] + "/studies", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "Access-Control-Allow-Origin" not in r.headers


def _multipart(datasets: list[pydicom.Dataset], boundary: str) -> bytes:
    out = b""
    for ds in datasets:
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        out += (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").encode()
        out += buf.getvalue() + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()
