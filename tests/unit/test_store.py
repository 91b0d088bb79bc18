"""The store feature's contract, with a real hot tier on tmp disk and a fake event log."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from strata.archive.hot import HotTier
from strata.common.errors import Unavailable
from strata.common.events import decode
from strata.ingest import statuses
from strata.ingest.config import AEConfig, CallingAE
from strata.ingest.outbox import Outbox
from strata.ingest.quarantine import OVER_QUOTA, Quarantine, Usage
from strata.ingest.store import Limits, Received, StoreService
from tests.support.hostile import DEFLATED, ct_with_text, deflate_bomb

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


class FakeLog(Outbox):
    """The real SQLite outbox (a local file), with a switch to make appends fail."""

    def __init__(self, path: Path, fail: bool = False) -> None:
        super().__init__(path)
        self.fail = fail

    def append(self, **kw):  # type: ignore[override]
        if self.fail:
            raise Unavailable("disk full")
        return super().append(**kw)

    @property
    def records(self) -> list[tuple[str, str, bytes]]:
        return [(p.topic, p.key, p.value) for p in self.pending(10_000)]


def service(tmp: Path, hot: HotTier, log: Outbox | None = None, **limits) -> StoreService:
    return StoreService(
        tier=hot,
        outbox=log or FakeLog(tmp / "ob.sqlite"),
        topic="t",
        quarantine_topic="q",
        quarantine_dir=tmp / "quarantine",
        node="n1",
        aes=AEConfig(aes={"CT1": CallingAE("CT1", "north", "General", "GH")}),
        limits=Limits(**limits),
    )


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
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
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
    # per-AE attributes; the AE's default issuer fills a missing Issuer of Patient ID
    assert e.calling_ae_site == "north" and e.patient.issuer_of_patient_id == "GH"


def test_same_bytes_again_is_an_idempotent_duplicate(tmp_path: Path, hot: HotTier) -> None:
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
    p, ds = spool(tmp_path, hot)
    data = p.read_bytes()
    assert svc.store(rx(p, ds)).ok
    p2 = hot.incoming / "again.dcm"
    p2.write_bytes(data)
    out = svc.store(rx(p2, ds))
    assert out.ok and out.duplicate and out.event is None
    assert len(log.records) == 1
    assert len(list(hot.root.rglob("*.dcm"))) == 1


class FakeCold:
    """The cold tier as the store asks it: the size of the object at a key (None: absent)."""

    def __init__(self, sizes: dict[str, int] | None = None, down: bool = False) -> None:
        self.sizes = sizes or {}
        self.down = down

    def size(self, key: str) -> int | None:
        if self.down:
            raise Unavailable("S3 endpoint unreachable")
        return self.sizes.get(key)


def test_duplicate_of_an_instance_moved_away_leaves_no_hot_copy(
    tmp_path: Path, hot: HotTier
) -> None:
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
    p, ds = spool(tmp_path, hot)
    data = p.read_bytes()
    assert svc.store(rx(p, ds)).ok
    [key] = [str(f.relative_to(hot.root)) for f in hot.root.rglob("*.dcm")]
    hot.delete(key)  # the lifecycle moved it to the cold tier
    svc.cold = FakeCold({key: len(data)})
    p2 = hot.incoming / "again.dcm"
    p2.write_bytes(data)
    out = svc.store(rx(p2, ds))
    assert out.ok and out.duplicate and len(log.records) == 1
    assert not hot.exists(key) and not p2.exists()


@pytest.mark.parametrize("cold", [None, {}], ids=["no-cold-tier", "not-in-cold"])
def test_duplicate_of_an_instance_whose_object_is_gone_is_stored_again(
    tmp_path: Path, hot: HotTier, cold: dict[str, int] | None
) -> None:
    """Finding #15.2: the duplicate check asked only the outbox; an object deleted at the end
    of retention (or lost with a disk) was answered Success and never stored again."""
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
    svc.cold = None if cold is None else FakeCold(cold)
    p, ds = spool(tmp_path, hot)
    data = p.read_bytes()
    first = svc.store(rx(p, ds)).event
    key = first.instance_stored.location.key
    hot.delete(key)
    p2 = hot.incoming / "again.dcm"
    p2.write_bytes(data)
    out = svc.store(rx(p2, ds))
    assert out.ok and not out.duplicate and out.event is not None
    again = out.event.instance_stored
    assert out.event.event_id != first.event_id and again.sha256 == first.instance_stored.sha256
    assert again.supersedes_sha256 == "" and again.location.key == key
    assert hot.path(key).read_bytes() == data and len(log.records) == 2
    # and once it is there again, the next copy is a duplicate
    p3 = hot.incoming / "third.dcm"
    p3.write_bytes(data)
    assert svc.store(rx(p3, ds)).duplicate and len(log.records) == 2


def test_duplicate_whose_hot_object_is_damaged_is_a_retryable_failure(
    tmp_path: Path, hot: HotTier
) -> None:
    """Something else at the key (another size): not the recorded object, and the tier never
    overwrites it; the arrival is refused retryably (no event that would claim its bytes)."""
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
    p, ds = spool(tmp_path, hot)
    data = p.read_bytes()
    key = svc.store(rx(p, ds)).event.instance_stored.location.key
    hot.path(key).write_bytes(data[:100])  # a damaged disk
    p2 = hot.incoming / "again.dcm"
    p2.write_bytes(data)
    out = svc.store(rx(p2, ds))
    assert out.status == statuses.OUT_OF_RESOURCES_STORAGE and len(log.records) == 1


def test_duplicate_while_cold_tier_is_unreachable_is_a_retryable_failure(
    tmp_path: Path, hot: HotTier
) -> None:
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
    p, ds = spool(tmp_path, hot)
    data = p.read_bytes()
    key = svc.store(rx(p, ds)).event.instance_stored.location.key
    hot.delete(key)
    svc.cold = FakeCold(down=True)
    p2 = hot.incoming / "again.dcm"
    p2.write_bytes(data)
    out = svc.store(rx(p2, ds))
    assert out.status == statuses.OUT_OF_RESOURCES_STORAGE and len(log.records) == 1
    assert not hot.exists(key)


def test_a_gone_object_arriving_twice_at_once_is_recorded_once(tmp_path: Path) -> None:
    """Two workers see the object gone at the same time: only one records it again."""
    log = Outbox(tmp_path / "ob.sqlite")
    first = log.append(event_id="e1", topic="t", key="s", value=b"1", sop_uid="1.2", sha256="a")
    assert log.latest_arrival("1.2") == ("a", "e1")
    a = log.append(
        event_id="e2", topic="t", key="s", value=b"2", sop_uid="1.2", sha256="a", again_after="e1"
    )
    b = log.append(
        event_id="e3", topic="t", key="s", value=b"3", sop_uid="1.2", sha256="a", again_after="e1"
    )
    assert first.new and a.new and not b.new and b.event_id == "e2"
    assert [r.event_id for r in log.pending()] == ["e1", "e2"]


def test_other_bytes_same_uid_is_a_new_version(tmp_path: Path, hot: HotTier) -> None:
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
    p, ds = spool(tmp_path, hot)
    first = svc.store(rx(p, ds)).event.instance_stored
    p2, ds2 = spool(tmp_path, hot, lambda d: setattr(d, "StudyDescription", "corrected"))
    second = svc.store(rx(p2, ds2)).event.instance_stored
    assert second.sha256 != first.sha256
    assert second.supersedes_sha256 == first.sha256
    assert hot.exists(first.location.key) and hot.exists(second.location.key)
    assert len(log.records) == 2


def test_refused_bytes_are_quarantined_with_an_event(tmp_path: Path, hot: HotTier) -> None:
    log = FakeLog(tmp_path / "ob.sqlite")
    p, ds = spool(tmp_path, hot, lambda d: delattr(d, "StudyInstanceUID"))
    data = p.read_bytes()
    out = service(tmp_path, hot, log).store(rx(p, ds))
    assert out.status == statuses.CANNOT_UNDERSTAND_MISSING_UID
    [(topic, _key, value)] = log.records
    assert topic == "q"
    from strata.common.events import decode

    q = decode(value).instance_quarantined
    assert q.reason == "missing-uid" and q.dimse_status == out.status
    assert (tmp_path / "quarantine" / q.location.key).read_bytes() == data


def test_truncated_dataset_is_refused(tmp_path: Path, hot: HotTier) -> None:
    p, ds = spool(tmp_path, hot)
    p.write_bytes(p.read_bytes()[:-100])
    out = service(tmp_path, hot).store(rx(p, ds))
    assert out.status == statuses.CANNOT_UNDERSTAND_UNDECODABLE and "truncated" in out.comment


def test_oversize_object_is_refused(tmp_path: Path, hot: HotTier) -> None:
    p, ds = spool(tmp_path, hot)
    out = service(tmp_path, hot, max_object_bytes=1000).store(rx(p, ds))
    assert out.status == statuses.OUT_OF_RESOURCES_OBJECT_TOO_LARGE


def test_refuse_mode_refuses_when_log_is_behind(
    tmp_path: Path, hot: HotTier, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log, refuse_when_log_down=True, refuse_after_s=0.0)
    p, ds = spool(tmp_path, hot)
    assert svc.store(rx(p, ds)).ok  # nothing pending yet: accepted, now pending
    # The outbox state is sampled at most every 100 ms: let the service's clock pass that.
    from strata.ingest import store as store_module

    later = store_module.time.monotonic() + 1.0
    monkeypatch.setattr(store_module.time, "monotonic", lambda: later)
    p2, ds2 = spool(tmp_path, hot, lambda d: setattr(d, "SOPInstanceUID", generate_uid()))
    assert svc.store(rx(p2, ds2)).status == statuses.OUT_OF_RESOURCES_EVENT_LOG


def test_outbox_failure_answers_retryable_failure(tmp_path: Path, hot: HotTier) -> None:
    svc = service(tmp_path, hot, FakeLog(tmp_path / "ob.sqlite", fail=True))
    p, ds = spool(tmp_path, hot)
    out = svc.store(rx(p, ds))
    assert 0xA700 <= out.status <= 0xA7FF  # "Refused: out of resources": the sender retries


@pytest.mark.parametrize("attr", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
def test_missing_uid_is_cannot_understand(tmp_path: Path, hot: HotTier, attr: str) -> None:
    log = FakeLog(tmp_path / "ob.sqlite")
    p, ds = spool(tmp_path, hot, lambda d: delattr(d, attr))
    out = service(tmp_path, hot, log).store(rx(p, ds, sop_instance_uid="1.2.3"))
    assert out.status in (
        statuses.CANNOT_UNDERSTAND_MISSING_UID,
        statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    )
    if attr != "SOPInstanceUID":
        assert out.status == statuses.CANNOT_UNDERSTAND_MISSING_UID and attr in out.comment
    assert [t for t, _, _ in log.records] == ["q"]  # only the quarantine record


def test_invalid_uid(tmp_path: Path, hot: HotTier) -> None:
    p, ds = spool(tmp_path, hot, lambda d: setattr(d, "StudyInstanceUID", "1.2.abc"))
    out = service(tmp_path, hot).store(rx(p, ds))
    assert out.status == statuses.CANNOT_UNDERSTAND_INVALID_UID


def test_sop_class_mismatch(tmp_path: Path, hot: HotTier) -> None:
    p, ds = spool(tmp_path, hot)
    out = service(tmp_path, hot).store(rx(p, ds, sop_class_uid="1.2.840.10008.5.1.4.1.1.4"))
    assert out.status == statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS


def test_garbage_is_undecodable(tmp_path: Path, hot: HotTier) -> None:
    p = hot.incoming / "junk.dcm"
    p.write_bytes(b"this is not a DICOM file at all")
    out = service(tmp_path, hot).store(
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


def test_header_is_complete_when_large_values_are_read_lazily(tmp_path: Path, hot: HotTier) -> None:
    """Large values (> the lazy-read threshold) are read from the spool file: the event's header
    must be built before the file moves into the tier (regression: empty header)."""

    def big(d: pydicom.Dataset) -> None:
        d.ImageComments = "x" * 100_000  # LT, read lazily
        d.add_new(0x00091010, "OB", b"\x01" * 200_000)  # bulk: dropped from the header

    p, ds = spool(tmp_path, hot, big)
    out = service(tmp_path, hot).store(rx(p, ds))
    assert out.ok
    header = out.event.instance_stored.header_json
    assert '"00100010"' in header and '"0020000D"' in header and '"00091010"' not in header


# --------------------------------------------------------------------------- hostile input
def test_a_2mb_header_value_gives_a_bounded_event(tmp_path: Path, hot: HotTier) -> None:
    """Finding #15.1: a legal 2 MB UT went whole into the event (larger than a Kafka message);
    now it is left out of the header, marked as bulk data, and the object keeps it."""
    p = ct_with_text(tmp_path / "in", 2_000_000)
    data = p.read_bytes()
    spooled = hot.incoming / "big.dcm"
    shutil.move(p, spooled)
    ds = pydicom.dcmread(str(spooled), stop_before_pixels=True)
    out = service(tmp_path, hot).store(rx(spooled, ds))
    assert out.ok
    assert len(out.event.SerializeToString()) < 64 * 1024
    assert '"0040A160":{"vr":"UT","BulkDataURI":""}' in out.event.instance_stored.header_json
    assert hot.path(out.event.instance_stored.location.key).read_bytes() == data


def test_a_deflate_bomb_is_refused_and_quarantined(tmp_path: Path, hot: HotTier) -> None:
    """Finding #15.3: a deflated dataset inflated without a bound (memory)."""
    p, sop = deflate_bomb(tmp_path, 64 * 1024**2)
    spooled = hot.incoming / "bomb.dcm"
    shutil.move(p, spooled)
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log, max_inflated_bytes=8 * 1024**2)
    out = svc.store(
        Received(
            path=spooled,
            sop_class_uid=str(CTImageStorage),
            sop_instance_uid=sop,
            transfer_syntax_uid=DEFLATED,
            calling_ae="CT1",
            called_ae="STRATA",
            peer_address="127.0.0.1:5000",
        )
    )
    assert out.status == statuses.OUT_OF_RESOURCES_INFLATED_TOO_LARGE
    assert out.reason == "inflate-limit" and "inflates beyond" in out.comment
    [(topic, _, value)] = log.records
    q = decode(value).instance_quarantined
    assert topic == "q" and q.reason == "inflate-limit" and q.sop_instance_uid == sop
    assert not q.bytes_dropped and (tmp_path / "quarantine" / q.location.key).is_file()


