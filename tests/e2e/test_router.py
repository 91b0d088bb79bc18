"""The router against real destinations: Orthanc (Debian) and DCMTK storescp.

Every decision, attempt and end state must be in the log; a destination that was down gets
everything once back; a refused object ends in a dead letter with its reason; transcoded
forwards decode to the same pixels; a kill -9 of the router mid-study loses nothing and
re-sends nothing the destination confirmed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    generate_uid,
)

from strata.stack.procs import Proc
from tests.support.dcmtk import storescu
from tests.support.events import of_type, read_all
from tests.support.peers import OrthancPeer, StoreSCP
from tests.support.stack import Stack, free_port, make_stack
from tests.support.wait import wait_for

ROUTER_PORT_ENV = "STRATA_ROUTER_HTTP_PORT"


def study(
    out: Path,
    n: int,
    description: str,
    modality: str = "CT",
    compress: str = "",
    rows: int = 32,
) -> list[Path]:
    """n instances of a fresh study (one series), explicit VR little endian unless compressed."""
    out.mkdir(parents=True, exist_ok=True)
    st, se = generate_uid(), generate_uid()
    cls = CTImageStorage if modality == "CT" else MRImageStorage
    rng = np.random.default_rng(len(description) + n)
    files = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        sop = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = cls, sop
        ds.SOPClassUID, ds.SOPInstanceUID = cls, sop
        ds.StudyInstanceUID, ds.SeriesInstanceUID = st, se
        ds.PatientID, ds.PatientName = "ROUTE-PAT", "Route^Test"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20261128", "101500", "RACC1"
        ds.StudyDescription, ds.Modality = description, modality
        ds.SeriesNumber, ds.InstanceNumber = 1, i + 1
        ds.BodyPartExamined = "CHEST"
        ds.Rows = ds.Columns = rows
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (rows, rows), dtype=np.uint16).tobytes()
        if compress:
            ds.compress(compress)
        f = out / f"{modality}-{i:04d}.dcm"
        ds.save_as(f, enforce_file_format=True)
        files.append(f)
    return files


def send(
    stack: Stack, files: list[Path], extra: list[str] | None = None, called_ae: str = ""
) -> None:
    code, rsp, out = storescu(
        stack.settings.ingest_port, called_ae or stack.settings.ingest_ae_title, files, extra
    )
    assert code == 0 and len(rsp) == len(files) and all("Success" in r for r in rsp), out


def sops(files: list[Path]) -> set[str]:
    return {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}


def routes_of(events: list[Any], study_uid: str, rule: str) -> dict[str, Any]:
    return {
        e.route_decided.route_id: e.route_decided
        for e in events
        if e.WhichOneof("payload") == "route_decided"
        and e.study_instance_uid == study_uid
        and e.route_decided.rule == rule
    }


def delivered_log(stack: Stack, study_uid: str, rule: str, n: int) -> list[Any]:
    """The log once the study has ``n`` routes of ``rule``, every one RouteDelivered."""

    def ready() -> list[Any] | None:
        events = read_all(stack.settings)
        ids = set(routes_of(events, study_uid, rule))
        done = {r.route_id for r in of_type(events, "route_delivered")} & ids
        return events if len(ids) == n and done == ids else None

    return wait_for(ready, 60, f"RouteDelivered for all {n} routes of {rule!r}")  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("router")
    orthanc = OrthancPeer(root)
    # A destination that takes only uncompressed objects: compressed ones are refused.
    strict = OrthancPeer(
        root,
        {"AcceptedTransferSyntaxes": [ExplicitVRLittleEndian, "1.2.840.10008.1.2"]},
        ae="STRICT",
    )
    workstation = StoreSCP(root, "WORKSTATION")  # started later: "down for a while"
    j2k = StoreSCP(root, "J2KNODE")
    slow = StoreSCP(root, "SLOWNODE")
    pool_up = StoreSCP(root, "POOLUP")
    pool_down_port = free_port()  # nothing listens: a pool member that is down
    config = {
        "semantics": "all-matches",
        "defaults": {"backoff_initial": 0.5, "backoff_max": 2.0, "timeout": 10},
        "destinations": {
            "orthanc": {"pool": [f"ORTHANC@127.0.0.1:{orthanc.port}"], "max_associations": 2},
            "workstation": {
                "pool": [f"WORKSTATION@127.0.0.1:{workstation.port}"],
                "max_attempts": 200,
            },
            "j2k": {"pool": [f"J2KNODE@127.0.0.1:{j2k.port}"]},
            "strict": {"pool": [f"STRICT@127.0.0.1:{strict.port}"], "max_attempts": 3},
            "slow": {"pool": [f"SLOWNODE@127.0.0.1:{slow.port}"], "max_per_second": 12},
            "pool": {"pool": [f"POOLDOWN@127.0.0.1:{pool_down_port}",
                              f"POOLUP@127.0.0.1:{pool_up.port}"], "max_associations": 2,
                     "batch": 2},
        },
        "rules": [
            {"name": "ct-route", "when": {"modality": "CT", "study_description": "^ROUTE"},
             "to": ["orthanc", "workstation"]},
            {"name": "mr-study-j2k", "when": {"modality": ["MR"]}, "forward": "study",
             "to": "j2k", "transcode": "jpeg2000-lossless"},
            {"name": "strict", "when": {"study_description": "STRICT"}, "to": "strict"},
            {"name": "slow", "when": {"study_description": "KILLTEST"}, "to": "slow"},
            {"name": "pool", "when": {"study_description": "POOLTEST"}, "to": "pool"},
            {"name": "called-ae", "when": {"called_ae": "ARCHIVE_B"}, "to": "orthanc"},
        ],
    }  # fmt: skip
    cfg = root / "routes.json"
    cfg.write_text(json.dumps(config, indent=2))
    stack = make_stack(root / "home")
    stack.env.update(
        {
            "STRATA_ROUTER_CONFIG": str(cfg),
            ROUTER_PORT_ENV: str(free_port()),
            "STRATA_STUDY_QUIET_SECONDS": "2",
        }
    )
    from strata.common.settings import Settings

    stack.settings = Settings.from_env(stack.env)
    peers = [orthanc, strict, j2k, slow, pool_up]
    for p in peers:
        p.start()
    stack.up()
    try:
        yield {"stack": stack, "orthanc": orthanc, "strict": strict, "ws": workstation,
               "j2k": j2k, "slow": slow, "pool_up": pool_up, "root": root}  # fmt: skip
    finally:
        stack.down()
        for p in (*peers, workstation):
            p.stop()


def test_down_destination_gets_everything_once_back(env: dict[str, Any], tmp_path: Path) -> None:
    stack, orthanc, ws = env["stack"], env["orthanc"], env["ws"]
    files = study(tmp_path / "a", 12, "ROUTE chest")
    want = sops(files)
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    send(stack, files)
    # Orthanc is up: it gets every instance while the workstation is still down.
    wait_for(lambda: want <= orthanc.sop_uids(), 60, "Orthanc to receive the study")

    def retries() -> list[Any]:
        return [
            a
            for a in of_type(read_all(stack.settings), "route_attempted")
            if a.destination == "workstation" and a.outcome == "retry"
        ]

    seen = wait_for(
        lambda: r if len(r := retries()) >= 12 else None, 60, "failed attempts to the workstation"
    )
    assert all(a.dimse_status == 0 and a.detail for a in seen), seen[0]
    assert all(a.next_attempt_at.seconds > 0 for a in seen)
    ws.start()  # the workstation comes back
    wait_for(lambda: want <= set(ws.received()), 90, "the workstation to receive everything")

    def all_delivered() -> list[Any] | None:
        events = read_all(stack.settings)
        decided = routes_of(events, study_uid, "ct-route")
        done = {r.route_id for r in of_type(events, "route_delivered")}
        return (
            [decided[r] for r in decided] if len(decided) == 24 and set(decided) <= done else None
        )

    decided = wait_for(all_delivered, 30, "RouteDelivered for every route")
    for dest in ("orthanc", "workstation"):
        assert {d.instances[0].sop_instance_uid for d in decided if d.destination == dest} == want
    # The study's history (gRPC GetStudyHistory) shows its routing next to its arrivals.
    import grpc

    from strata.proto.strata.v1 import query_pb2 as q
    from strata.proto.strata.v1 import query_pb2_grpc as q_grpc

    with grpc.insecure_channel(f"127.0.0.1:{stack.settings.grpc_port}") as ch:
        stub = q_grpc.QueryServiceStub(ch)

        def history() -> Counter[str] | None:
            # The router reads the log itself; the index (the history's source) follows it.
            try:
                h = stub.GetStudyHistory(q.GetStudyHistoryRequest(study_instance_uid=study_uid))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # not indexed yet
                    return None
                raise
            kinds = Counter(e.event_type for e in h.events)
            return kinds if kinds["RouteDelivered"] == 24 else None

        kinds = wait_for(history, 30, "the routing events in the study history")
    assert kinds["InstanceStored"] == 12 and kinds["RouteDecided"] == 24
    assert kinds["RouteAttempted"] >= 24 + 12  # every delivery + the workstation's retries
    # Pixel data arrived unchanged (no transcoding configured for these routes).
    for f in files:
        sent = dcmread(f)
        got = dcmread(ws.received()[str(sent.SOPInstanceUID)])
        assert got.PixelData == sent.PixelData
    # "No rule matched" is a decision too.
    other = study(tmp_path / "b", 1, "OTHER")
    send(stack, other)
    [sop] = sops(other)

    def no_match() -> list[Any]:
        return [
            d
            for d in of_type(read_all(stack.settings), "route_decided")
            if not d.matched and d.instances[0].sop_instance_uid == sop
        ]

    [d] = wait_for(no_match, 30, "a 'no rule matched' decision")
    assert "no rule matched" in d.reason and not d.destination


def test_transcoded_study_forward_decodes_to_the_same_pixels(
    env: dict[str, Any], tmp_path: Path
) -> None:
    stack, j2k = env["stack"], env["j2k"]
    files = study(tmp_path / "mr", 4, "brain", modality="MR")
    want = sops(files)
    send(stack, files)
    got = wait_for(lambda: want <= set(j2k.received()) and j2k.received(), 60, "the MR study")
    for f in files:
        original = dcmread(f)
        received = dcmread(got[str(original.SOPInstanceUID)])
        assert received.file_meta.TransferSyntaxUID == JPEG2000Lossless
        assert received.PixelData != original.PixelData  # really re-encoded
        assert np.array_equal(received.pixel_array, original.pixel_array)
    # One decision for the whole study, taken when it became stable.
    study_uid = str(dcmread(files[0]).StudyInstanceUID)
    [d] = routes_of(read_all(stack.settings), study_uid, "mr-study-j2k").values()
    assert d.trigger == "study-stable" and len(d.instances) == 4
    assert d.transcode_to == JPEG2000Lossless


def test_refused_object_is_dead_lettered_with_its_reason_and_can_be_redriven(
    env: dict[str, Any], tmp_path: Path
) -> None:
    stack = env["stack"]
    files = study(tmp_path / "s", 1, "STRICT", compress=JPEG2000Lossless)
    # A JPEG 2000 codestream no decoder reads: the strict destination (uncompressed only)
    # cannot be given it in any syntax it accepts.
    from pydicom.encaps import encapsulate

    bad = dcmread(files[0])
    bad.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 60])
    bad.save_as(files[0], enforce_file_format=True)
    send(stack, files, ["-xv"])  # propose the file's own (JPEG 2000 lossless) syntax
    [sop] = sops(files)

    def dead() -> list[Any]:
        return [
            d
            for d in of_type(read_all(stack.settings), "route_dead_lettered")
            if sop in d.sop_instance_uids
        ]

    [d] = wait_for(dead, 60, "the dead letter")
    assert d.reason == "rejected" and d.destination == "strict" and d.delivered == 0
    assert "cannot transcode to" in d.detail and ExplicitVRLittleEndian in d.detail
    # Operators see it and re-drive it (here it fails again for the same reason).
    listed = wait_for(
        lambda: d.route_id in stack.cli("route", "list", "--state", "dead-lettered").stdout,
        30,
        "the dead letter in 'strata route list'",
    )
    assert listed
    out = stack.cli("route", "redrive", d.route_id).stdout
    assert d.route_id in out
    wait_for(lambda: len(dead()) == 2, 60, "the re-driven route to end again")
    shown = stack.cli("route", "show", d.route_id).stdout
    assert "RouteRedriven" in shown and "cannot transcode to" in shown


def test_a_destination_taking_only_uncompressed_gets_compressed_objects_decoded(
    env: dict[str, Any], tmp_path: Path
) -> None:
    """Each object is proposed in its stored syntax and in the uncompressed ones: the strict
    destination accepts only the latter and receives the object decoded (archive.transcode)."""
    stack, strict = env["stack"], env["strict"]
    files = study(tmp_path / "s", 2, "STRICT", compress=JPEG2000Lossless)
    send(stack, files, ["-xv"])
    wanted = sops(files)
    wait_for(lambda: wanted <= strict.sop_uids(), 60, "the decoded objects at the destination")
    for f in files:
        original = dcmread(f)
        got = dcmread(BytesIO(strict.file_of(str(original.SOPInstanceUID))))
        assert got.file_meta.TransferSyntaxUID in (ExplicitVRLittleEndian, "1.2.840.10008.1.2")
        assert np.array_equal(got.pixel_array, original.pixel_array)


def test_kill9_of_the_router_mid_study_still_delivers_every_instance(
    env: dict[str, Any], tmp_path: Path
) -> None:
    stack, slow = env["stack"], env["slow"]
    files = study(tmp_path / "k", 40, "KILLTEST")
    want = sops(files)
    send(stack, files)
    wait_for(lambda: len(slow.received()) >= 8, 60, "the first instances at the slow node")
    router = Proc("router", stack.settings.run_dir, stack.settings.log_dir)
    pid = router.pid()
    assert pid
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)
    assert len(slow.received()) < 40, "the study finished before the kill: test is void"
    env_vars = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    router.start(
        [sys.executable, "-m", "strata.cli.main", "serve", "router"],
        env={**env_vars, **stack.settings.to_env()},
    )
    wait_for(lambda: want <= set(slow.received()), 120, "every instance after the restart")
    study_uid = str(dcmread(files[0]).StudyInstanceUID)

    events = delivered_log(stack, study_uid, "slow", 40)
    delivered = Counter(
        (a.route_id, a.sop_instance_uid)
        for a in of_type(events, "route_attempted")
        if a.outcome == "delivered" and a.destination == "slow"
    )
    # A confirmed instance is never sent again: one recorded delivery per instance.
    assert len(delivered) == 40 and set(delivered.values()) == {1}
    # Throttled to 12 instances/s (max_per_second), across the restart too.
    times = sorted(
        e.occurred_at.seconds + e.occurred_at.nanos / 1e9
        for e in events
        if e.WhichOneof("payload") == "route_attempted"
        and e.route_attempted.destination == "slow"
        and e.route_attempted.outcome == "delivered"
    )
    assert times[-1] - times[0] >= 0.9 * 39 / 12


def test_a_pool_sends_to_its_live_member_when_another_is_down(
    env: dict[str, Any], tmp_path: Path
) -> None:
    stack, up = env["stack"], env["pool_up"]
    files = study(tmp_path / "p", 10, "POOLTEST")
    want = sops(files)
    send(stack, files)
    wait_for(lambda: want <= set(up.received()), 60, "the live pool member to get everything")
    study_uid = str(dcmread(files[0]).StudyInstanceUID)

    events = delivered_log(stack, study_uid, "pool", 10)
    used = Counter(
        (a.ae_title, a.outcome)
        for a in of_type(events, "route_attempted")
        if a.destination == "pool"
    )
    assert used[("POOLUP", "delivered")] == 10 and used[("POOLDOWN", "delivered")] == 0


def test_rules_match_the_called_ae_the_modality_addressed(
    env: dict[str, Any], tmp_path: Path
) -> None:
    stack, orthanc = env["stack"], env["orthanc"]
    files = study(tmp_path / "c", 2, "CALLED")
    want = sops(files)
    send(stack, files, called_ae="ARCHIVE_B")  # one ingest node, addressed by another AE title
    wait_for(lambda: want <= orthanc.sop_uids(), 60, "Orthanc to receive the instances")
    events = read_all(stack.settings)
    stored = [e.instance_stored for e in events if e.WhichOneof("payload") == "instance_stored"]
    assert {e.called_ae_title for e in stored if e.sop_instance_uid in want} == {"ARCHIVE_B"}
    decided = [
        d for d in of_type(events, "route_decided") if d.instances[0].sop_instance_uid in want
    ]
    assert {d.rule for d in decided} == {"called-ae"}


def test_routing_state_in_the_index_rebuilds_identically_from_the_log(env: dict[str, Any]) -> None:
    stack = env["stack"]
    listed = stack.cli("route", "list", "--json", "--limit", "1000").stdout
    states = Counter(r["state"] for r in json.loads(listed))
    assert states["delivered"] >= 40 and states["dead-lettered"] >= 1 and states["no-match"] >= 1
    r = stack.cli("verify", "-q")
    assert r.returncode == 0, r.stdout + r.stderr
