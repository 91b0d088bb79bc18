"""The object copier (processors/replicate.py) against a real gRPC peer served in this process
(no Kafka: a fake producer captures the record of each copy and confirms it at flush): objects
are fetched by storage key in a few requests run by a bounded pool, each one verified against
its recorded SHA-256 before it is stored, and recorded only once stored; a copy whose bytes do
not match is never stored nor recorded; a peer without FetchObjects, or whose hot tier lacks
an object, is asked through RetrieveInstances."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from strata.common.events import decode, envelope
from strata.common.settings import Settings
from strata.processors import replicate
from strata.processors.replicate import Copier
from strata.proto.strata.v1 import events_pb2 as pb
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from tests.support.stack import free_port


class OldPeer(q_grpc.QueryServiceServicer):
    """The primary's RetrieveInstances only (an older version: FetchObjects answers
    UNIMPLEMENTED): ``objects`` sop -> bytes; each answer takes ``delay`` seconds (an object
    the primary streams from its disk); counts concurrent requests."""

    def __init__(self, objects: dict[str, bytes], delay: float) -> None:
        self.objects = objects
        self.delay = delay
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.requests = 0
        self.fetches = 0
        self.hot: dict[str, bytes] = {}  # key -> bytes: what FetchObjects serves

    def _begin(self) -> None:
        with self.lock:
            self.now += 1
            self.requests += 1
            self.most = max(self.most, self.now)

    def RetrieveInstances(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        self._begin()
        try:
            time.sleep(self.delay)  # the peer's work, not a synchronization
            for sop in request.sop_instance_uids:
                data = self.objects.get(sop)
                if data is None:
                    context.abort(grpc.StatusCode.NOT_FOUND, "no such instance")
                yield q.InstanceChunk(sop_instance_uid=sop, offset=0, data=data)
        finally:
            with self.lock:
                self.now -= 1


class Peer(OldPeer):
    """And FetchObjects, from ``hot`` (key -> bytes), each request taking ``delay``."""

    def FetchObjects(self, request: Any, context: Any) -> Iterator[Any]:  # noqa: N802
        self._begin()
        with self.lock:
            self.fetches += 1
        try:
            time.sleep(self.delay)  # the peer's work, not a synchronization
            for ref in request.objects:
                data = self.hot.get(ref.key)
                if data is None:
                    yield q.ObjectChunk(key=ref.key, missing=True, last=True)
                    continue
                for i in range(0, len(data), 4096):  # several chunks per object
                    part = data[i : i + 4096]
                    yield q.ObjectChunk(key=ref.key, offset=i, data=part)
        finally:
            with self.lock:
                self.now -= 1


def _serve(servicer: OldPeer) -> Iterator[tuple[Any, str]]:
    server = grpc.server(futures.ThreadPoolExecutor(16))
    q_grpc.add_QueryServiceServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        server.stop(0)


OBJECTS = {f"1.2.3.{i}": f"object {i} ".encode() * 1000 for i in range(12)}


@pytest.fixture
def peer() -> Iterator[tuple[Peer, str]]:
    """A current peer whose hot tier holds every object."""
    servicer = Peer(dict(OBJECTS), delay=0.2)
    servicer.hot = {_stored(s, d).instance_stored.location.key: d for s, d in OBJECTS.items()}
    yield from _serve(servicer)


@pytest.fixture
def old_peer() -> Iterator[tuple[OldPeer, str]]:
    yield from _serve(OldPeer(dict(OBJECTS), delay=0.2))


def _stored(sop: str, data: bytes) -> pb.Envelope:
    sha = hashlib.sha256(data).hexdigest()
    st = pb.InstanceStored(
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        sop_instance_uid=sop,
        sha256=sha,
        size_bytes=len(data),
        location=pb.StorageLocation(tier="hot", key=f"studies/1.2/1.2.3/{sop}.{sha}.dcm"),
    )
    return envelope(st, study_uid="1.2", service="ingest", node="a")


class FakeProducer:
    """Kafka's producer as the copier uses it: records are confirmed (or refused, while
    ``refuse`` is set) at flush; ``sent`` lists the source event id of each confirmed one."""

    def __init__(self, copier: Copier) -> None:
        self.copier = copier
        self.lock = threading.Lock()
        self.pending: list[tuple[str, Any]] = []
        self.sent: list[str] = []
        self.refuse = False

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        rep = decode(value).instance_replicated
        assert self.copier.hot.exists(rep.location.key), "recorded before it was stored"
        with self.lock:
            self.pending.append((rep.source_event_id, on_delivery))

    def flush(self, timeout: float) -> int:
        with self.lock:
            pending, self.pending = self.pending, []
        for source, cb in pending:
            if self.refuse:
                cb("NOT_ENOUGH_REPLICAS", None)
            else:
                self.sent.append(source)
                cb(None, None)
        return 0


def _copier(tmp_path: Path, target: str, workers: int) -> tuple[Copier, list[str]]:
    c = Copier(
        Settings(
            home=tmp_path,
            dr_site="B",
            dr_peer_site="A",
            dr_peer_grpc=target,
            dr_copy_workers=workers,
        )
    )
    c._producer = FakeProducer(c)
    return c, c._producer.sent


def _run(c: Copier, envs: list[pb.Envelope]) -> None:
    """One batch, then the copier's pool and channel closed."""
    try:
        c.copy_batch(envs)
    finally:
        c.pool.shutdown()
        c.channel.close()


