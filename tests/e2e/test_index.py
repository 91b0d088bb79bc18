"""The index is exact and rebuildable: crash of the processor under load, replay + verify,
and StudyStable emitted once per burst (never again on restart or replay)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.support.dcmtk import dcmtk_env, findscu
from tests.support.stack import Stack, make_stack, require_tool
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e
QUIET = 3


@pytest.fixture(scope="module")
def istack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("index-home"))
    s.env["STRATA_STUDY_QUIET_SECONDS"] = str(QUIET)
    s.env["STRATA_INDEX_BATCH_SIZE"] = "50"  # many small batches: more crash points
    s.up()
    try:
        yield s
    finally:
        s.down()


def http(stack: Stack, path: str) -> dict:
    url = f"http://127.0.0.1:{stack.settings.index_http_port}{path}"
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def count_images(stack: Stack, study: str) -> int:
    return len(
        findscu(
            stack.settings.qr_port,
            stack.settings.qr_ae_title,
            "IMAGE",
            {"StudyInstanceUID": study, "SOPInstanceUID": ""},
        )
    )


def stable_events(stack: Stack) -> list[dict]:
    rows = http(stack, "/checksums")  # cheap enough here; proves the endpoint works too
    assert rows["tables"]["events"][0] > 0
    from confluent_kafka import Consumer, TopicPartition

    from strata.proto.strata.v1 import events_pb2

    topic = stack.settings.study_topic
    c = Consumer(
        {
            "bootstrap.servers": stack.settings.kafka_bootstrap,
            "group.id": f"t-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    out = []
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        done = {p for p, e in ends.items() if e == 0}
        while len(done) < len(parts):
            m = c.poll(1.0)
            if m is None or m.error():
                continue
            env = events_pb2.Envelope()
            env.ParseFromString(m.value())
            if env.WhichOneof("payload") == "study_stable":
                out.append(
                    {
                        "study": env.study_stable.study_instance_uid,
                        "through": env.study_stable.through_offset,
                    }
                )
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
    finally:
        c.close()
    return out


def test_processor_kill_under_load_then_exact(istack: Stack, tmp_path: Path) -> None:
    require_tool("storescu")
    files = ct_series(tmp_path / "s", 400, patient_id="IDX-CRASH")
    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    sender = subprocess.Popen(
        [
            "storescu",
            "-aec",
            istack.settings.ingest_ae_title,
            "127.0.0.1",
            str(istack.settings.ingest_port),
            *map(str, files),
        ],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(3):  # kill the index node mid-batch, three times, under sustained load
        time.sleep(1.0)
        pid = int((istack.settings.run_dir / "index.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        istack.up()
    assert sender.wait(timeout=300) == 0
    assert wait_for(lambda: count_images(istack, study) == 400, 60)
    # exact: no duplicates, no holes, in every table (FINAL counts vs distinct keys)
    cs = http(istack, "/checksums")
    assert cs["tables"]["instances"][0] == cs["tables"]["instance_versions"][0]
    r = istack.cli("verify", "-q")
    assert "verify: the live index equals the index rebuilt from the log" in r.stdout


def test_replay_builds_a_queryable_index(istack: Stack, tmp_path: Path) -> None:
    r = istack.cli("replay", "--into", str(tmp_path / "rebuilt"))
    assert "replayed" in r.stdout and "events/s" in r.stdout
    n = int(r.stdout.split("replayed ")[1].split()[0])
    pos = http(istack, "/positions")
    assert n == sum(int(o) for parts in pos.values() for o in parts.values())


def test_study_stable_once_per_burst(istack: Stack, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "b", 5, patient_id="IDX-STABLE")
    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    istack.cli("send", "-q", *map(str, files[:3]))
    mine = wait_for(
        lambda: [e for e in stable_events(istack) if e["study"] == study], QUIET + 15, step=1.0
    )
    assert len(mine) == 1, mine
    # a restart of the index node does not announce the same burst again
    pid = int((istack.settings.run_dir / "index.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    istack.up()
    time.sleep(QUIET + 3)
    assert len([e for e in stable_events(istack) if e["study"] == study]) == 1
    # new arrivals start a new burst: announced once more, covering the later instance
    istack.cli("send", "-q", *map(str, files[3:]))
    mine = wait_for(
        lambda: [e for e in stable_events(istack) if e["study"] == study][1:], QUIET + 15, step=1.0
    )
    allm = [e for e in stable_events(istack) if e["study"] == study]
    assert len(allm) == 2 and allm[1]["through"] > allm[0]["through"]
    del mine


def test_awkward_log_replays_equal_to_live(istack: Stack, tmp_path: Path) -> None:
    """Every event kind with awkward headers (tests/support/awkward_log.py) produced into the
    log: the live index node projects it (a Batch, the driver's insert), `strata verify` rebuilds
    it from the log (a projector process, Arrow inserts) and compares checksums per table and
    per study; an in-process replay of the same log gives the same checksums too."""
    from confluent_kafka import Producer

    from strata.processors.index import checksum
    from strata.processors.index.store import IndexStore
    from strata.processors.replay import end_positions, replay
    from tests.support.awkward_log import records

    settings = istack.settings
    p = Producer({"bootstrap.servers": settings.kafka_bootstrap, "enable.idempotence": True})
    for _part, _off, topic, env in records():
        name = settings.quarantine_topic if "quarantine" in topic else settings.study_topic
        p.produce(name, key=env.study_instance_uid.encode(), value=env.SerializeToString())
    assert p.flush(30) == 0
    topics = [settings.study_topic, settings.quarantine_topic]
    ends = end_positions(settings.kafka_bootstrap, topics)
    assert wait_for(lambda: caught_up_to(http(istack, "/positions"), ends), 60)
    r = istack.cli("verify", "-q", "--into", str(tmp_path / "verify"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verify: the live index equals the index rebuilt from the log" in r.stdout
    # the in-process replay (no projector process) builds the same index as the projector's
    projected = IndexStore(f"chdb://{tmp_path / 'verify'}", settings.clickhouse_database)
    try:
        projected.migrate()
        want = checksum.snapshot(projected)
        projected.client.command(f"DROP DATABASE {settings.clickhouse_database}")
        projected._columns = {}
        projected.migrate()
        n = replay(settings.kafka_bootstrap, projected, want["positions"], in_process=True).events
        assert n == sum(o for parts in want["positions"].values() for o in parts.values())
        assert checksum.snapshot(projected) == want
    finally:
        projected.close()


def caught_up_to(pos: dict, ends: dict) -> bool:
    return all(
        int(pos.get(t, {}).get(str(p), 0)) >= o
        for t, parts in ends.items()
        for p, o in parts.items()
        if o
    )
