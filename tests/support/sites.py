"""Two sites on one machine (geo-redundancy, docs/dr.md): site A and site B, each a whole
stack (Kafka, index, ingest, hot tier) in its own STRATA_HOME on its own free ports, each
configured with the other as its peer."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from strata.common.settings import Settings
from strata.stack.procs import free_port
from tests.support.stack import Stack, make_stack


@dataclass
class Sites:
    a: Stack
    b: Stack
    acked: list[str] = field(default_factory=list)  # files the drill's sender got Success for

    def up(self) -> None:
        self.a.up()
        try:
            self.b.up()
        except BaseException:
            self.a.down()
            raise

    def down(self) -> None:
        for s in (self.b, self.a):
            s.cli("dr", "unfollow", check=False)
            s.down()


def _peer(stack: Stack, name: str, peer: Stack, peer_name: str) -> None:
    stack.env.update(
        {
            "STRATA_DR_SITE": name,
            "STRATA_DR_PEER_SITE": peer_name,
            "STRATA_DR_PEER_BOOTSTRAP": peer.env["STRATA_KAFKA_BOOTSTRAP"],
            "STRATA_DR_PEER_GRPC": f"127.0.0.1:{peer.env['STRATA_GRPC_PORT']}",
            "STRATA_DR_MIRROR_PORT": str(free_port()),
            "STRATA_DR_FENCE_CHECK_SECONDS": "1",
            "STRATA_NODE_NAME": f"site-{name.lower()}",
            "STRATA_INGEST_WORKERS": "1",
            "STRATA_KAFKA_HEAP": "384m",
        }
    )
    stack.settings = Settings.from_env(stack.env)


def make_sites(root: Path) -> Sites:
    """Sites A and B under ``root`` (not started)."""
    a, b = make_stack(root / "site-a"), make_stack(root / "site-b")
    _peer(a, "A", b, "B")
    _peer(b, "B", a, "A")
    return Sites(a, b)


def kill_site(stack: Stack) -> list[str]:
    """kill -9 every process of a site (each runs in its own process group)."""
    killed = []
    run = stack.settings.run_dir
    for pid_file in sorted(run.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            os.killpg(pid, signal.SIGKILL)
            killed.append(pid_file.stem)
        except (ValueError, ProcessLookupError, PermissionError):
            pass
    time.sleep(0.2)
    return killed


__all__ = ["Sites", "kill_site", "make_sites"]