def test_copies_in_parallel_within_the_pool_size(tmp_path: Path, peer: tuple[Peer, str]) -> None:
    servicer, target = peer
    envs = [_stored(sop, data) for sop, data in servicer.objects.items()]
    c, recorded = _copier(tmp_path, target, workers=4)
    _run(c, envs)
    assert sorted(recorded) == sorted(e.event_id for e in envs)  # each recorded once
    for e in envs:
        st = e.instance_stored
        with c.hot.open(st.location.key) as f:
            assert f.read() == servicer.objects[st.sop_instance_uid]
    assert c.result.copied == len(envs)
    assert 1 < servicer.most <= 4, servicer.most  # parallel, and bounded by the pool
    # by key, one request per group of the batch: no per-object request through the index
    assert servicer.fetches == servicer.requests == 4
    assert not list(c.hot.incoming.iterdir())  # no spool file left behind


def test_a_large_batch_takes_few_requests(tmp_path: Path, peer: tuple[Peer, str]) -> None:
    servicer, target = peer
    objects = {f"1.2.4.{i}": f"small {i}".encode() for i in range(120)}
    envs = [_stored(sop, data) for sop, data in objects.items()]
    servicer.hot = {e.instance_stored.location.key: objects[e.instance_stored.sop_instance_uid]
                    for e in envs}  # fmt: skip
    servicer.delay = 0.0
    c, recorded = _copier(tmp_path, target, workers=2)
    _run(c, envs)
    assert sorted(recorded) == sorted(e.event_id for e in envs)
    assert servicer.fetches == 3  # groups of at most replicate.FETCH_GROUP (50)


def test_an_older_peer_is_asked_through_its_index(
    tmp_path: Path, old_peer: tuple[OldPeer, str]
) -> None:
    servicer, target = old_peer
    envs = [_stored(sop, data) for sop, data in servicer.objects.items()]
    c, recorded = _copier(tmp_path, target, workers=4)
    _run(c, envs)
    assert sorted(recorded) == sorted(e.event_id for e in envs)
    assert c.result.copied == len(envs) and servicer.requests == len(envs)
    assert not list(c.hot.incoming.iterdir())


