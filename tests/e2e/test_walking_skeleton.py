"""The walking skeleton on real peers: DCMTK storescu -> archive -> Kafka -> index -> findscu.

Every parseable pydicom test file is sent, in its own transfer syntax, by DCMTK's storescu.
Files with the UIDs an archive needs must be stored and found by findscu at STUDY, SERIES and
IMAGE level with correct values within 2 s; files lacking them must get a failure status and
leave the node running. The topic must hold exactly one InstanceStored per stored object,
checked with a plain Kafka consumer. `down` then `up` must keep everything.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from confluent_kafka import Consumer, TopicPartition
from pydicom.errors import InvalidDicomError
from pynetdicom import AllStoragePresentationContexts

from strata.common.dicom import is_valid_uid
from strata.proto.strata.v1 import events_pb2
from tests.support.dcmtk import findscu, storescu, storescu_config
from tests.support.stack import Stack, make_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded default as `make up` runs it, Ceph included (the cold tier's S3)."""
    s = make_stack(tmp_path_factory.mktemp("skeleton-home"), local_s3="ceph")
    s.up()
    try:
        yield s
    finally:
        s.down()


pytestmark = pytest.mark.e2e

STORAGE_CLASSES = {cx.abstract_syntax for cx in AllStoragePresentationContexts}
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


@dataclass
class Sample:
    path: Path
    ds: pydicom.Dataset
    sop_class: str
    ts: str

    @property
    def archivable(self) -> bool:
        """The dataset has every UID an archive needs (what goes on the wire is the dataset;
        a stale file meta header is a file artifact, not a reason to refuse an image)."""
        return all(is_valid_uid(str(self.ds.get(k, "") or "")) for k in UIDS)


