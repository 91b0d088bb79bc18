"""Geo-redundancy end to end (docs/dr.md): two sites on this machine, MirrorMaker 2 A -> B,
the object copier at B, the fence, the follower's silence (only the primary writes decisions),
the drill (kill -9 of site A mid-ingest, promote B), and the fail-back (A re-sends what only it
has, is rebuilt as B's follower, switches over; B is rebuilt as A's follower)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from benchmarks.dr import _uids, drill, holdings, setup
from strata.cli.dr import current_epoch
from strata.common import kafka
from strata.common.events import decode
from strata.proto.strata.v1 import events_pb2 as pb
from tests.support.dcmtk import storescu
from tests.support.sites import Sites
from tests.support.stack import Stack
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sites]:
    # a short quiet period: studies become stable (a decision) within the tests' time
    s = setup(tmp_path_factory.mktemp("dr"), env={"STRATA_STUDY_QUIET_SECONDS": "2"})
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
    # An operator's decision at the follower would live in B's log only, which A never reads
    # (a hold that does not stop A's retention): refused, and nothing written.
    study = "1.2.826.0.1.3680043.8.498.77"
    r = sites.b.cli("hold", "place", study, "--reason", "litigation", check=False)
    assert r.returncode == 2 and "hold place refused" in r.stderr and "primary" in r.stderr, r
    assert not [e for _p, _o, e in _log(sites.b) if e.WhichOneof("payload") == "legal_hold_placed"]


def _log(site: Stack) -> list[tuple[int, int, pb.Envelope]]:
    """(partition, offset, envelope) of every committed event of the site's study topic."""
    from confluent_kafka import KafkaError, TopicPartition

    st = site.settings
    c = kafka.consumer(st, kafka.fresh_group("test-dr-log"), "test", {"enable.partition.eof": True})
    out: list[tuple[int, int, pb.Envelope]] = []
    try:
        parts = set(c.list_topics(st.study_topic, timeout=10).topics[st.study_topic].partitions)
        c.assign([TopicPartition(st.study_topic, p, 0) for p in parts])
        done: set[int] = set()
        wait_for(lambda: _drain(c, out, done, KafkaError._PARTITION_EOF) >= parts, 60, "the log")
    finally:
        c.close()
    return out


def _drain(c: Any, out: list, done: set[int], eof: int) -> set[int]:  # noqa: ANN401
    for m in c.consume(500, 0.5):
        if m.error() is not None:
            if m.error().code() == eof:
                done.add(m.partition())
            continue
        out.append((m.partition(), m.offset(), decode(m.value())))
    return done


def _decisions_of(site: Stack, name: str) -> list[tuple[int, int, pb.Envelope]]:
    """The events the site wrote into its own study topic that are not the copier's record
    of a copy (InstanceReplicated) or an arrival (InstanceStored): its decisions."""
    return [
        (p, o, e)
        for p, o, e in _log(site)
        if e.producer.node == name
        and e.WhichOneof("payload") not in ("instance_replicated", "instance_stored")
    ]


def _stable(site: Stack, study: str, node: str) -> bool:
    return any(
        e.WhichOneof("payload") == "study_stable"
        and e.study_instance_uid == study
        and e.producer.node == node
        for _p, _o, e in _log(site)
    )


def test_follower_writes_no_decisions(sites: Sites, tmp_path: Path) -> None:
    """B follows A: A decides (StudyStable of a quiet study) and B only mirrors it. B's index
    runs the same stability timer on the same facts; it must not announce the study itself.
    B's mirror is stopped while A decides, so B has the whole quiet period (and more: the
    mirror's restart) to decide on its own were it allowed to."""
    f = ct_series(tmp_path / "f", 2, patient_id="FOLLOWQUIET")
    study = _uids(f[0])[0]
    _rc, rsp, out = storescu(int(sites.a.env["STRATA_INGEST_PORT"]), "STRATA", f)
    assert rsp == ["Success", "Success"], out[-2000:]
    sops = {_uids(x)[2] for x in f}
    wait_for(lambda: holdings(sites.b, [str(x) for x in f])[0] >= sops, 120, "the study at B")
    sites.b.cli("dr", "unfollow")
    try:
        wait_for(lambda: _stable(sites.a, study, "site-a"), 120, "A's StudyStable")
    finally:
        sites.b.cli("dr", "follow")
    wait_for(lambda: _stable(sites.b, study, "site-a"), 180, "A's StudyStable mirrored to B")
    assert _decisions_of(sites.b, "site-b") == []


def test_drill(sites: Sites, tmp_path: Path) -> None:
    out = drill(sites, tmp_path, instances=100, kill_after=0.6)
    print("DR drill:", json.dumps(out))
    assert out["acknowledged"] >= 60
    # Everything B holds of what A acknowledged is byte-identical; what is missing (asynchronous
    # mode) is the tail acknowledged shortly before A died.
    assert out["queryable_at_b"] >= out["identical_at_b"] > 0
    assert out["rpo_instances"] < out["acknowledged"]
    assert out["rpo_oldest_missing_age_at_kill"] < 30, out
    # had A died at any moment of the run, it would have lost less than this much ingest
    assert out["rpo_window_samples"] > 0 and out["rpo_window_max_s"] < 30, out
    assert out["rto_seconds"] is not None and out["rto_seconds"] < 120, out
    st = json.loads(sites.b.cli("dr", "status", "--json").stdout)
    assert st["primary"] == "B" and st["epoch"] == 2 and st["accepts_ingest"] is True


