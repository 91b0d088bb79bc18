"""Geo-redundancy end to end (docs/dr.md): two sites on this machine, MirrorMaker 2 A -> B,
the object copier at B, the fence, and the drill (kill -9 of site A mid-ingest, promote B)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.dr import _uids, drill, holdings, setup
from tests.support.dcmtk import storescu
from tests.support.sites import Sites
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    s = setup(tmp_path_factory.mktemp("dr"))
    try:
        yield s
    finally:
        s.down()


def test_secondary_is_fenced(sites: Sites, tmp_path: Path) -> None:
    """B follows A (epoch 1, primary A): a C-STORE at B is refused, retryably."""
    f = ct_series(tmp_path / "f", 1, patient_id="FENCE")
    _rc, rsp, out = storescu(int(sites.b.env["STRATA_INGEST_PORT"]), "STRATA", f)
    assert rsp and rsp[0] != "Success", out[-2000:]
    st = json.loads(sites.b.cli("dr", "status", "--json").stdout)
    assert st["primary"] == "A" and st["accepts_ingest"] is False and st["mirror"] == "running"


def test_drill(sites: Sites, tmp_path: Path) -> None:
    out = drill(sites, tmp_path, instances=100, kill_after=0.6)
    print("DR drill:", json.dumps(out))
    assert out["acknowledged"] >= 60
    # Everything B holds of what A acknowledged is byte-identical; what is missing (asynchronous
    # mode) is the tail acknowledged shortly before A died.
    assert out["queryable_at_b"] >= out["identical_at_b"] > 0
    assert out["rpo_instances"] < out["acknowledged"]
    assert out["rpo_oldest_missing_age_at_kill"] < 30, out
    assert out["rto_seconds"] is not None and out["rto_seconds"] < 120, out
    st = json.loads(sites.b.cli("dr", "status", "--json").stdout)
    assert st["primary"] == "B" and st["epoch"] == 2 and st["accepts_ingest"] is True


def test_old_primary_comes_back_fenced_and_resends_what_only_it_has(sites: Sites) -> None:
    """After the drill: A restarts (its log, outbox and hot tier survived kill -9), reads B's
    epoch 2 and refuses ingest; `strata dr failback --resend` sends B what only A had: every
    instance A acknowledged is then byte-identical at B (RPO 0 after fail-back)."""
    assert sites.acked, "runs after test_drill"
    sites.a.up()
    st = json.loads(sites.a.cli("dr", "status", "--json").stdout)
    assert st["accepts_ingest"] is False and "fenced" in st, st
    _rc, rsp, out = storescu(
        int(sites.a.env["STRATA_INGEST_PORT"]), "STRATA", [Path(sites.acked[0])]
    )
    assert rsp and rsp[0] != "Success", out[-2000:]
    r = sites.a.cli(
        "dr", "failback", "--resend", "--to", f"127.0.0.1:{sites.b.env['STRATA_INGEST_PORT']}"
    )
    print(r.stdout)
    uids = {f: _uids(Path(f))[2] for f in sites.acked}
    want = set(uids.values())
    got = wait_for(lambda: holdings(sites.b, sites.acked)[1] >= want, 120)
    assert got, f"missing at B after fail-back: {want - holdings(sites.b, sites.acked)[1]}"
