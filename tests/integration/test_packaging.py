"""Installed, the archive is one `strata` namespace: the wheel puts no generic top-level name
(`proto`, `common`, `query`, ...) into site-packages, and it installs beside proto-plus (whose
top-level module is `proto`, as Google's client libraries pull it in) with both importable."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _wheel(out: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(ROOT)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = out.glob("strata_pacs-*.whl")
    return wheel


def test_the_wheel_installs_one_strata_namespace(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert top == {"strata", next(t for t in top if t.endswith(".dist-info"))}, top
    for part in ("cli", "common", "dicomnet", "ingest", "processors", "query", "archive", "stack"):
        assert f"strata/{part}/__init__.py" in names, part
    assert "strata/proto/strata/v1/events_pb2.py" in names
    assert "strata/stack/kafka/pom.xml" in names and "strata/stack/mirror.pom.xml" in names
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "strata = strata.cli.main:main" in zipfile.ZipFile(wheel).read(entry).decode()


def test_installed_beside_proto_plus_both_import(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path / "dist")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = str(venv / "bin" / "python")
    # the archive's own dependencies are not needed to import its generated protobuf modules
    subprocess.run(
        [py, "-m", "pip", "install", "-q", "proto-plus", "protobuf", "--no-deps", str(wheel)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    probe = (
        "import proto, proto.message; "
        "from strata.proto.strata.v1 import events_pb2; "
        "print(proto.__file__); print(events_pb2.Envelope.DESCRIPTOR.full_name)"
    )
    out = subprocess.run([py, "-c", probe], cwd=tmp_path, check=True, capture_output=True,
                         text=True).stdout.split()  # fmt: skip
    assert out[0].endswith("site-packages/proto/__init__.py"), out  # proto-plus, not ours
    assert out[1] == "strata.v1.Envelope"