def test_promoted_site_takes_decisions_and_none_before(sites: Sites, tmp_path: Path) -> None:
    """After the drill's promote (no restart of B): a study sent to B becomes stable at B, by
    B; and every decision B ever wrote is after the promotion (past the log ends the epoch
    recorded), none while it followed."""
    ep = current_epoch(sites.b.settings, sites.b.settings.dr_topic)
    assert ep is not None and ep.primary_site == "B", "runs after test_drill"
    f = ct_series(tmp_path / "f", 1, patient_id="PROMOTEDQUIET")
    study = _uids(f[0])[0]
    _rc, rsp, out = storescu(int(sites.b.env["STRATA_INGEST_PORT"]), "STRATA", f)
    assert rsp == ["Success"], out[-2000:]
    wait_for(lambda: _stable(sites.b, study, "site-b"), 120, "B's StudyStable at B")
    topic = sites.b.settings.study_topic
    early = [
        (p, o, e.WhichOneof("payload"))
        for p, o, e in _decisions_of(sites.b, "site-b")
        if o < ep.diverged_at[f"{topic}:{p}"]
    ]
    assert early == [], "decisions written by B while it followed"


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


def _index_sops(site: Stack) -> list[str]:
    """Every SOP Instance UID the site's index answers, one entry per C-FIND match (IMAGE
    level, study by study): an instance indexed twice appears twice."""
    from tests.support.dcmtk import findscu

    port = int(site.env["STRATA_QR_PORT"])
    studies = {
        str(r.StudyInstanceUID)
        for r in findscu(port, "STRATA_QR", "STUDY", {"StudyInstanceUID": ""})
    }
    out: list[str] = []
    for study in sorted(studies):
        rows = findscu(
            port,
            "STRATA_QR",
            "IMAGE",
            {"StudyInstanceUID": study, "SeriesInstanceUID": "", "SOPInstanceUID": ""},
        )
        out += [str(r.SOPInstanceUID) for r in rows]
    return out


def _store(site: Stack, files: list[Path]) -> list[str]:
    return storescu(int(site.env["STRATA_INGEST_PORT"]), "STRATA", files)[1]


def test_fail_back_rebuild_switchover_and_the_other_site_follows(
    sites: Sites, tmp_path: Path
) -> None:
    """After the re-send, `strata dr failback --all` at A: A is rebuilt as B's follower (its
    old log set aside, not deleted), catches up, and takes primacy back through B's log
    (switchover, epoch 3); A accepts C-STORE and B refuses; B is rebuilt as A's follower
    (`strata dr rebuild`, `strata dr wait`) and catches up. Then at both sites the index
    equals a replay of the log (`strata verify`) with no instance twice, and every instance A
    acknowledged in the drill is byte-identical at A."""
    assert sites.acked, "runs after test_drill"
    a, b = sites.a, sites.b
    # the primary is not rebuilt (exit 2, nothing stopped)
    r = b.cli("dr", "rebuild", check=False)
    assert r.returncode == 2 and "B is the primary of epoch 2" in r.stderr, r
    assert json.loads(b.cli("dr", "status", "--json").stdout)["accepts_ingest"] is True

    # the whole fail-back at A in one command: re-send (nothing left: the previous test did),
    # rebuild as B's follower, wait until caught up, switch over
    to = f"127.0.0.1:{b.env['STRATA_INGEST_PORT']}"
    r = a.cli(
        "dr", "failback", "--all", "--to", to, "--timeout", "600", "--by", "test", timeout=1800
    )
    print(r.stdout)
    assert "none; the peer has every instance" in r.stdout, r.stdout
    assert "site A is primary from epoch 3" in r.stdout, r.stdout
    aside = list((a.home / "set-aside").iterdir())
    assert len(aside) == 1 and (aside[0] / "kafka" / "data").is_dir(), aside
    assert (aside[0] / "index").is_dir() and (a.home / "hot").is_dir(), aside
    st = json.loads(a.cli("dr", "status", "--json").stdout)
    assert st["primary"] == "A" and st["epoch"] == 3 and st["mirror"] == "stopped", st
    assert st["accepts_ingest"] is True, st
    st = json.loads(b.cli("dr", "status", "--json").stdout)
    assert st["primary"] == "A" and st["epoch"] == 3 and st["accepts_ingest"] is False, st

    after = ct_series(tmp_path / "after", 2, patient_id="FAILEDBACK")
    assert wait_for(lambda: _store(a, after) == ["Success", "Success"], 30), "A refuses"
    refused = _store(b, [after[0]])
    assert refused and refused[0] != "Success", refused

    r = b.cli("dr", "rebuild", timeout=900)
    print(r.stdout)
    r = b.cli("dr", "wait", "--timeout", "600", timeout=900)
    print(r.stdout)
    new = {_uids(x)[2] for x in after}
    wait_for(lambda: holdings(b, [str(x) for x in after])[1] >= new, 120, "A's new study at B")

    for site in (a, b):
        r = site.cli("verify", "--quiet", timeout=900)
        assert "verify: the live index equals the index rebuilt from the log" in r.stdout, r
        sops = _index_sops(site)
        twice = {s for s in sops if sops.count(s) > 1}
        assert not twice, f"indexed twice at {site.settings.dr_site}: {sorted(twice)[:5]}"
    want = {_uids(Path(f))[2] for f in sites.acked}
    _found, identical = holdings(a, sites.acked)
    assert want <= identical, f"not byte-identical at A: {sorted(want - identical)[:5]}"