def test_over_the_quarantine_quota_the_record_stays_without_the_bytes(
    tmp_path: Path, hot: HotTier
) -> None:
    """Finding #15.4: the quarantine grew without a quota."""
    log = FakeLog(tmp_path / "ob.sqlite")
    svc = service(tmp_path, hot, log)
    svc.quarantine = Quarantine(tmp_path / "quarantine", max_bytes=3000, rescan_s=0)
    kept = []
    for i in range(3):
        p = hot.incoming / f"garbage{i}.dcm"
        p.write_bytes(bytes([i]) * 1200)
        out = svc.store(
            Received(p, "1.2.3", f"1.2.3.{i}", ExplicitVRLittleEndian, "X", "STRATA", "ip:1")
        )
        assert out.status == statuses.CANNOT_UNDERSTAND_UNDECODABLE
        kept.append(p.exists())
    records = [decode(v).instance_quarantined for _, _, v in log.records]
    assert [r.bytes_dropped for r in records] == [False, False, True]
    dropped = records[2]
    assert dropped.bytes_dropped_reason == OVER_QUOTA and not dropped.HasField("location")
    assert dropped.reason == "undecodable" and dropped.size_bytes == 1200
    assert len(dropped.sha256) == 64 and dropped.sop_instance_uid == "1.2.3.2"
    assert len(list((tmp_path / "quarantine").glob("*.dcm"))) == 2


def test_quarantine_retention_deletes_old_bytes(tmp_path: Path) -> None:
    q = Quarantine(tmp_path / "q", retention_s=3600)
    for i, age in enumerate((10, 7200)):
        src = tmp_path / f"s{i}"
        src.write_bytes(b"x" * 100)
        assert q.keep(src, f"{i}.dcm", 100) == ""
        t = time.time() - age
        os.utime(tmp_path / "q" / f"{i}.dcm", (t, t))
    assert q.sweep(delete=False) == Usage(2, 200)
    assert q.sweep() == Usage(1, 100)
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["0.dcm"]
