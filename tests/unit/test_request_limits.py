"""Limits on what one request can ask of the read side and STOW-RS, with fake index/store
behind the real C-FIND SCP, aiohttp app and gRPC server: search time limits (and their
answers), stream caps, chunk and frame-list bounds, STOW part limits and UID checks."""

from __future__ import annotations

import asyncio
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydicom import Dataset
from pynetdicom import AE
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from strata.common.dicom import is_valid_uid as is_uid
from strata.common.errors import DeadlineExceeded, Invalid
from strata.dicomnet.acceptor import Config
from strata.ingest.stow import Stow
from strata.processors.index.port import Located, Page
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from strata.query import grpc_service
from strata.query.dicomweb import WebDeps, create_app, parse_frames
from strata.query.grpc_service import Deps, QueryService
from strata.query.retrieve import HotSource
from strata.query.scp import QueryServer, Services
from tests.support.stack import free_port

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


class SlowIndex:
    """A fake of the index port (processors/index/port.py) whose every search outlives the
    time limit it is given: it raises what the index adapter raises for ClickHouse's
    TIMEOUT_EXCEEDED, and records the limits (seconds) it got."""

    database = "strata"

    def __init__(self) -> None:
        self.timeouts: list[float] = []
        self.slow = True

    def _searched(self, timeout: float) -> None:
        self.timeouts.append(timeout)
        if self.slow and timeout > 0:
            raise DeadlineExceeded("index query failed: Code: 159. (TIMEOUT_EXCEEDED)")

    def search(
        self, q: Any, timeout: float = 0.0, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        self._searched(timeout)
        return []

    def search_page(self, q: Any, order: str, uid: str, **kw: Any) -> Page:
        self._searched(kw.get("timeout", 0.0))
        return Page([], 0)

    def study_headers(self, study_uid: str, timeout: float = 0.0) -> list[str]:
        self._searched(timeout)
        return []

    def instance_headers(
        self, study_uid: str, series_uid: str = "", sop_uid: str = "", timeout: float = 0.0
    ) -> list[tuple[str, str, str, str]]:
        self._searched(timeout)
        return []

    def study_history(self, study_uid: str, timeout: float = 0.0) -> list[tuple[Any, ...]]:
        self._searched(timeout)
        return []

    def locate(self, keys: dict[str, str], limit: int) -> list[Located]:
        return []

    def held_syntaxes(self) -> dict[str, frozenset[str]]:
        return {}


# ---------------------------------------------------------------------------- frame lists


@pytest.mark.parametrize(
    "text", ["", "0", "-1", "+1", " 1", "1 ", "1_0", "1,,2", "a", "1.0", "0x1", "٣", "12345678901"]
)
def test_frame_list_junk_is_invalid(text: str) -> None:
    with pytest.raises(Invalid):
        parse_frames(text, 100)


def test_frame_list_is_bounded() -> None:
    assert parse_frames("1,3,2", 3) == [1, 3, 2]
    with pytest.raises(Invalid, match="at most 3"):
        parse_frames("1,2,3,4", 3)


def test_uid_syntax() -> None:
    assert is_uid("1.2.840.10008.1.2.1")
    for bad in ["", "1.2.", '1.2"],"x":["', "1.2\n", "1..2", "1.2 ", "1." + "2" * 64, "a.b"]:
        assert not is_uid(bad), bad


# ---------------------------------------------------------------------------- C-FIND


def test_cfind_past_the_time_limit_answers_a700() -> None:
    index = SlowIndex()
    port = free_port()
    server = QueryServer(
        Config(16384, 10.0, 10.0),
        Services(index, HotSource(Path("/nonexistent")), {}, "STRATA_QR", 100, 5.0, 2.5),
        ("127.0.0.1", port),
    )
    try:
        ae = AE(ae_title="FINDER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = ae.associate("127.0.0.1", port, ae_title="STRATA_QR")
        assert assoc.is_established
        try:
            ident = Dataset()
            ident.QueryRetrieveLevel = "STUDY"
            ident.StudyInstanceUID = ""
            ((status, _),) = list(
                assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind)
            )
            assert status.Status == 0xA700
            assert "time limit" in status.ErrorComment
        finally:
            assoc.release()
    finally:
        server.shutdown()
    assert index.timeouts[-1] == 2.5


# ---------------------------------------------------------------------------- DICOMweb


class FakeStore:
    def __init__(self) -> None:
        self.stored: list[str] = []

    def store(self, rx: Any) -> Any:
        self.stored.append(rx.sop_instance_uid)

        class Out:
            ok = True
            status = 0
            comment = ""

        return Out()


def web_client(tmp_path: Path, index: Any = None, **kw: Any) -> tuple[web.Application, FakeStore]:
    incoming = tmp_path / "incoming"
    incoming.mkdir(exist_ok=True)
    store = FakeStore()
    stow_kw = {k: kw.pop(k) for k in ("max_part_bytes", "max_parts") if k in kw}
    deps = WebDeps(index or SlowIndex(), HotSource(tmp_path), **kw)
    return create_app(deps, stow=Stow(store, incoming, **stow_kw)), store  # type: ignore[arg-type]


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    body += f"--{boundary}--\r\n".encode()
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def part10(tmp_path: Path, ts: str | None = None) -> bytes:
    """A CT object as Part 10 bytes; ``ts``: the meta header's TransferSyntaxUID replaced
    by these characters (pydicom refuses to write a non-UID one)."""
    ds = pydicom.dcmread(str(CT))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    p = tmp_path / f"{uuid.uuid4().hex}.dcm"
    ds.save_as(str(p), enforce_file_format=True)
    data = p.read_bytes()
    return data if ts is None else with_transfer_syntax(data, ts)


def with_transfer_syntax(data: bytes, ts: str) -> bytes:
    old = b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\0"
    at = data.index(old)
    value = ts.encode() + (b"\0" if len(ts) % 2 else b"")
    new = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value
    # (0002,0000) group length: right after 'DICM' at 128
    (group,) = struct.unpack("<L", data[140:144])
    head = data[:140] + struct.pack("<L", group + len(new) - len(old)) + data[144:at]
    return head + new + data[at + len(old) :]


def run(coro_fn: Any, app: web.Application) -> Any:
    async def main() -> Any:
        client = TestClient(TestServer(app))
        await client.start_server()
        try:
            return await coro_fn(client)
        finally:
            await client.close()

    return asyncio.run(main())


def test_qido_and_metadata_past_the_time_limit_answer_503_json(tmp_path: Path) -> None:
    index = SlowIndex()
    client, _ = web_client(tmp_path, index, query_timeout=2.5)

    async def go(c: TestClient) -> list[tuple[int, Any, str]]:
        out = []
        for url in ("/dicom-web/studies?PatientID=X*", "/dicom-web/studies/1.2.3/metadata"):
            r = await c.get(url)
            out.append((r.status, await r.json(), r.headers.get("Retry-After", "")))
        return out

    for status, body, retry in run(go, client):
        assert status == 503 and "time limit (2.5 s)" in body["error"] and retry
    assert index.timeouts == [2.5, 2.5]


def test_stow_too_many_parts_is_413_and_keeps_what_was_stored(tmp_path: Path) -> None:
    client, store = web_client(tmp_path, max_parts=2)
    body, ctype = multipart([part10(tmp_path) for _ in range(4)])

    async def go(c: TestClient) -> tuple[int, Any]:
        r = await c.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
        return r.status, await r.json()

    status, answer = run(go, client)
    assert status == 413
    assert len(answer["00081199"]["Value"]) == 2 == len(store.stored)
    (failure,) = answer["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [0xA700]
    assert not list((tmp_path / "incoming").iterdir())


def test_stow_oversize_part_is_413_and_leaves_no_temp_file(tmp_path: Path) -> None:
    client, store = web_client(tmp_path, max_part_bytes=100_000)
    body, ctype = multipart([b"\0" * 300_000])

    async def go(c: TestClient) -> tuple[int, Any]:
        r = await c.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
        return r.status, await r.json()

    status, answer = run(go, client)
    assert status == 413 and "larger than 100000 bytes" in str(answer)
    assert store.stored == []
    assert not list((tmp_path / "incoming").iterdir())


def test_stow_refuses_a_transfer_syntax_that_is_not_a_uid(tmp_path: Path) -> None:
    client, store = web_client(tmp_path)
    evil = '1.2.840.10008.1.2.1"],"vr":"UI"},"x":{"Value":["'
    body, ctype = multipart([part10(tmp_path, evil), part10(tmp_path, "1.2.840\r\nX-Evil: 1")])

    async def go(c: TestClient) -> tuple[int, Any]:
        r = await c.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
        return r.status, await r.json()

    status, answer = run(go, client)
    assert status == 409 and store.stored == []
    for item in answer["00081198"]["Value"]:
        assert item["00081197"]["Value"] == [0xC000]
        assert "TransferSyntaxUID" in item["00741048"]["Value"][0]
    assert not list((tmp_path / "incoming").iterdir())


# ---------------------------------------------------------------------------- gRPC


@pytest.fixture
def grpc_stub(request: pytest.FixtureRequest) -> Iterator[tuple[q_grpc.QueryServiceStub, Any]]:
    index = SlowIndex()
    kw = getattr(request, "param", {})
    deps = Deps(index, HotSource(Path("/nonexistent")), "127.0.0.1:1", [], **kw)
    port = free_port()
    server = grpc_service.serve(deps, "127.0.0.1", port, workers=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield q_grpc.QueryServiceStub(channel), index
    finally:
        channel.close()
        server.stop(None)


@pytest.mark.parametrize("grpc_stub", [{"query_timeout": 2.5}], indirect=True)
def test_grpc_search_gets_min_of_deadline_and_server_limit(grpc_stub: Any) -> None:
    stub, index = grpc_stub
    with pytest.raises(grpc.RpcError) as info:
        stub.SearchStudies(q.SearchRequest())  # no deadline: the server's limit
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert index.timeouts[-1] == 2.5
    with pytest.raises(grpc.RpcError) as info:
        stub.SearchStudies(q.SearchRequest(), timeout=60)  # a later deadline: still 2.5 s
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert index.timeouts[-1] == 2.5
    with pytest.raises(grpc.RpcError):
        stub.SearchStudies(q.SearchRequest(), timeout=1.0)  # an earlier one: the caller's
    limit = index.timeouts[-1]
    assert 0 < limit < 2.0  # the caller's second (grpc may report it a few ms long)


@pytest.mark.parametrize(
    "grpc_stub", [{"max_watch_streams": 2, "max_retrieve_streams": 1}], indirect=True
)
def test_streams_beyond_their_cap_are_refused_and_searches_keep_a_worker(
    grpc_stub: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, index = grpc_stub
    index.slow = False
    release = threading.Event()
    inside = threading.Semaphore(0)

    def held(self: QueryService, request: Any, context: Any) -> Iterator[Any]:
        inside.release()
        release.wait(60)
        return
        yield

    monkeypatch.setattr(QueryService, "_watch", held)
    monkeypatch.setattr(QueryService, "_retrieve", held)
    streams = [stub.WatchEvents(q.WatchRequest()) for _ in range(2)]
    streams.append(stub.RetrieveInstances(q.RetrieveRequest(study_instance_uid="1.2")))
    pending = [threading.Thread(target=list, args=(s,), daemon=True) for s in streams]
    for t in pending:
        t.start()
    for _ in pending:
        assert inside.acquire(timeout=30)  # every capped stream holds its worker
    try:
        for call in (
            lambda: list(stub.WatchEvents(q.WatchRequest(), timeout=30)),
            lambda: list(stub.RetrieveInstances(q.RetrieveRequest(), timeout=30)),
        ):
            with pytest.raises(grpc.RpcError) as info:
                call()
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # the unary worker is still free: a search is answered (here: an empty page)
        assert stub.SearchStudies(q.SearchRequest(), timeout=30).total == 0
    finally:
        release.set()


@pytest.mark.parametrize("grpc_stub", [{"max_chunk_bytes": 1024}], indirect=True)
def test_retrieve_chunks_are_bounded_and_uid_lists_too(
    grpc_stub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, index = grpc_stub
    data = CT.read_bytes()
    (tmp_path / "obj.dcm").write_bytes(data)
    row = ("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    row += ("hot", "obj.dcm", len(data), "a" * 64)

    monkeypatch.setattr(index, "locate", lambda keys, limit: [Located(*row)])
    monkeypatch.setattr(HotSource, "local_path", lambda self, loc: tmp_path / loc.storage_key)
    chunks = list(
        stub.RetrieveInstances(
            q.RetrieveRequest(study_instance_uid="1.2", chunk_size=1 << 30), timeout=30
        )
    )
    assert max(len(c.data) for c in chunks) == 1024
    assert b"".join(c.data for c in chunks) == data
    with pytest.raises(grpc.RpcError) as info:
        list(
            stub.RetrieveInstances(
                q.RetrieveRequest(
                    study_instance_uid="1.2", sop_instance_uids=[f"1.{i}" for i in range(10_001)]
                ),
                timeout=30,
            )
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_web_app_still_builds_without_stow(tmp_path: Path) -> None:
    deps = WebDeps(SlowIndex(), HotSource(tmp_path))
    assert isinstance(create_app(deps), web.Application)


@pytest.mark.parametrize(
    "ctype, body",
    [
        ('multipart/related; type="application/dicom"', b"--x\r\n\r\nabc\r\n--x--\r\n"),
        (
            'multipart/related; type="application/dicom"; boundary=x',
            b"--x\r\nX-A: " + b"a" * 200_000 + b"\r\n\r\nabc\r\n--x--\r\n",
        ),
        ('multipart/related; type="application/dicom"; boundary=x', b"--x\r\n\r\nabc"),
        ('multipart/related; type="application/dicom"; boundary=x', b"garbage"),
    ],
    ids=["no-boundary", "overlong-part-header", "unterminated", "garbage"],
)
def test_malformed_stow_bodies_are_400_not_500(tmp_path: Path, ctype: str, body: bytes) -> None:
    app, store = web_client(tmp_path)

    async def go(c: TestClient) -> int:
        r = await c.post("/dicom-web/studies", data=body, headers={"Content-Type": ctype})
        return r.status

    assert run(go, app) == 400
    assert store.stored == [] and not list((tmp_path / "incoming").iterdir())
