"""A real local stack for tests: `strata up` in a temporary home on free loopback ports."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from strata.common.settings import Settings
from strata.stack.procs import free_port

__all__ = ["Stack", "free_port", "make_stack", "require_tool"]


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    settings: Settings

    def cli(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(
            [sys.executable, "-m", "strata.cli.main", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            logs = ""
            for log in sorted((self.home / "logs").glob("*.log")):
                logs += f"\n--- {log.name} ---\n" + "\n".join(
                    log.read_text(errors="replace").splitlines()[-40:]
                )
            raise AssertionError(
                f"strata {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}{logs}"
            )
        return r

    def up(self) -> None:
        try:
            self.cli("up")
        except BaseException:
            self.down()  # never leave half a stack running behind a failed start
            raise

    def down(self) -> None:
        self.cli("down", check=False)


def make_stack(home: Path, local_s3: str = "none") -> Stack:
    """A stack in ``home`` on free ports. ``local_s3``: "none" (no cold tier unless the test
    adds STRATA_S3_* settings, e.g. from the ``ceph_rgw`` fixture) or "ceph" (``strata up``
    starts its own Ceph, as the embedded default does where Ceph is installed)."""
    ports = {
        "STRATA_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "STRATA_KAFKA_CONTROLLER_PORT": str(free_port()),
        "STRATA_INGEST_PORT": str(free_port()),
        "STRATA_QR_PORT": str(free_port()),
        "STRATA_INGEST_HTTP_PORT": str(free_port()),
        "STRATA_INDEX_HTTP_PORT": str(free_port()),
        "STRATA_GRPC_PORT": str(free_port()),
        "STRATA_DICOMWEB_PORT": str(free_port()),
        "STRATA_ROUTER_HTTP_PORT": str(free_port()),
        "STRATA_CEPH_MON_PORT": str(free_port()),
        "STRATA_CEPH_RGW_PORT": str(free_port()),
        "STRATA_SQL_PORT": str(free_port()),
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
    env.update(ports)
    env["STRATA_HOME"] = str(home)
    env["STRATA_NODE_NAME"] = "test-node"
    env["STRATA_LOCAL_S3"] = local_s3
    settings = Settings.from_env(env)
    return Stack(home=home, env=env, settings=settings)


def require_tool(name: str) -> str:
    """Real peers are required: a missing tool fails the test run, it never skips it."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"'{name}' is not installed; the e2e tests need DCMTK (make deps)")
    return path
