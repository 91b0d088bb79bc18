"""Geo-redundancy in synchronous mode (docs/dr.md, "Synchronous mode"): A (STRATA_DR_MODE=sync)
acknowledges a C-STORE only once B's log holds its InstanceReplicated. Refused (A730) while B
does not confirm, acknowledged on the retry once B has it; and the drill (kill -9 of site A
mid-ingest, promote B) loses no acknowledged instance: RPO 0.

A module of its own (its pair of sites is up while these tests run, after test_dr.py's pair is
down: two pairs at once are too much for a small CI machine); the drill and the set-up are
test_dr.py's (benchmarks/dr.py)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from benchmarks.dr import drill, holdings, setup
from strata.stack.local import health
from tests.support.dcmtk import storescu
from tests.support.sites import Sites
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    s = setup(tmp_path_factory.mktemp("dr-sync"), mode="sync")
    try:
        yield s
    finally:
        s.down()


def _a_health(sites: Sites) -> dict:
    st = sites.a.settings
    return health(st.bind_host, st.ingest_http_port) or {}


def test_unconfirmed_is_refused_and_the_retry_waits_for_b(sites: Sites, tmp_path: Path) -> None:
    """B not copying (its mirror and copier stopped): A stores the instance but answers A730
    after STRATA_DR_SYNC_TIMEOUT, counts it and says so; once B follows again, the modality's
    retry (a duplicate at A) is acknowledged, and only then is the instance at B."""
    f = ct_series(tmp_path / "f", 1, patient_id="SYNCREFUSE")
    # one acknowledged instance first: A's watcher reads B's log (sync works end to end)
    ok = ct_series(tmp_path / "ok", 1, patient_id="SYNCOK")
    _rc, rsp, out = storescu(int(sites.a.env["STRATA_INGEST_PORT"]), "STRATA", ok)
    assert rsp == ["Success"], out[-2000:]
    sites.b.cli("dr", "unfollow")
    _rc, rsp, out = storescu(int(sites.a.env["STRATA_INGEST_PORT"]), "STRATA", f)
    assert rsp and rsp[0] != "Success", out[-2000:]  # A730 (tests/unit/test_peersync.py)
    h = _a_health(sites)
    assert h["dr_mode"] == "sync" and h["dr_unconfirmed"] >= 1, h
    # STOW-RS, served by A's index node, waits the same way and is answered A730 in its response
    stowed = ct_series(tmp_path / "stow", 1, patient_id="SYNCSTOW")
    a = sites.a.settings
    r = requests.post(
        f"http://127.0.0.1:{a.dicomweb_port}{a.dicomweb_prefix}/studies",
        data=b"--B0\r\nContent-Type: application/dicom\r\n\r\n"
        + stowed[0].read_bytes()
        + b"\r\n--B0--\r\n",
        headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=B0'},
        timeout=60,
    )
    failed = r.json().get("00081198", {}).get("Value", [])
    assert failed and failed[0]["00081197"]["Value"] == [0xA730], (r.status_code, r.text[:500])
    st = json.loads(sites.a.cli("dr", "status", "--json").stdout)
    assert st["mode"] == "sync" and st["unconfirmed"] >= 1, st
    assert st["unconfirmed_stow"] >= 1, st
    sites.b.cli("dr", "follow")
    # the retry: refused while B catches up (its mirror restarts), acknowledged once B holds it
    got = wait_for(
        lambda: storescu(int(sites.a.env["STRATA_INGEST_PORT"]), "STRATA", f)[1] == ["Success"],
        180,
        step=1.0,
    )
    assert got, "the retry was never acknowledged after B followed again"
    assert holdings(sites.b, [str(p) for p in f])[1], "acknowledged but not at B"


def test_drill_sync_rpo_zero(sites: Sites, tmp_path: Path) -> None:
    out = drill(sites, tmp_path, instances=60, kill_after=0.6)
    print("DR drill (sync):", json.dumps(out))
    assert out["mode"] == "sync" and out["acknowledged"] >= 36, out
    # RPO 0: every instance storescu logged as acknowledged is queryable and byte-identical at B
    assert out["rpo_instances"] == 0, out
    assert out["queryable_at_b"] == out["identical_at_b"] == out["acknowledged"], out
    # and at every moment of the run: each acknowledgement came after B recorded the copy
    assert out["rpo_window_samples"] > 0 and out["rpo_window_max_s"] == 0.0, out
    assert out["rto_seconds"] is not None and out["rto_seconds"] < 120, out
