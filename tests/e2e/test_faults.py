"""Fault tests: the ingest contract under kill -9 of the Kafka broker and of ingest workers.

A modality that got a success status may forget the image. After the faults, and after the
modality re-sends what was NOT acknowledged (as real modalities do), the archive must hold
exactly the acknowledged instances: each indexed once, each with exactly one InstanceStored
event, each object's sha256 matching its event.
"""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from strata.proto.strata.v1 import events_pb2
from tests.support.dcmtk import dcmtk_env, findscu
from tests.support.stack import Stack, make_stack, require_tool
from tests.support.synthetic import ct_series

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def fstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # two workers
    s = make_stack(tmp_path_factory.mktemp("fault-home"))
    s.env["STRATA_INGEST_WORKERS"] = "2"
    s.up()
    try:
        yield s
    finally:
        s.down()


def start_storescu(stack: Stack, files: list[Path]) -> subprocess.Popen[str]:
    require_tool("storescu")
    return subprocess.Popen(
        [
            "storescu",
            "-v",
            "-aet",
            "FAULTCT",
            "-aec",
            stack.settings.ingest_ae_title,
            "127.0.0.1",
            str(stack.settings.ingest_port),
            *map(str, files),
        ],
        env=dcmtk_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def acked_files(output: str) -> set[str]:
    """Files whose C-STORE got a Success response, from storescu -v output."""
    acked, current = set(), None
    for line in output.splitlines():
        m = re.search(r"Sending file: (.+)$", line)
        if m:
            current = m.group(1).strip()
        elif "Received Store Response (Success)" in line and current:
            acked.add(current)
    return acked


def send_until_acked(stack: Stack, files: list[Path], acked: set[str]) -> set[str]:
    """What a modality does: re-send every file without a success, until all have one."""
    out = ""
    for attempt in range(10):
        todo = [f for f in files if str(f) not in acked]
        if not todo:
            break
        if attempt:
            time.sleep(min(2 * attempt, 10))  # back off, as modalities do
        p = start_storescu(stack, todo)
        out, _ = p.communicate(timeout=300)
        acked |= acked_files(out)
    missing = {str(f) for f in files} - acked
    assert not missing, f"{len(missing)} files never acknowledged; last storescu:\n{out[-3000:]}"
    return acked


def study_events(stack: Stack, study_uid: str) -> list[events_pb2.InstanceStored]:
    topic = stack.settings.study_topic
    c = Consumer(
        {
            "bootstrap.servers": stack.settings.kafka_bootstrap,
            "group.id": f"fault-{time.time_ns()}",
            "enable.auto.commit": False,
        }
    )
    try:
        parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        out, done = [], {p for p, e in ends.items() if e == 0}
        deadline = time.monotonic() + 60
        while len(done) < len(parts) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None or m.error():
                continue
            env = events_pb2.Envelope()
            env.ParseFromString(m.value())
            if env.study_instance_uid == study_uid:
                out.append(env.instance_stored)
            if m.offset() + 1 >= ends[m.partition()]:
                done.add(m.partition())
        return out
    finally:
        c.close()


def wait_indexed(stack: Stack, study_uid: str, n: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    got = -1
    while time.monotonic() < deadline:
        got = len(
            findscu(
                stack.settings.qr_port,
                stack.settings.qr_ae_title,
                "IMAGE",
                {"StudyInstanceUID": study_uid, "SOPInstanceUID": ""},
            )
        )
        if got >= n:
            return got
        time.sleep(0.5)
    return got


def assert_exact(stack: Stack, files: list[Path], study_uid: str) -> None:
    import pydicom

    sops = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert wait_indexed(stack, study_uid, len(sops)) == len(sops)
    events = study_events(stack, study_uid)
    assert sorted(e.sop_instance_uid for e in events) == sorted(sops), (
        "exactly one InstanceStored per acknowledged instance"
    )
    for e in events:
        data = (stack.settings.hot_dir / e.location.key).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e.sha256 and len(data) == e.size_bytes


def test_kill_kafka_during_sustained_ingest(fstack: Stack, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "a", 300, patient_id="FAULT-KAFKA")
    import pydicom

    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    halves = [files[:150], files[150:]]
    senders = [start_storescu(fstack, h) for h in halves]
    time.sleep(1.0)
    kafka_pid = int((fstack.settings.run_dir / "kafka.pid").read_text())
    os.kill(kafka_pid, signal.SIGKILL)
    time.sleep(3.0)  # modalities keep sending while the log is gone: the outbox spools
    outputs = [p.communicate(timeout=300)[0] for p in senders]
    acked = set().union(*(acked_files(o) for o in outputs))
    assert len(acked) > 200, "ingest must keep accepting while Kafka is down (spool mode)"
    fstack.up()  # brings back the broker; the other services are still running
    send_until_acked(fstack, files, acked)
    assert_exact(fstack, files, study)


def test_kill_ingest_worker_mid_association(fstack: Stack, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "b", 300, patient_id="FAULT-WORKER")
    import pydicom

    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    sender = start_storescu(fstack, files)
    time.sleep(1.0)
    node = int((fstack.settings.run_dir / "ingest.pid").read_text())
    workers = [int(p) for p in Path(f"/proc/{node}/task/{node}/children").read_text().split()]
    assert workers, "the ingest node should have worker processes"
    for w in workers:
        os.kill(w, signal.SIGKILL)
    out, _ = sender.communicate(timeout=300)
    acked = acked_files(out)
    assert len(acked) < len(files), "the association should have been cut mid-way"
    # the node restarts its workers; the modality re-sends what was not acknowledged
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        kids = Path(f"/proc/{node}/task/{node}/children").read_text().split()
        if len(kids) == len(workers) and not set(map(int, kids)) & set(workers):
            break
        time.sleep(0.2)
    time.sleep(1.0)
    send_until_acked(fstack, files, acked)
    assert_exact(fstack, files, study)


def test_health_and_metrics(fstack: Stack) -> None:
    import json
    import urllib.request

    base = f"http://127.0.0.1:{fstack.settings.ingest_http_port}"
    health = json.loads(urllib.request.urlopen(base + "/healthz", timeout=5).read())
    assert health["status"] == "ok" and health["workers"] == 2 and health["kafka_up"]
    metrics = urllib.request.urlopen(base + "/metrics", timeout=5).read().decode()
    stored = re.search(r'strata_ingest_instances_total\{outcome="stored"\} (\d+)', metrics)
    assert stored and float(stored.group(1)) > 0
    assert "strata_ingest_store_seconds_bucket" in metrics
    assert "strata_ingest_outbox_depth" in metrics
