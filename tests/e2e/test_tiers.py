"""Storage tiers and lifecycle on the real stack with a real Ceph RGW over HTTPS.

A policy moves studies to the cold tier (they are still retrieved byte-identical by DCMTK
getscu and gRPC); radosgw killed mid-transition; a corrupt cold object found by
``strata storage verify`` (and repaired from the recall cache); retention deletes an unheld
study but not a held one; the index rebuilt from the log equals the live one throughout.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pydicom
import pytest
from pynetdicom.dsutils import split_dataset

from strata.proto.strata.v1 import events_pb2
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from tests.support.ceph import CephRGW
from tests.support.dcmtk import dcmtk_env, findscu
from tests.support.events import read_all
from tests.support.stack import Stack, make_stack, require_tool
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

DAY = 2.0  # seconds per policy "day"
POLICY = f"""
day_seconds = {DAY}
interval_seconds = 0.5
batch = 25
workers = 2

[[rules]]
name = "cold-after-a-day"
action = "cold"
after_days = 1
calling_aes = ["COLDME", "BULK"]

[[rules]]
name = "short-retention"
action = "delete"
after_days = 4
calling_aes = ["SHORTLIVED"]
"""


@pytest.fixture(scope="module")
def tiers(tmp_path_factory: pytest.TempPathFactory, ceph_rgw: CephRGW) -> Iterator[dict]:
    home = tmp_path_factory.mktemp("tiers-home")
    (home / "lifecycle.toml").write_text(POLICY)
    s = make_stack(home)
    bucket = ceph_rgw.make_bucket("tiers")
    s.env.update(ceph_rgw.env)
    s.env["STRATA_S3_BUCKET"] = bucket
    s.up()
    channel = grpc.insecure_channel(f"127.0.0.1:{s.settings.grpc_port}")
    try:
        yield {
            "stack": s,
            "s3": ceph_rgw.client(),
            "bucket": bucket,
            "rgw": ceph_rgw,
            "stub": q_grpc.QueryServiceStub(channel),
        }
    finally:
        channel.close()
        s.down()


# ------------------------------------------------------------------------------------ helpers


def locations(s: Stack, study: str) -> dict[str, dict[str, Any]]:
    """sop -> {tier, key, sha256, size} as the index says (the index node's endpoint)."""
    out = {}
    after = ""
    while True:
        url = (
            f"http://127.0.0.1:{s.settings.index_http_port}/storage/locations"
            f"?limit=5000&after={after}"
        )
        with urllib.request.urlopen(url, timeout=30) as r:
            page = json.loads(r.read())
        if not page:
            return out
        for st, se, sop, sha, size, tier, key in page:
            if st == study:
                out[sop] = {"tier": tier, "key": key, "sha256": sha, "size": size, "series": se}
        after = "/".join(page[-1][:3])


def send(s: Stack, files: list[Path], calling_ae: str) -> str:
    s.cli("send", "-q", "--calling-ae", calling_ae, *map(str, files))
    return str(pydicom.dcmread(str(files[0])).StudyInstanceUID)


def bucket_keys(t: dict, prefix: str) -> list[str]:
    keys = []
    for page in (
        t["s3"].get_paginator("list_objects_v2").paginate(Bucket=t["bucket"], Prefix=prefix)
    ):
        keys += [o["Key"] for o in page.get("Contents", []) or []]
    return keys


def dataset_bytes(data: bytes, tmp: Path) -> bytes:
    tmp.write_bytes(data)
    _meta, offset = split_dataset(tmp)
    return data[offset:]


def grpc_retrieve(t: dict, study: str) -> dict[str, tuple[bytes, str]]:
    got: dict[str, bytearray] = {}
    sha: dict[str, str] = {}
    for ch in t["stub"].RetrieveInstances(q.RetrieveRequest(study_instance_uid=study), timeout=60):
        got.setdefault(ch.sop_instance_uid, bytearray()).extend(ch.data)
        if ch.sha256:
            sha[ch.sop_instance_uid] = ch.sha256
    return {sop: (bytes(b), sha[sop]) for sop, b in got.items()}


def getscu(s: Stack, study: str, out: Path) -> list[Path]:
    require_tool("getscu")
    out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(
        [
            "getscu",
            "-S",
            "+B",
            "-aet",
            "GETTER",
            "-aec",
            s.settings.qr_ae_title,
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study}",
            "127.0.0.1",
            str(s.settings.qr_port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return sorted(out.iterdir())


def lifecycle_events(s: Stack, study: str) -> list[events_pb2.Envelope]:
    return [
        e
        for e in read_all(s.settings)
        if e.study_instance_uid == study
        and e.WhichOneof("payload") in ("tier_transitioned", "instance_deleted")
    ]


def count_images(s: Stack, study: str) -> int:
    return len(
        findscu(
            s.settings.qr_port,
            s.settings.qr_ae_title,
            "IMAGE",
            {"StudyInstanceUID": study, "SOPInstanceUID": ""},
        )
    )


# -------------------------------------------------------------------------------------- tests


PROMOTE_POLICY = """
day_seconds = 1
interval_seconds = 0.3
access_window_seconds = 0

[recall]
promote = true

[[rules]]
name = "cold-when-idle"
action = "cold"
after_days = 4
since = "last-access"
"""


def test_recalled_study_is_promoted_to_hot_and_goes_back_when_idle(
    tmp_path_factory: pytest.TempPathFactory, ceph_rgw: CephRGW, tmp_path: Path
) -> None:
    """Runs first, on its own stack (promotion would fight the other tests' rules)."""
    home = tmp_path_factory.mktemp("promote-home")
    (home / "lifecycle.toml").write_text(PROMOTE_POLICY)
    s = make_stack(home)
    s.env.update(ceph_rgw.env)
    s.env["STRATA_S3_BUCKET"] = ceph_rgw.make_bucket("promote")
    s.up()
    channel = grpc.insecure_channel(f"127.0.0.1:{s.settings.grpc_port}")
    t = {"stack": s, "stub": q_grpc.QueryServiceStub(channel)}
    try:
        study = send(s, ct_series(tmp_path / "p", 3, patient_id="TIER-PROMOTE"), "ANY")

        def tiers_now() -> set[str]:
            return {v["tier"] for v in locations(s, study).values()}

        assert wait_for(lambda: tiers_now() == {"cold"}, 40)  # idle 4 "days" since arrival
        objs = grpc_retrieve(t, study)  # recall: StudyAccessed + promotion requests
        assert len(objs) == 3
        assert all(hashlib.sha256(d).hexdigest() == sha for d, sha in objs.values())
        assert wait_for(lambda: tiers_now() == {"hot"}, 4, step=0.1)  # promoted on access
        assert wait_for(lambda: tiers_now() == {"cold"}, 30)  # idle again: back to cold
        moves: dict[str, list[tuple[str, str, str]]] = {}
        for e in lifecycle_events(s, study):
            tt = e.tier_transitioned
            moves.setdefault(tt.sop_instance_uid, []).append(
                (tt.source.tier, tt.target.tier, tt.policy)
            )
        assert all(
            m
            == [
                ("hot", "cold", "cold-when-idle"),
                ("cold", "hot", "recall"),
                ("hot", "cold", "cold-when-idle"),
            ]
            for m in moves.values()
        ), moves
        r = s.cli("verify", "-q")
        assert "verify: the live index equals the index rebuilt from the log" in r.stdout
    finally:
        channel.close()
        s.down()


def test_policy_moves_a_study_to_cold_and_it_is_retrieved_byte_identical(
    tiers: dict, tmp_path: Path
) -> None:
    s: Stack = tiers["stack"]
    files = ct_series(tmp_path / "in", 12, patient_id="TIER-COLD")
    study = send(s, files, "COLDME")
    # while still hot (the rule waits one "day"): the stored bytes, to compare with later
    hot = wait_for(lambda: len(locations(s, study)) == 12 and locations(s, study), 10)
    stored = {}
    for sop, loc in hot.items():
        assert loc["tier"] == "hot"
        stored[sop] = (s.settings.hot_dir / loc["key"]).read_bytes()
    cold = wait_for(
        lambda: (
            all(v["tier"] == "cold" for v in locations(s, study).values()) and locations(s, study)
        ),
        60,
    )
    assert len(cold) == 12
    # the source is deleted once the index shows the move; the copy is in the bucket
    assert wait_for(
        lambda: not any((s.settings.hot_dir / v["key"]).exists() for v in cold.values()), 20
    )
    assert sorted(bucket_keys(tiers, f"studies/{study}/")) == sorted(
        v["key"] for v in cold.values()
    )
    # DCMTK getscu (C-GET): every instance, dataset byte-identical to what was stored
    got = getscu(s, study, tmp_path / "get")
    assert len(got) == 12
    by_sop = {str(pydicom.dcmread(str(p)).SOPInstanceUID): p for p in got}
    for sop, data in stored.items():
        assert dataset_bytes(by_sop[sop].read_bytes(), tmp_path / "a") == dataset_bytes(
            data, tmp_path / "b"
        )
    # gRPC RetrieveInstances: the stored file, byte for byte
    objs = grpc_retrieve(tiers, study)
    assert set(objs) == set(stored)
    for sop, (data, sha) in objs.items():
        assert data == stored[sop]
        assert hashlib.sha256(data).hexdigest() == sha == cold[sop]["sha256"]
    # DICOMweb WADO-RS: each instance's part is the stored file, byte for byte
    base = f"http://127.0.0.1:{s.settings.dicomweb_port}{s.settings.dicomweb_prefix}"
    for sop, data in stored.items():
        req = urllib.request.Request(
            f"{base}/studies/{study}/series/{cold[sop]['series']}/instances/{sop}",
            headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        assert data in body and len(body) < len(data) + 1000
    # one TierTransitioned per instance in the log
    evs = [e for e in lifecycle_events(s, study) if e.WhichOneof("payload") == "tier_transitioned"]
    assert sorted(e.tier_transitioned.sop_instance_uid for e in evs) == sorted(stored)
    # recall latency is measured
    with urllib.request.urlopen(
        f"http://127.0.0.1:{s.settings.index_http_port}/metrics", timeout=10
    ) as r:
        metrics = r.read().decode()
    assert 'strata_recall_seconds_count{result="fetched",tier="cold"}' in metrics


def test_radosgw_killed_mid_transition_then_restarted(tiers: dict, tmp_path: Path) -> None:
    s: Stack = tiers["stack"]
    rgw: CephRGW = tiers["rgw"]
    n = 150
    files = ct_series(tmp_path / "bulk", n, patient_id="TIER-BULK")
    study = send(s, files, "BULK")
    prefix = f"studies/{study}/"
    # wait until the move is under way (some objects copied, most not), then crash radosgw
    assert wait_for(lambda: len(bucket_keys(tiers, prefix)) > 0, 60, step=0.1)
    copied_before = len(bucket_keys(tiers, prefix))
    assert copied_before < n, "the transition finished before radosgw could be killed"
    with rgw.rgw_down(kill=True):
        time.sleep(4)  # several lifecycle passes fail against a dead gateway
        mid = locations(s, study)
        assert len(mid) == n  # nothing lost from the index meanwhile
        assert any(v["tier"] == "hot" for v in mid.values())
    assert_moved_exactly_once(tiers, study, n)


def test_index_node_killed_mid_transition_then_restarted(tiers: dict, tmp_path: Path) -> None:
    s: Stack = tiers["stack"]
    n = 120
    files = ct_series(tmp_path / "k", n, patient_id="TIER-KILL")
    study = send(s, files, "BULK")
    prefix = f"studies/{study}/"
    assert wait_for(lambda: len(bucket_keys(tiers, prefix)) > 0, 60, step=0.1)
    assert len(bucket_keys(tiers, prefix)) < n, "the transition finished before the kill"
    pid = int((s.settings.run_dir / "index.pid").read_text())
    os.kill(pid, signal.SIGKILL)  # copies, journal entries and events cut anywhere
    time.sleep(1)
    s.up()
    assert_moved_exactly_once(tiers, study, n)


def assert_moved_exactly_once(tiers: dict, study: str, n: int) -> None:
    s: Stack = tiers["stack"]
    prefix = f"studies/{study}/"
    final = wait_for(
        lambda: (
            (loc := locations(s, study)) and all(v["tier"] == "cold" for v in loc.values()) and loc
        ),
        120,
    )
    assert len(final) == n
    # every object in the bucket verifies against the sha256 recorded at ingest
    keys = bucket_keys(tiers, prefix)
    assert sorted(keys) == sorted(v["key"] for v in final.values())
    for v in final.values():
        body = tiers["s3"].get_object(Bucket=tiers["bucket"], Key=v["key"])["Body"].read()
        assert hashlib.sha256(body).hexdigest() == v["sha256"]

    def hot_left() -> list[str]:
        return [v["key"] for v in final.values() if (s.settings.hot_dir / v["key"]).exists()]

    assert wait_for(lambda: not hot_left(), 20), _lifecycle_diagnostics(s, hot_left())
    # no double effect: per instance, one transition id in the log (a retried event would
    # carry the same id), and the archive still serves all n objects
    evs = lifecycle_events(s, study)
    ids: dict[str, set[str]] = {}
    for e in evs:
        ids.setdefault(e.tier_transitioned.sop_instance_uid, set()).add(e.event_id)
    assert len(ids) == n and all(len(v) == 1 for v in ids.values())
    objs = grpc_retrieve(tiers, study)
    assert len(objs) == n
    assert all(hashlib.sha256(d).hexdigest() == sha for d, sha in objs.values())


def _lifecycle_diagnostics(s: Stack, hot_left: list[str]) -> str:
    """What a failed 'sources deleted' check needs to be understood from the CI log."""
    journal = sorted(p.name for p in (s.settings.home / "lifecycle" / "pending").glob("*"))
    logs = s.settings.home / "logs" / "index.log"
    lines = [
        ln
        for ln in (logs.read_text(errors="replace").splitlines() if logs.exists() else [])
        if "lifecycle" in ln
    ]
    return (
        f"{len(hot_left)} hot sources left (first {hot_left[:3]}); journal {journal[:10]}; "
        "index.log lifecycle lines:\n" + "\n".join(lines[-40:])
    )


def test_corrupt_cold_object_is_found_by_storage_verify_and_repaired(
    tiers: dict, tmp_path: Path
) -> None:
    s: Stack = tiers["stack"]
    files = ct_series(tmp_path / "c", 3, patient_id="TIER-CORRUPT")
    study = send(s, files, "COLDME")
    cold = wait_for(
        lambda: (
            (loc := locations(s, study))
            and len(loc) == 3
            and all(v["tier"] == "cold" for v in loc.values())
            and loc
        ),
        60,
    )
    sop, victim = sorted(cold.items())[0]
    grpc_retrieve(tiers, study)  # recalled once: a good copy now sits in the recall cache
    good = tiers["s3"].get_object(Bucket=tiers["bucket"], Key=victim["key"])["Body"].read()
    bad = bytearray(good)
    bad[-100] ^= 0xFF  # one flipped byte in the pixel data, same size
    tiers["s3"].put_object(Bucket=tiers["bucket"], Key=victim["key"], Body=bytes(bad))
    r = s.cli("storage", "verify", "--full", "-q", check=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert sop in r.stdout and "checksum-mismatch" in r.stdout
    r = s.cli("storage", "verify", "--sample", "1000", "-q", check=False)
    assert r.returncode == 1 and sop in r.stdout
    r = s.cli("storage", "verify", "--repair", "-q", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 repaired" in r.stdout and "recall-cache" in r.stdout
    body = tiers["s3"].get_object(Bucket=tiers["bucket"], Key=victim["key"])["Body"].read()
    assert body == good
    r = s.cli("storage", "verify", "-q", check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 ok" not in r.stdout


def test_retention_deletes_an_unheld_study_but_not_a_held_one(tiers: dict, tmp_path: Path) -> None:
    s: Stack = tiers["stack"]
    held = send(s, ct_series(tmp_path / "h", 3, patient_id="TIER-HELD"), "SHORTLIVED")
    free = send(s, ct_series(tmp_path / "f", 3, patient_id="TIER-FREE"), "SHORTLIVED")
    s.cli("hold", "place", held, "--reason", "litigation 2026-17", "--by", "records-office")
    # the hold is an event; `hold list` reads the index, which applies it asynchronously
    assert wait_for(lambda: held in s.cli("hold", "list").stdout, 30, step=0.2)
    r = s.cli("hold", "list")
    assert held in r.stdout and "litigation 2026-17" in r.stdout
    free_keys = [v["key"] for v in locations(s, free).values()]
    assert len(free_keys) == 3
    # retention is 4 "days" = 8 s after arrival
    assert wait_for(lambda: count_images(s, free) == 0, 40, step=1.0)
    assert not locations(s, free)
    assert wait_for(lambda: not any((s.settings.hot_dir / k).exists() for k in free_keys), 20)
    # the held study outlives its retention period, bytes and all
    time.sleep(2 * 0.5 + 1)
    assert count_images(s, held) == 3
    held_locs = locations(s, held)
    assert all((s.settings.hot_dir / v["key"]).is_file() for v in held_locs.values())
    study_level = findscu(
        s.settings.qr_port, s.settings.qr_ae_title, "STUDY", {"StudyInstanceUID": free}
    )
    assert study_level == []  # the emptied study is gone at study level too
    evs = lifecycle_events(s, free)
    assert len(evs) == 3 and all(e.WhichOneof("payload") == "instance_deleted" for e in evs)
    assert lifecycle_events(s, held) == []
    # released: the hold no longer protects it
    s.cli("hold", "release", held, "--reason", "case closed", "--by", "records-office")
    assert wait_for(lambda: count_images(s, held) == 0, 30, step=1.0)


def test_index_rebuilt_from_the_log_equals_the_live_one(tiers: dict) -> None:
    r = tiers["stack"].cli("verify", "-q")
    assert "verify: the live index equals the index rebuilt from the log" in r.stdout