def parseable_samples() -> list[Sample]:
    out = []
    for f in sorted(p for p in TEST_FILES.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        except (InvalidDicomError, Exception):
            continue
        meta = getattr(ds, "file_meta", None)
        sop_class = str(getattr(meta, "MediaStorageSOPClassUID", "") or "")
        ts = str(getattr(meta, "TransferSyntaxUID", "") or "")
        if sop_class not in STORAGE_CLASSES or not ts:
            # storescu cannot even propose it (DICOMDIR, no meta): nothing reaches the archive.
            continue
        out.append(Sample(f, ds, sop_class, ts))
    return out


@pytest.fixture(scope="module")
def sent(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    samples = parseable_samples()
    assert len(samples) > 120, "the pydicom test corpus should give well over 120 files"
    cfg = tmp_path_factory.mktemp("dcmtk") / "storescu.cfg"
    profiles = storescu_config([(s.sop_class, s.ts) for s in samples], cfg)
    results: dict[Path, tuple[int, list[str], str]] = {}
    for s in samples:
        results[s.path] = storescu(
            stack.settings.ingest_port,
            stack.settings.ingest_ae_title,
            [s.path],
            ["-xf", str(cfg), profiles[(s.sop_class, s.ts)]],
        )
    return {"samples": samples, "results": results, "done_at": time.monotonic()}


def test_each_archivable_file_succeeds_and_others_fail(sent: dict, stack: Stack) -> None:
    samples: list[Sample] = sent["samples"]
    results = sent["results"]
    wrong = []
    unsendable = []
    for s in samples:
        code, responses, out = results[s.path]
        if not responses:
            # DCMTK itself refused the file before sending (it cannot parse it): the archive
            # never saw it. It must be DCMTK's own error, not a rejected association.
            assert "Association Accepted" in out and "E: " in out, out
            assert "Sending Store Request" not in out, out
            unsendable.append(s.path.name)
            continue
        if s.archivable:
            if responses != ["Success"] or code != 0:
                wrong.append(f"{s.path.name}: expected Success, got {responses} ({code})")
        else:
            if "Success" in responses or not responses:
                wrong.append(f"{s.path.name}: expected a failure status, got {responses}\n{out}")
    assert not wrong, "\n".join(wrong)
    assert len(unsendable) <= 10, f"DCMTK could not send: {unsendable}"
    n_bad = sum(1 for s in samples if not s.archivable)
    assert n_bad >= 5, "the corpus should include files lacking UIDs (bad-input cases)"
    # the node is still up and answering after the bad input
    code, responses, _ = storescu(
        stack.settings.ingest_port,
        stack.settings.ingest_ae_title,
        [TEST_FILES / "CT_small.dcm"],
    )
    assert responses == ["Success"], responses


def _expected(samples: list[Sample], results: dict) -> dict[str, Sample]:
    """SOP Instance UID -> the last stored version (files sent in order; latest wins)."""
    latest: dict[str, Sample] = {}
    for s in samples:
        if results[s.path][1] == ["Success"]:
            latest[str(s.ds.SOPInstanceUID)] = s
    return latest


def _s(v: object) -> str:
    return "" if v is None else str(v).strip()


def test_every_instance_found_by_findscu_within_2s(sent: dict, stack: Stack) -> None:
    latest = _expected(sent["samples"], sent["results"])
    port, ae = stack.settings.qr_port, stack.settings.qr_ae_title
    deadline = sent["done_at"] + 2.0
    while True:
        found = {_s(d.SOPInstanceUID) for d in findscu(port, ae, "IMAGE", {"SOPInstanceUID": ""})}
        if set(latest) <= found or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    missing = set(latest) - found
    assert not missing, f"{len(missing)} stored instances not visible within 2 s"


def test_study_level_values(sent: dict, stack: Stack) -> None:
    latest = _expected(sent["samples"], sent["results"])
    by_study: dict[str, list[Sample]] = {}
    for s in latest.values():
        by_study.setdefault(str(s.ds.StudyInstanceUID), []).append(s)
    port, ae = stack.settings.qr_port, stack.settings.qr_ae_title
    keys = {
        k: ""
        for k in (
            "StudyInstanceUID",
            "PatientID",
            "PatientName",
            "StudyDate",
            "AccessionNumber",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        )
    }
    rsp = {_s(d.StudyInstanceUID): d for d in findscu(port, ae, "STUDY", keys)}
    assert set(by_study) <= set(rsp)
    order = {s.path: i for i, s in enumerate(sent["samples"])}
    for study_uid, members in by_study.items():
        d = rsp[study_uid]
        last = max(members, key=lambda s: order[s.path])  # the study row of the latest event
        assert _s(d.PatientID) == _s(last.ds.get("PatientID")), study_uid
        assert _s(d.PatientName) == _s(last.ds.get("PatientName")), study_uid
        assert _s(d.StudyDate) == _s(last.ds.get("StudyDate")), study_uid
        assert _s(d.AccessionNumber) == _s(last.ds.get("AccessionNumber")), study_uid
        assert int(d.NumberOfStudyRelatedInstances) == len(members)
        series = {str(s.ds.SeriesInstanceUID) for s in members}
        assert int(d.NumberOfStudyRelatedSeries) == len(series)
        mods = d.get("ModalitiesInStudy") or []
        mods = {mods} if isinstance(mods, str) else set(mods)
        assert mods == {_s(s.ds.get("Modality")) for s in members} - {""}, study_uid

    # a matching key restricts: one patient id, with a wildcard, case-insensitive name
    ct = pydicom.dcmread(str(TEST_FILES / "CT_small.dcm"), stop_before_pixels=True)
    name = str(ct.PatientName)
    hits = findscu(
        port, ae, "STUDY", {"PatientName": name[:4].lower() + "*", "StudyInstanceUID": ""}
    )
    assert str(ct.StudyInstanceUID) in {_s(h.StudyInstanceUID) for h in hits}
    assert all(_s(h.PatientName).lower().startswith(name[:4].lower()) for h in hits)
    hits = findscu(
        port,
        ae,
        "STUDY",
        {
            "PatientID": str(ct.PatientID),
            "StudyDate": f"{ct.StudyDate}-{ct.StudyDate}",
            "StudyInstanceUID": "",
        },
    )
    assert {_s(h.StudyInstanceUID) for h in hits} == {
        str(s.ds.StudyInstanceUID)
        for s in latest.values()
        if _s(s.ds.get("PatientID")) == str(ct.PatientID)
        and _s(s.ds.get("StudyDate")) == str(ct.StudyDate)
    }


def test_series_and_image_level_values(sent: dict, stack: Stack) -> None:
    latest = _expected(sent["samples"], sent["results"])
    port, ae = stack.settings.qr_port, stack.settings.qr_ae_title
    by_series: dict[str, list[Sample]] = {}
    for s in latest.values():
        by_series.setdefault(str(s.ds.SeriesInstanceUID), []).append(s)
    # Pick a handful of studies and walk them down the hierarchy as a workstation does.
    studies = sorted({str(s.ds.StudyInstanceUID) for s in latest.values()})[:12]
    for study in studies:
        series_rsp = findscu(
            port,
            ae,
            "SERIES",
            {
                "StudyInstanceUID": study,
                "SeriesInstanceUID": "",
                "Modality": "",
                "SeriesNumber": "",
                "NumberOfSeriesRelatedInstances": "",
            },
        )
        want = {u for u, m in by_series.items() if str(m[0].ds.StudyInstanceUID) == study}
        assert {_s(d.SeriesInstanceUID) for d in series_rsp} == want, study
        for d in series_rsp:
            members = by_series[_s(d.SeriesInstanceUID)]
            assert int(d.NumberOfSeriesRelatedInstances) == len(members)
            assert _s(d.Modality) in {_s(m.ds.get("Modality")) for m in members}
            image_rsp = findscu(
                port,
                ae,
                "IMAGE",
                {
                    "StudyInstanceUID": study,
                    "SeriesInstanceUID": _s(d.SeriesInstanceUID),
                    "SOPInstanceUID": "",
                    "SOPClassUID": "",
                    "InstanceNumber": "",
                },
            )
            got = {_s(i.SOPInstanceUID): i for i in image_rsp}
            assert set(got) == {str(m.ds.SOPInstanceUID) for m in members}
            for m in members:
                i = got[str(m.ds.SOPInstanceUID)]
                assert _s(i.SOPClassUID) == str(m.ds.SOPClassUID)
                assert _s(i.get("InstanceNumber")) == _s(m.ds.get("InstanceNumber"))


def _read_topic(stack: Stack) -> list[events_pb2.Envelope]:
    """All records of the study-events topic, with a plain consumer (not the project's)."""
    c = Consumer(
        {
            "bootstrap.servers": stack.settings.kafka_bootstrap,
            "group.id": f"test-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        md = c.list_topics(stack.settings.study_topic, timeout=10)
        parts = list(md.topics[stack.settings.study_topic].partitions)
        ends = {
            p: c.get_watermark_offsets(TopicPartition(stack.settings.study_topic, p))[1]
            for p in parts
        }
        c.assign([TopicPartition(stack.settings.study_topic, p, 0) for p in parts])
        out: list[events_pb2.Envelope] = []
        done = {p for p, end in ends.items() if end == 0}
        deadline = time.monotonic() + 30
        while len(done) < len(parts) and time.monotonic() < deadline:
            msg = c.poll(0.5)
            if msg is None or msg.error():
                continue
            env = events_pb2.Envelope()
            env.ParseFromString(msg.value())
            assert msg.key().decode() == env.study_instance_uid
            out.append(env)
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
        assert len(done) == len(parts), "could not read the topic to its end"
        return out
    finally:
        c.close()


def test_topic_holds_one_event_per_stored_object(sent: dict, stack: Stack) -> None:
    events = _read_topic(stack)
    stored = [e.instance_stored for e in events if e.WhichOneof("payload") == "instance_stored"]
    acked = [s for s in sent["samples"] if sent["results"][s.path][1] == ["Success"]]
    # One event per distinct stored object: a file whose bytes were already stored (CT_small
    # sent again after the bad input, corpus files with identical content) is an idempotent
    # duplicate, not a second event; every object in the hot tier has exactly one event.
    arrivals = [(e.sop_instance_uid, e.sha256) for e in stored]
    assert len(arrivals) == len(set(arrivals))
    objects = sorted(
        str(p.relative_to(stack.settings.hot_dir))
        for p in stack.settings.hot_dir.rglob("*.dcm")
        if ".incoming" not in p.parts
    )
    assert sorted(e.location.key for e in stored) == objects
    assert len(acked) - 5 <= len(stored) <= len(acked)
    for env in events:
        assert env.event_type in ("InstanceStored", "StudyStable") and env.schema_version == 1
        assert env.event_id and env.producer.service in ("ingest", "processors")
    by_sop = {}
    for e in stored:
        by_sop.setdefault(e.sop_instance_uid, set()).add(e.sha256)
        assert e.location.tier == "hot"
        obj = stack.settings.hot_dir / e.location.key
        assert obj.stat().st_size == e.size_bytes
        assert e.header_json.startswith("{") and '"7FE00010"' not in e.header_json
    assert set(by_sop) == {str(s.ds.SOPInstanceUID) for s in acked}
    # Same SOP Instance UID with other bytes (MR_small in several syntaxes): new versions,
    # each naming the version it supersedes; all objects kept.
    seen: dict[str, list[str]] = {}
    for e in stored:
        if e.sop_instance_uid in seen:
            assert e.supersedes_sha256 in seen[e.sop_instance_uid]
        else:
            assert e.supersedes_sha256 == ""
        seen.setdefault(e.sop_instance_uid, []).append(e.sha256)
    assert max(len(v) for v in seen.values()) >= 5


def test_down_then_up_keeps_log_index_and_objects(sent: dict, stack: Stack) -> None:
    port, ae = stack.settings.qr_port, stack.settings.qr_ae_title
    keys = {"StudyInstanceUID": "", "PatientID": "", "NumberOfStudyRelatedInstances": ""}
    before = sorted(
        (_s(d.StudyInstanceUID), _s(d.NumberOfStudyRelatedInstances))
        for d in findscu(port, ae, "STUDY", keys)
    )

    # InstanceStored only: StudyStable events may legitimately appear while the stack is down
    # and up again (a quiet period may elapse).
    def stored_count() -> int:
        return sum(1 for e in _read_topic(stack) if e.WhichOneof("payload") == "instance_stored")

    events_before = stored_count()
    objects_before = sorted(p for p in stack.settings.hot_dir.rglob("*.dcm"))
    stack.cli("down")
    r = stack.cli("status", check=False)
    assert r.returncode != 0 and "running" not in r.stdout.replace("stopped", "")
    stack.up()
    after = sorted(
        (_s(d.StudyInstanceUID), _s(d.NumberOfStudyRelatedInstances))
        for d in findscu(port, ae, "STUDY", keys)
    )
    assert after == before and len(before) > 20
    assert stored_count() == events_before
    assert sorted(p for p in stack.settings.hot_dir.rglob("*.dcm")) == objects_before


def test_the_embedded_default_runs_ceph_for_the_cold_tier(stack: Stack) -> None:
    status = stack.cli("status").stdout
    for svc in ("ceph-mon", "ceph-osd", "ceph-rgw"):
        [line] = [ln for ln in status.splitlines() if ln.startswith(svc)]
        assert "running" in line, status
