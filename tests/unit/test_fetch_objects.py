"""FetchObjects (query/grpc_service.py): objects by storage key from the hot tier, what a
second site's copier asks for. A real gRPC server over a real hot tier in a temp directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from strata.archive.hot import HotTier
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from strata.query import grpc_service
from strata.query.grpc_service import Deps
from strata.query.retrieve import HotSource
from tests.support.stack import free_port


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[q_grpc.QueryServiceStub, HotTier]]:
    hot = HotTier(tmp_path / "hot")
    deps = Deps(
        object(),  # type: ignore[arg-type]  # no index: FetchObjects never asks it
        HotSource(hot.root),
        "127.0.0.1:1",
        [],
        max_chunk_bytes=1000,
        hot_root=hot.root,
    )
    port = free_port()
    server = grpc_service.serve(deps, "127.0.0.1", port, workers=1)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield q_grpc.QueryServiceStub(channel), hot
    finally:
        channel.close()
        server.stop(None)


def _put(hot: HotTier, key: str, data: bytes, tmp: Path) -> None:
    src = tmp / "src"
    src.write_bytes(data)
    hot.put_file(key, src)
    src.unlink(missing_ok=True)


def _fetch(stub: Any, keys: list[str]) -> tuple[dict[str, bytes], list[str], list[Any]]:
    got: dict[str, bytearray] = {}
    missing: list[str] = []
    chunks = list(
        stub.FetchObjects(
            q.FetchObjectsRequest(
                objects=[
                    q.ObjectRef(key=k, sop_instance_uid=f"1.2.{i}") for i, k in enumerate(keys)
                ]
            ),
            timeout=10,
        )
    )
    for c in chunks:
        if c.missing:
            missing.append(c.key)
        else:
            assert c.offset == len(got.setdefault(c.key, bytearray()))
            got[c.key].extend(c.data)
    return {k: bytes(v) for k, v in got.items()}, missing, chunks


def test_objects_come_back_exact_in_bounded_chunks_and_a_missing_one_is_said(
    served: Any, tmp_path: Path
) -> None:
    stub, hot = served
    a, b, empty = b"A" * 2500, b"B" * 10, b""
    _put(hot, "studies/1/a.dcm", a, tmp_path)
    _put(hot, "studies/1/b.dcm", b, tmp_path)
    _put(hot, "studies/1/e.dcm", empty, tmp_path)
    keys = ["studies/1/a.dcm", "studies/1/gone.dcm", "studies/1/b.dcm", "studies/1/e.dcm"]
    got, missing, chunks = _fetch(stub, keys)
    assert got == {"studies/1/a.dcm": a, "studies/1/b.dcm": b, "studies/1/e.dcm": empty}
    assert missing == ["studies/1/gone.dcm"]
    assert max(len(c.data) for c in chunks) <= 1000  # the server's chunk bound
    firsts = {c.key: c.size_bytes for c in chunks if c.offset == 0 and not c.missing}
    assert firsts == {"studies/1/a.dcm": 2500, "studies/1/b.dcm": 10, "studies/1/e.dcm": 0}
    assert [c.key for c in chunks if c.last] == keys  # one last chunk per object, in order
    assert {c.sop_instance_uid for c in chunks if c.key == "studies/1/b.dcm"} == {"1.2.2"}


@pytest.mark.parametrize("key", ["../outside.dcm", "/etc/passwd", "studies/../../x", ""])
def test_a_key_outside_the_tier_fails_the_request_before_any_byte(
    served: Any, tmp_path: Path, key: str
) -> None:
    stub, hot = served
    _put(hot, "studies/1/a.dcm", b"secret", tmp_path)
    (tmp_path / "outside.dcm").write_bytes(b"not the archive's")
    with pytest.raises(grpc.RpcError) as info:
        _fetch(stub, ["studies/1/a.dcm", key])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "unsafe storage key" in info.value.details()


def test_a_request_is_bounded(served: Any) -> None:
    stub, _hot = served
    keys = [f"studies/{i}.dcm" for i in range(grpc_service.MAX_FETCH_OBJECTS + 1)]
    with pytest.raises(grpc.RpcError) as info:
        _fetch(stub, keys)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
