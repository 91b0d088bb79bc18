"""Real high-availability stacks for tests: a 3-node Kafka cluster on free loopback ports."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import pydicom

from strata.common.settings import Settings
from tests.support.dcmtk import dcmtk_env
from tests.support.stack import Stack, free_port, make_stack, require_tool


def make_cluster_stack(home: Path, kafka_nodes: int = 3, **env: str) -> Stack:
    """``make_stack`` with ``kafka_nodes`` Kafka nodes (broker+controller each), every client
    given the full bootstrap list; ``env``: further STRATA_* settings."""
    s = make_stack(home)
    s.env["STRATA_KAFKA_NODES"] = str(kafka_nodes)
    s.env["STRATA_KAFKA_BOOTSTRAP"] = ",".join(
        f"127.0.0.1:{free_port()}" for _ in range(kafka_nodes)
    )
    s.env["STRATA_KAFKA_CONTROLLER_PORTS"] = ",".join(str(free_port()) for _ in range(kafka_nodes))
    s.env.update(env)
    s.settings = Settings.from_env(s.env)
    return s


class TimedStorescu:
    """A storescu association whose store responses are read as they come, each with the
    monotonic time it arrived (to measure how long acknowledgements stall during a fault)."""

    def __init__(self, port: int, ae: str, files: list[Path], calling: str = "HACT") -> None:
        require_tool("storescu")
        self.acks: list[tuple[float, str, str]] = []  # (time, file, status)
        self.lines: list[str] = []
        self._cv = threading.Condition()
        self.proc = subprocess.Popen(
            ["storescu", "-v", "-aet", calling, "-aec", ae, "127.0.0.1", str(port)]
            + [str(f) for f in files],
            env=dcmtk_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        current = ""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            self.lines.append(line)
            m = re.search(r"Sending file: (.+)$", line)
            if m:
                current = m.group(1).strip()
            m = re.search(r"Received Store Response \(([^)]*)\)", line)
            if m:
                with self._cv:
                    self.acks.append((now, current, m.group(1)))
                    self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def wait_acks(self, n: int, timeout: float = 120.0) -> None:
        """Until this association has had ``n`` responses (or storescu ended)."""
        with self._cv:
            self._cv.wait_for(
                lambda: len(self.acks) >= n or not self._reader.is_alive(), timeout=timeout
            )

    def finish(self, timeout: float = 600.0) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=30)
        return code

    @property
    def acked(self) -> set[str]:
        return {f for _, f, st in self.acks if st == "Success"}

    @property
    def output(self) -> str:
        return "".join(self.lines)


def longest_gap(runs: list[TimedStorescu], start: float) -> float:
    """Longest time without any acknowledgement, over all associations together, from
    ``start`` (e.g. the kill) to the last acknowledgement."""
    times = sorted(t for r in runs for t, _, st in r.acks if st == "Success" and t >= start)
    if not times:
        return float("inf")
    gaps = [times[0] - start] + [b - a for a, b in zip(times, times[1:], strict=False)]
    return max(gaps)


def sops_of(files: set[str] | list[Path]) -> set[str]:
    return {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in files}
