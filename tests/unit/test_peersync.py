"""Synchronous geo-redundancy's waiter logic (ingest/peersync.py, ingest/store.py): the gate
over the confirmations file, the watcher's reading of InstanceReplicated events, and the store
service's acknowledgement in sync mode (real hot tier and outbox on tmp disk; no Kafka)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from strata.archive.hot import HotTier
from strata.common.events import envelope
from strata.ingest import statuses
from strata.ingest.outbox import Outbox
from strata.ingest.peersync import Confirmations, Gate, confirmed_ids
from strata.proto.strata.v1 import events_pb2 as pb
from tests.unit.test_store import rx, service, spool


def _replicated(source_event_id: str, source_site: str = "A") -> bytes:
    rep = pb.InstanceReplicated(
        sop_instance_uid="1.2.3",
        sha256="ab" * 32,
        source_site=source_site,
        source_event_id=source_event_id,
        site="B",
    )
    return envelope(rep, study_uid="1.2", service="dr-copier", node="b").SerializeToString()


def test_confirmed_ids_reads_only_replications_of_this_site() -> None:
    stored = envelope(
        pb.InstanceStored(sop_instance_uid="1.2.3"), study_uid="1.2", service="ingest", node="a"
    ).SerializeToString()
    values = [_replicated("e1"), stored, b"\x00garbage", None, _replicated("e2", "C")]
    assert confirmed_ids(values, "A") == ["e1"]


def test_gate_returns_once_confirmed_and_times_out_otherwise(tmp_path: Path) -> None:
    conf = Confirmations(tmp_path / "pc.sqlite")
    gate = Gate(Confirmations(tmp_path / "pc.sqlite"), timeout=0.3, peer_site="B")
    t0 = time.monotonic()
    assert gate.wait("never") is False
    assert 0.3 <= time.monotonic() - t0 < 2.0
    # confirmed by another connection (the node's watcher) while waiting
    later = threading.Timer(0.1, lambda: conf.record(["e1"], {("t", 0): 5}))
    later.start()
    assert gate.wait("e1", timeout=5.0) is True
    later.join()
    assert gate.wait("e1", timeout=0) is True  # kept: a later duplicate is answered at once
    assert conf.positions() == {("t", 0): 5}


def test_confirmations_are_idempotent_and_positions_move(tmp_path: Path) -> None:
    conf = Confirmations(tmp_path / "pc.sqlite")
    conf.record(["e1", "e2"], {("t", 0): 3})
    conf.record(["e2", "e3"], {("t", 0): 7, ("t", 1): 1})
    assert conf.count() == 3
    assert conf.positions() == {("t", 0): 7, ("t", 1): 1}
    assert conf.get_meta("history") is None
    conf.set_meta("history", "done")
    assert Confirmations(tmp_path / "pc.sqlite").get_meta("history") == "done"


@pytest.fixture
def hot(tmp_path: Path) -> HotTier:
    return HotTier(tmp_path / "hot")


def _sync_service(tmp: Path, hot: HotTier, timeout: float):
    conf = Confirmations(tmp / "pc.sqlite")
    svc = service(tmp, hot, Outbox(tmp / "ob.sqlite"))
    svc.sync = Gate(conf, timeout=timeout, peer_site="B")
    return svc, conf


def _confirm_when_appended(outbox: Outbox, conf: Confirmations, stop: threading.Event) -> None:
    """The peer, played by a thread: confirms every event of the outbox once it is there."""
    while not stop.is_set():
        ids = [p.event_id for p in outbox.pending(100)]
        if ids:
            conf.record(ids)
        stop.wait(0.01)


def test_sync_store_acknowledges_only_after_the_peer_confirms(tmp_path: Path, hot: HotTier) -> None:
    svc, conf = _sync_service(tmp_path, hot, timeout=10.0)
    stop = threading.Event()
    peer = threading.Thread(target=_confirm_when_appended, args=(svc.outbox, conf, stop))
    peer.start()
    try:
        path, ds = spool(tmp_path, hot)
        out = svc.store(rx(path, ds))
    finally:
        stop.set()
        peer.join()
    assert out.ok and out.event is not None and conf.has(out.event_id)


def test_sync_unconfirmed_is_refused_retryably_and_stays_durable(
    tmp_path: Path, hot: HotTier
) -> None:
    svc, conf = _sync_service(tmp_path, hot, timeout=0.2)
    sop = generate_uid()

    def mutate(d: pydicom.Dataset) -> None:
        d.SOPInstanceUID = sop

    path, ds = spool(tmp_path, hot, mutate)
    out = svc.store(rx(path, ds))
    assert out.status == statuses.OUT_OF_RESOURCES_PEER_UNCONFIRMED == 0xA730
    assert out.reason == "peer-unconfirmed" and "did not confirm" in out.comment
    assert len(out.comment) <= 64
    # durable here: the event is in the outbox, the object in the hot tier (not undone)
    pending = svc.outbox.pending(10)
    assert [p.event_id for p in pending] == [out.event_id]
    assert out.event is not None
    assert hot.exists(out.event.instance_stored.location.key)
    # the retry is a duplicate: refused again while the peer has not confirmed the FIRST event
    path, ds = spool(tmp_path, hot, mutate)
    again = svc.store(rx(path, ds))
    assert again.status == 0xA730 and again.duplicate and again.event_id == out.event_id
    # once the peer confirms the first event, the retry is acknowledged (no new event)
    conf.record([out.event_id])
    path, ds = spool(tmp_path, hot, mutate)
    ok = svc.store(rx(path, ds))
    assert ok.ok and ok.duplicate and ok.event_id == out.event_id
    assert len(svc.outbox.pending(10)) == 1


def test_async_store_does_not_wait(tmp_path: Path, hot: HotTier) -> None:
    svc = service(tmp_path, hot)
    assert svc.sync is None
    path, ds = spool(tmp_path, hot)
    out = svc.store(rx(path, ds))
    assert out.ok and out.event_id and out.event is not None
    assert out.event_id == out.event.event_id


def test_copier_records_an_object_already_here(tmp_path: Path) -> None:
    """A re-delivered InstanceStored whose object is already at B (a crash between the copy
    and its record) is recorded all the same: else sync mode never sees it confirmed."""
    from strata.common.settings import Settings
    from strata.processors.replicate import Copier

    c = Copier(Settings(home=tmp_path, dr_site="B", dr_peer_site="A", dr_peer_grpc="127.0.0.1:1"))
    recorded: list[str] = []
    c._record = lambda env, st: recorded.append(env.event_id)  # type: ignore[method-assign]
    src = tmp_path / "obj"
    src.write_bytes(b"bytes")
    key = "study/series/sop.sha.dcm"
    c.hot.put_file(key, src)
    env = envelope(
        pb.InstanceStored(
            sop_instance_uid="1.2.3", location=pb.StorageLocation(tier="hot", key=key)
        ),
        study_uid="1.2",
        service="ingest",
        node="a",
    )
    c.copy_batch([env])
    c.channel.close()
    assert recorded == [env.event_id] and c.result.present == 1


def test_stow_unconfirmed_is_refused_and_counted(tmp_path: Path, hot: HotTier) -> None:
    """STOW-RS goes through the same store service: in sync mode an instance the peer does
    not confirm is answered A730 in the STOW response and counted in
    strata_ingest_dr_unconfirmed_total, like a C-STORE's."""
    import asyncio

    from aiohttp.test_utils import TestClient, TestServer
    from prometheus_client import REGISTRY

    from strata.ingest.stow import Stow
    from strata.query.dicomweb import WebDeps, create_app
    from strata.query.retrieve import HotSource
    from tests.unit.test_request_limits import SlowIndex, multipart, part10

    svc, _conf = _sync_service(tmp_path, hot, timeout=0.2)
    app = create_app(WebDeps(SlowIndex(), HotSource(tmp_path)), stow=Stow(svc, hot.incoming))
    body, ctype = multipart([part10(tmp_path)])

    def count() -> float:
        return REGISTRY.get_sample_value("strata_ingest_dr_unconfirmed_total") or 0.0

    async def go() -> tuple[int, dict]:
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            r = await client.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
            return r.status, await r.json()
        finally:
            await client.close()

    before = count()
    status, answer = asyncio.run(go())
    assert status == 409, answer
    (failure,) = answer["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [statuses.OUT_OF_RESOURCES_PEER_UNCONFIRMED]
    assert count() == before + 1
    assert [p.event_id for p in svc.outbox.pending(10)]  # stored here all the same