def test_an_object_gone_from_the_peers_hot_tier_is_fetched_through_its_index(
    tmp_path: Path, peer: tuple[Peer, str]
) -> None:
    """Moved to the peer's cold tier since its event: FetchObjects says missing, the copier
    asks RetrieveInstances for that one (the peer's index finds it in any tier)."""
    servicer, target = peer
    envs = [_stored(sop, servicer.objects[sop]) for sop in ("1.2.3.0", "1.2.3.1")]
    del servicer.hot[envs[1].instance_stored.location.key]
    c, recorded = _copier(tmp_path, target, workers=1)
    _run(c, envs)
    assert sorted(recorded) == sorted(e.event_id for e in envs)
    with c.hot.open(envs[1].instance_stored.location.key) as f:
        assert f.read() == servicer.objects["1.2.3.1"]
    assert servicer.fetches == 1 and servicer.requests == 2  # one by key, one by UID


def test_a_record_kafka_does_not_confirm_fails_the_batch_and_is_made_again(
    tmp_path: Path, peer: tuple[Peer, str]
) -> None:
    from strata.common.errors import Unavailable

    servicer, target = peer
    envs = [_stored(sop, servicer.objects[sop]) for sop in ("1.2.3.0", "1.2.3.1")]
    c, recorded = _copier(tmp_path, target, workers=2)
    try:
        c._producer.refuse = True
        with pytest.raises(Unavailable, match="not confirmed"):
            c.copy_batch(envs)
        assert recorded == []
        c._producer.refuse = False
        c.copy_batch(envs)  # the retry: the objects are here, their records are made now
    finally:
        c.pool.shutdown()
        c.channel.close()
    assert sorted(recorded) == sorted(e.event_id for e in envs)
    assert c.result.copied == 2 and c.result.present == 2


def test_a_copy_that_does_not_match_is_neither_stored_nor_recorded(
    tmp_path: Path, peer: tuple[Peer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    servicer, target = peer
    good = _stored("1.2.3.0", servicer.objects["1.2.3.0"])
    bad = _stored("1.2.3.1", b"what ingest stored at A")  # the peer now sends other bytes
    monkeypatch.setattr(replicate, "NOT_FOUND_PATIENCE", 0.5)  # give up soon
    c, recorded = _copier(tmp_path, target, workers=2)
    try:
        c.copy_batch([good, bad])
    finally:
        c.pool.shutdown()
        c.channel.close()
    assert recorded == [good.event_id]
    assert not c.hot.exists(bad.instance_stored.location.key)
    assert c.result.copied == 1 and c.result.skipped == 1
    assert not list(c.hot.incoming.iterdir())


def test_the_batch_raises_unavailable_when_the_peer_is_down(tmp_path: Path) -> None:
    """Unreachable peer: the batch fails (the caller retries it, holding the offsets)."""
    from strata.common.errors import Unavailable

    env = _stored("1.2.3.0", b"x")
    c, recorded = _copier(tmp_path, f"127.0.0.1:{free_port()}", workers=2)
    try:
        with pytest.raises(Unavailable):
            c.copy_batch([env])
    finally:
        c.pool.shutdown()
        c.channel.close()
    assert recorded == []


def test_a_retried_batch_does_not_record_again_until_committed(
    tmp_path: Path, peer: tuple[Peer, str]
) -> None:
    """The batch is retried after a failure (the peer gone mid-batch): what it already
    recorded is not recorded twice; once its offsets are committed, a redelivery of an object
    already here is recorded (a crash between the copy and its record)."""
    servicer, target = peer
    envs = [_stored(sop, servicer.objects[sop]) for sop in ("1.2.3.0", "1.2.3.1")]
    c, recorded = _copier(tmp_path, target, workers=2)
    try:
        c.copy_batch(envs)
        c.copy_batch(envs)  # the retry
        assert sorted(recorded) == sorted(e.event_id for e in envs)
        c.committed()
        c.copy_batch(envs[:1])  # redelivered after the commit: here already, recorded
    finally:
        c.pool.shutdown()
        c.channel.close()
    assert recorded.count(envs[0].event_id) == 2 and c.result.present == 1
