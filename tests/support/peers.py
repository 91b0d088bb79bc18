"""Real DICOM destinations for routing tests: DCMTK storescp and Orthanc (Debian binaries)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from pydicom import dcmread

from tests.support.dcmtk import dcmtk_env
from tests.support.stack import free_port, require_tool


def _echo(port: int, ae: str) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    a = AE(ae_title="PROBE")
    a.add_requested_context(Verification)
    a.acse_timeout = a.network_timeout = 3
    assoc = a.associate("127.0.0.1", port, ae_title=ae)
    if not assoc.is_established:
        return False
    assoc.release()
    return True


class StoreSCP:
    """DCMTK storescp writing every received object to ``out`` (accepting every syntax)."""

    def __init__(self, root: Path, ae: str = "STORESCP", port: int | None = None) -> None:
        require_tool("storescp")
        self.ae = ae
        self.port = port or free_port()
        self.out = root / f"{ae.lower()}-received"
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = root / f"{ae.lower()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["storescp", "-v", "--accept-all", "-aet", self.ae, "-od", str(self.out),
                 "--filename-extension", ".dcm", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env(), start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _echo(self.port, self.ae):
                return
            time.sleep(0.1)
        raise AssertionError(f"storescp did not start:\n{self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def received(self) -> dict[str, Path]:
        """SOP Instance UID -> file, for every object received so far."""
        out = {}
        for f in self.out.glob("*.dcm"):
            try:
                out[str(dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = f
            except Exception:  # noqa: BLE001 - a file still being written
                continue
        return out


class OrthancPeer:
    """Orthanc 1.10 (Debian) in a temp dir, loopback only; ``extra`` overrides its config."""

    def __init__(
        self, root: Path, extra: dict[str, Any] | None = None, ae: str = "ORTHANC"
    ) -> None:
        if not Path("/usr/sbin/Orthanc").exists():
            raise AssertionError("Orthanc is not installed (apt-get install orthanc)")
        self.ae = ae
        self.dir = root / f"orthanc-{ae.lower()}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        self.extra = extra or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        cfg = {
            "Name": self.ae,
            "StorageDirectory": str(self.dir / "storage"),
            "IndexDirectory": str(self.dir / "index"),
            "Plugins": [],
            "DicomAet": self.ae,
            "DicomPort": self.port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": True,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            **self.extra,
        }
        (self.dir / "orthanc.json").write_text(json.dumps(cfg))
        with open(self.dir / "orthanc.log", "ab") as log:
            self.proc = subprocess.Popen(
                ["/usr/sbin/Orthanc", str(self.dir / "orthanc.json")],
                stdout=log, stderr=subprocess.STDOUT, cwd=self.dir,
                env={**os.environ, "TCP_NODELAY": "1"}, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is None and _echo(self.port, self.ae):
                return
            time.sleep(0.2)
        raise AssertionError(f"Orthanc did not start:\n{self.log_tail()}")

    def rest(self, path: str) -> Any:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())

    def sop_uids(self) -> set[str]:
        return {
            self.rest(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
            for i in self.rest("/instances")
        }

    def file_of(self, sop_uid: str) -> bytes:
        [orthanc_id] = [
            r["ID"] for r in self.rest_post("/tools/lookup", sop_uid) if r["Type"] == "Instance"
        ]
        url = f"http://127.0.0.1:{self.http_port}/instances/{orthanc_id}/file"
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.read()

    def rest_post(self, path: str, body: str) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body.encode(), method="POST"
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def log_tail(self, n: int = 30) -> str:
        p = self.dir / "orthanc.log"
        return "\n".join(p.read_text(errors="replace").splitlines()[-n:]) if p.exists() else ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
