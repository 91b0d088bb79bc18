"""The store feature's contract, with a real hot tier on tmp disk and a fake event log."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from archive.hot import HotTier
from common.errors import Unavailable
from ingest import statuses
from ingest.store import Received, StoreService

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


class FakeLog:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.records: list[tuple[str, str, bytes]] = []

    def publish(self, topic: str, key: str, value: bytes) -> tuple[int, int]:
        if self.fail:
            raise Unavailable("broker down")
        self.records.append((topic, key, value))
        return 0, len(self.records) - 1


def spool(tmp: Path, hot: HotTier, mutate=None) -> tuple[Path, pydicom.Dataset]:
    ds = pydicom.dcmread(str(CT))
    if mutate:
        mutate(ds)
    p = hot.incoming / f"{generate_uid()}.dcm"
    ds.save_as(str(p), enforce_file_format=True)
    return p, ds


def rx(path: Path, ds: pydicom.Dataset, **kw) -> Received:
    base = dict(
        path=path,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        calling_ae="CT1",
        called_ae="STRATA",
        peer_address="127.0.0.1:5000",
    )
    base.update(kw)
    return Received(**base)


@pytest.fixture
def hot(tmp_path: Path) -> HotTier:
    return HotTier(tmp_path / "hot")


def test_success_only_after_bytes_and_event(tmp_path: Path, hot: HotTier) -> None:
    log = FakeLog()
    svc = StoreService(hot, log, "t", "n1")
    p, ds = spool(tmp_path, hot)
    data = p.read_bytes()
    out = svc.store(rx(p, ds))
    assert out.status == statuses.SUCCESS
    assert len(log.records) == 1
    topic, key, _ = log.records[0]
    assert key == ds.StudyInstanceUID
    e = out.event.instance_stored
    assert hot.path(e.location.key).read_bytes() == data
    assert e.size_bytes == len(data) and len(e.sha256) == 64
    assert e.patient.patient_id == ds.PatientID and e.modality == ds.Modality
    assert e.calling_ae_title == "CT1" and e.ingest_node == "n1"
    assert "7FE00010" not in e.header_json and "00100010" in e.header_json


def test_event_log_down_answers_retryable_failure(tmp_path: Path, hot: HotTier) -> None:
    svc = StoreService(hot, FakeLog(fail=True), "t", "n1")
    p, ds = spool(tmp_path, hot)
    out = svc.store(rx(p, ds))
    assert out.status == statuses.OUT_OF_RESOURCES_EVENT_LOG
    assert 0xA700 <= out.status <= 0xA7FF  # "Refused: out of resources": the sender retries


@pytest.mark.parametrize("attr", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_is_cannot_understand(tmp_path: Path, hot: HotTier, attr: str) -> None:
    log = FakeLog()
    p, ds = spool(tmp_path, hot, lambda d: delattr(d, attr))
    out = StoreService(hot, log, "t", "n1").store(rx(p, ds, sop_instance_uid="1.2.3"))
    assert out.status in (
        statuses.CANNOT_UNDERSTAND_MISSING_UID,
        statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    )
    if attr != "SOPInstanceUID":
        assert out.status == statuses.CANNOT_UNDERSTAND_MISSING_UID and attr in out.comment
    assert log.records == []


def test_invalid_uid(tmp_path: Path, hot: HotTier) -> None:
    p, ds = spool(tmp_path, hot, lambda d: setattr(d, "StudyInstanceUID", "1.2.abc"))
    out = StoreService(hot, FakeLog(), "t", "n1").store(rx(p, ds))
    assert out.status == statuses.CANNOT_UNDERSTAND_INVALID_UID


def test_sop_class_mismatch(tmp_path: Path, hot: HotTier) -> None:
    p, ds = spool(tmp_path, hot)
    out = StoreService(hot, FakeLog(), "t", "n1").store(
        rx(p, ds, sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    )
    assert out.status == statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_garbage_is_undecodable(tmp_path: Path, hot: HotTier) -> None:
    p = hot.incoming / "junk.dcm"
    p.write_bytes(b"this is not a DICOM file at all")
    out = StoreService(hot, FakeLog(), "t", "n1").store(
        Received(p, "1.2", "1.2.3", ExplicitVRLittleEndian, "A", "B", "x")
    )
    assert out.status == statuses.CANNOT_UNDERSTAND_UNDECODABLE


def test_hot_tier_never_overwrites(tmp_path: Path, hot: HotTier) -> None:
    a = hot.incoming / "a"
    a.write_bytes(b"first")
    assert hot.put_file("studies/1/2/3/" + "0" * 64 + ".dcm", a) is True
    b = hot.incoming / "b"
    b.write_bytes(b"second")
    assert hot.put_file("studies/1/2/3/" + "0" * 64 + ".dcm", b) is False
    assert hot.path("studies/1/2/3/" + "0" * 64 + ".dcm").read_bytes() == b"first"
    assert not a.exists() and not b.exists()
    shutil.rmtree(hot.root)
