"""Driving DCMTK's command-line peers (storescu, findscu) as a modality/workstation would."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset

from tests.support.stack import require_tool

_RSP = re.compile(r"Received Store Response \(([^)]*)\)")


def dcmtk_env() -> dict[str, str]:
    # With Nagle on, DCMTK drops from hundreds to ~11 instances/s (measured here; see README).
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu_config(pairs: list[tuple[str, str]], path: Path) -> dict[tuple[str, str], str]:
    """A storescu config file with one profile per (SOP class, transfer syntax): each file is
    proposed in exactly the syntax it is encoded in (no conversion by the sender)."""
    ts_ids = {ts: f"TS{i}" for i, ts in enumerate(sorted({ts for _, ts in pairs}))}
    lines = ["[[TransferSyntaxes]]"]
    for ts, tid in ts_ids.items():
        lines += [f"[{tid}]", f"TransferSyntax1 = {ts}"]
    lines.append("[[PresentationContexts]]")
    ordered = sorted(set(pairs))
    for i, (cls, ts) in enumerate(ordered):
        lines += [f"[PC{i}]", f"PresentationContext1 = {cls}\\{ts_ids[ts]}"]
    lines.append("[[Profiles]]")
    for i in range(len(ordered)):
        lines += [f"[P{i}]", f"PresentationContexts = PC{i}"]
    profiles = {pair: f"P{i}" for i, pair in enumerate(ordered)}
    path.write_text("\n".join(lines) + "\n")
    return profiles


def storescu(
    port: int, ae: str, files: list[Path], extra: list[str] | None = None
) -> tuple[int, list[str], str]:
    """Send files on one association; returns (exit code, response texts, output)."""
    require_tool("storescu")
    r = subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            "MODALITY",
            "-aec",
            ae,
            *(extra or []),
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = r.stdout + r.stderr
    return r.returncode, _RSP.findall(out), out


def findscu(port: int, ae: str, level: str, keys: dict[str, str]) -> list[Dataset]:
    """Study Root C-FIND with findscu; responses parsed from the files findscu extracts."""
    require_tool("findscu")
    with tempfile.TemporaryDirectory() as out:
        args = [
            "findscu",
            "-S",
            "-aet",
            "WORKSTATION",
            "-aec",
            ae,
            "-X",
            "-od",
            out,
            "-k",
            f"QueryRetrieveLevel={level}",
        ]
        for k, v in keys.items():
            args += ["-k", f"{k}={v}" if v else k]
        args += ["127.0.0.1", str(port)]
        r = subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"findscu failed ({r.returncode}): {r.stdout}{r.stderr}")
        return [dcmread(str(p)) for p in sorted(Path(out).glob("rsp*.dcm"))]
