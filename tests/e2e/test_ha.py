"""High availability on one site (issue #18): a Kafka cluster, index replicas and ingest nodes
behind HAProxy, under kill -9.

One stack for the module: three KRaft nodes (broker+controller each; topics with three replicas,
min.insync.replicas=2, producers acks=all + idempotence), two index replicas and two ingest
nodes behind a real HAProxy on the public ports. Modalities and workstations drive it with real
DCMTK storescu/findscu through the balancer; the faults are real kill -9 of real processes.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from strata.common.settings import Settings
from strata.ingest.outbox import Outbox
from strata.stack import cluster, haproxy, nodes
from tests.support.cluster import TimedStorescu, longest_gap, make_cluster_stack, sops_of
from tests.support.consistency import assert_consistent, assert_serves
from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.events import read_all
from tests.support.stack import Stack, require_tool
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

STALL_BOUND = 10.0  # seconds: the longest acknowledgement stall a broker failure may cause


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_cluster_stack(
        tmp_path_factory.mktemp("ha-home"),
        STRATA_INDEX_REPLICAS="2",
        STRATA_INGEST_NODES="2",
        STRATA_INGEST_WORKERS="1",
        STRATA_HAPROXY_CHECK_MS="500",
    )
    s.up()
    try:
        yield s
    finally:
        s.down()


def wait_full_isr(stack: Stack, timeout: float = 120.0) -> cluster.ClusterState:
    def full() -> cluster.ClusterState | None:
        st = cluster.cluster_state(stack.settings)
        ok = st and len(st.brokers) == 3 and all(p.state == "ok" for p in st.partitions)
        return st if ok else None

    st = wait_for(full, timeout, "the cluster to recover its ISR", step=0.5)
    assert st is not None
    return st


def test_status_shows_brokers_isr_and_leaders(ha: Stack) -> None:
    wait_full_isr(ha)
    out = ha.cli("status").stdout
    assert "Kafka cluster: 3 brokers up" in out
    for name in ("kafka-1", "kafka-2", "kafka-3", "index-1", "index-2", "ingest-1", "ingest-2"):
        assert re.search(rf"^{name}\s+running", out, re.M), out
    for backend in ("ingest_dicom", "qr", "grpc", "dicomweb"):
        for name in (
            ("ingest-1", "ingest-2") if backend.startswith("ingest") else ("index-1", "index-2")
        ):
            assert re.search(rf"^{backend}\s+{name}\s+UP", out, re.M), out
    # each index replica's position and lag, each ingest node's outbox
    for name in ("index-1", "index-2"):
        assert re.search(rf"^{name}\s+\d+\s+\d+\s+\d+\s*$", out, re.M), out
    for name in ("ingest-1", "ingest-2"):
        assert re.search(rf"^{name}\s+\d+\s+\d+\.\d\s+\d+\s*$", out, re.M), out
    study = [ln for ln in out.splitlines() if ln.startswith(ha.settings.study_topic)]
    parts = [ln.split() for ln in study if len(ln.split()) == 6]
    assert len(parts) == ha.settings.study_partitions
    for _, _, leader, replicas, isr, state in parts:
        assert state == "ok" and len(replicas.split(",")) == 3 and len(isr.split(",")) == 3
        assert leader in replicas.split(",")


def test_kill_one_broker_during_sustained_ingest(ha: Stack, tmp_path: Path) -> None:
    """kill -9 of the broker leading the most study partitions while four associations send:
    every image is acknowledged (no client-visible failure), acknowledgements stall at most
    10 s, nothing acknowledged is lost, and the killed node rejoins the ISR."""
    files = ct_series(tmp_path / "s", 200, patient_id="HA-BROKER")
    quarters = [files[i::4] for i in range(4)]
    state = wait_full_isr(ha)
    leads: dict[int, int] = {}
    for p in state.partitions:
        if p.topic == ha.settings.study_topic:
            leads[p.leader] = leads.get(p.leader, 0) + 1
    victim = max(leads, key=lambda n: leads[n])
    pid = int((ha.settings.run_dir / f"kafka-{victim}.pid").read_text())

    runs = [
        TimedStorescu(ha.settings.ingest_port, ha.settings.ingest_ae_title, q) for q in quarters
    ]
    runs[0].wait_acks(10)  # the run is under way
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    codes = [r.finish() for r in runs]
    acked = set().union(*(r.acked for r in runs))

    assert codes == [0, 0, 0, 0], "\n".join(r.output[-1500:] for r in runs)
    assert acked == {str(f) for f in files}, f"{len(files) - len(acked)} images not acknowledged"
    stall = longest_gap(runs, killed_at)
    print(f"longest acknowledgement gap after the kill: {stall:.2f} s")
    assert stall <= STALL_BOUND, f"acknowledgements stalled {stall:.1f} s after the broker kill"

    # with one node down the cluster shows it, and still takes writes (2 replicas in sync)
    out = ha.cli("status", check=False).stdout
    assert "DOWN" in out, out
    assert_consistent(ha, sops_of(acked), timeout=120)
    assert_serves(ha, tmp_path)

    ha.up()  # brings the killed node back; it catches up and rejoins every ISR
    wait_full_isr(ha)
    assert_consistent(ha, sops_of(acked))


def node(stack: Stack, name: str) -> nodes.Node:
    (n,) = [n for n in nodes.nodes(stack.settings) if n.name == name]
    return n


def kill_node(stack: Stack, name: str) -> None:
    """kill -9 of a node and every process of it (an ingest node's workers too)."""
    pid = int((stack.settings.run_dir / f"{name}.pid").read_text())
    os.killpg(pid, signal.SIGKILL)


def wait_lb(stack: Stack, backend: str, server: str, up: bool, timeout: float = 60.0) -> float:
    """Until HAProxy sees ``server`` of ``backend`` UP (or DOWN); returns when it did."""
    def seen() -> float | None:
        st = haproxy.servers(stack.settings).get((backend, server), "")
        return time.monotonic() if st.startswith("UP") == up and st else None

    when = wait_for(seen, timeout, f"HAProxy to see {backend}/{server} {'UP' if up else 'DOWN'}",
                    step=0.1)  # fmt: skip
    assert when is not None
    return when


def search(port: int, ae: str, patient_id: str) -> int | None:
    """One real findscu C-FIND at IMAGE level; the number of matches, None if it failed."""
    r = subprocess.run(
        [
            "findscu",
            "-S",
            "-aet",
            "WORKSTATION",
            "-aec",
            ae,
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            f"PatientID={patient_id}",
            "-k",
            "StudyInstanceUID",
            "-k",
            "SOPInstanceUID",
            "127.0.0.1",
            str(port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    if r.returncode != 0:
        return None
    return (r.stdout + r.stderr).count("(0008,0018)")


def stack_at(stack: Stack, **env: str) -> Stack:
    """The same stack, with CLI settings pointing elsewhere (e.g. at one replica)."""
    e = {**stack.env, **env}
    return Stack(stack.home, e, Settings.from_env(e))


def test_kill_index_replica_during_query_load(ha: Stack, tmp_path: Path) -> None:
    """kill -9 of one index replica while workstations search through the balancer: no search
    fails once HAProxy has marked it down; restarted, it catches up and verifies."""
    require_tool("findscu")
    files = ct_series(tmp_path / "q", 12, patient_id="HA-QUERY")
    code, statuses, out = storescu(ha.settings.ingest_port, ha.settings.ingest_ae_title, files)
    assert code == 0 and statuses == ["Success"] * 12, out[-2000:]
    acked = sops_of(files)
    for r in ("index-1", "index-2"):  # both replicas answer the whole series
        port = node(ha, r).ports["qr"]
        wait_for(lambda port=port: search(port, ha.settings.qr_ae_title, "HA-QUERY") == 12, 60,
                 f"{r} to index the series", step=0.2)  # fmt: skip

    results: list[tuple[float, float, bool]] = []  # (start, end, answered right)
    stop = threading.Event()
    progress = threading.Condition()

    def load() -> None:
        while not stop.is_set():
            t = time.monotonic()
            n = search(ha.settings.qr_port, ha.settings.qr_ae_title, "HA-QUERY")
            with progress:
                results.append((t, time.monotonic(), n == 12))
                progress.notify_all()

    def after(count: int) -> None:
        with progress:
            progress.wait_for(lambda: len(results) >= count, timeout=120)

    workers = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    try:
        after(10)
        killed_at = time.monotonic()
        kill_node(ha, "index-1")
        noticed = wait_lb(ha, "qr", "index-1", up=False)
        n_at_notice = len(results)
        after(n_at_notice + 20)
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=90)
    # a search in flight on the killed replica, or sent before HAProxy noticed, may fail
    during = [ok for t, end, ok in results if end >= killed_at and t < noticed]
    after_notice = [ok for t, _, ok in results if t >= noticed]
    print(
        f"index replica kill: HAProxy noticed in {noticed - killed_at:.2f} s; failed searches: "
        f"{during.count(False)} of {len(during)} before, {after_notice.count(False)} of "
        f"{len(after_notice)} after"
    )
    assert all(ok for _, end, ok in results if end < killed_at)
    assert after_notice and all(after_notice), "searches failed after HAProxy marked it down"

    ha.up()  # restarts the killed replica on its own index and ports
    wait_lb(ha, "qr", "index-1", up=True, timeout=120)
    assert search(node(ha, "index-1").ports["qr"], ha.settings.qr_ae_title, "HA-QUERY") == 12
    replica = stack_at(ha, STRATA_INDEX_HTTP_PORT=str(node(ha, "index-1").ports["http"]))
    out = replica.cli("verify", "-q").stdout
    assert "the live index equals the index rebuilt from the log" in out, out
    assert_consistent(ha, acked)


def test_kill_ingest_node_during_run(ha: Stack, tmp_path: Path) -> None:
    """kill -9 of one ingest node (with events still in its outbox) while modalities send
    through the balancer: new associations go to the other node, nothing acknowledged is lost,
    and the dead node's outbox is published when it restarts."""
    files = ct_series(tmp_path / "i", 160, patient_id="HA-INGEST")
    wait_full_isr(ha)
    # Hold the log back (two of three brokers paused: no write reaches min.insync.replicas),
    # so that acknowledged events wait in the nodes' fsync'd outboxes when one node dies.
    brokers = [int((ha.settings.run_dir / f"kafka-{i}.pid").read_text()) for i in (2, 3)]
    runs = [
        TimedStorescu(ha.settings.ingest_port, ha.settings.ingest_ae_title, files[i::4])
        for i in range(4)
    ]
    try:
        for r in runs:
            r.wait_acks(5)
        for b in brokers:
            os.kill(b, signal.SIGSTOP)
        for r in runs:
            r.wait_acks(15)
        victim = node(ha, "ingest-1")
        kill_node(ha, "ingest-1")
    finally:
        for b in brokers:
            os.kill(b, signal.SIGCONT)
    for r in runs:
        r.finish()
    acked = set().union(*(r.acked for r in runs))
    pending = Outbox(victim.dir / "ingest" / "outbox.sqlite").depth()
    print(f"ingest node kill: {len(acked)} acked before, {pending} events left in its outbox")
    assert pending > 0, "the test wants acknowledged events still in the dead node's outbox"
    assert all(r.acked for r in runs)

    # the modalities re-send what was not acknowledged: new associations reach ingest-2 only
    wait_lb(ha, "ingest_dicom", "ingest-1", up=False)
    resend = [f for f in files if str(f) not in acked]
    again = [
        TimedStorescu(ha.settings.ingest_port, ha.settings.ingest_ae_title, resend[i::2])
        for i in range(2)
    ]
    assert [r.finish() for r in again] == [0, 0], again[0].output[-2000:]
    acked |= set().union(*(r.acked for r in again))
    assert acked == {str(f) for f in files}
    resent_sops = sops_of(resend)

    def nodes_of() -> dict[str, str]:
        return {
            e.instance_stored.sop_instance_uid: e.producer.node
            for e in read_all(ha.settings)
            if e.WhichOneof("payload") == "instance_stored"
        }

    # ingest-2's relay publishes what it acknowledged asynchronously: wait for the events
    assert wait_for(lambda: resent_sops <= set(nodes_of()), 60, step=0.5)
    seen = nodes_of()
    assert {seen[s] for s in resent_sops} == {f"{ha.settings.node_name}/ingest-2"}

    ha.up()  # restarts ingest-1: its relay publishes what its outbox still held
    outbox = victim.dir / "ingest" / "outbox.sqlite"
    wait_for(lambda: not Outbox(outbox).depth(), 60, "the restarted node to publish its outbox",
             step=0.2)  # fmt: skip
    wait_lb(ha, "ingest_dicom", "ingest-1", up=True)
    assert_consistent(ha, sops_of(acked), timeout=120)


def test_add_index_replica(ha: Stack) -> None:
    """STRATA_INDEX_REPLICAS=3 strata up on the running stack: the new replica builds its
    index from offset 0, joins the balancer only then, and verifies against the log."""
    more = stack_at(ha, STRATA_INDEX_REPLICAS="3")
    more.up()
    wait_lb(ha, "qr", "index-3", up=True)
    out = more.cli("status").stdout
    assert re.search(r"^qr\s+index-3\s+UP", out, re.M), out
    port = node(more, "index-3").ports["http"]
    out = stack_at(more, STRATA_INDEX_HTTP_PORT=str(port)).cli("verify", "-q").stdout
    assert "the live index equals the index rebuilt from the log" in out, out
    assert search(node(more, "index-3").ports["qr"], ha.settings.qr_ae_title, "HA-QUERY") == 12
