"""The generated protobuf code is committed; it must be what grpcio-tools makes of the .proto."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_current(tmp_path: Path) -> None:
    # compiled through the strata/ namespace links, as `make proto` does
    protos = sorted(
        f"strata/{p.relative_to(ROOT)}" for p in (ROOT / "proto").rglob("*.proto")
    )
    assert protos
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=ROOT,
        check=True,
    )
    for proto in protos:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            rel = proto.replace(".proto", suffix)
            assert (tmp_path / rel).read_text() == (ROOT / rel).read_text(), (
                f"{rel} is stale: run `make proto`"
            )
