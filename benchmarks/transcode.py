"""C-GET with on-the-fly transcoding: a 300-slice JPEG 2000 lossless CT (512x512, generated)
retrieved by DCMTK getscu proposing uncompressed syntaxes only, from Strata and from Orthanc
1.10 (with the orthanc-gdcm plugin, which decodes JPEG 2000; ``DicomAlwaysAllowGet``), in the
same run, alternating which goes first.

    python -m benchmarks.transcode [--count 300] [--runs 3] [--workers 0]

Both hold the same files (stored as received, JPEG 2000 lossless). Each run is one getscu
association (``--ignore``: received, not written, so the client's disk is out of the measure);
the time is getscu's wall time, from its start to its exit. Every run must report all objects
completed. Progress on stderr, the table on stdout, JSON in
benchmarks/results/transcode-<date>.json. Prerequisites: DCMTK (getscu, storescu), Orthanc
1.10 and its GDCM plugin (``apt-get install dcmtk orthanc orthanc-gdcm``).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_CACHE,
    HOST,
    ORTHANC_BIN,
    RESULTS_DIR,
    SIZES,
    ForeignLoad,
    Orthanc,
    Strata,
    busy_cpu_percent,
    count_instances,
    cpu_seconds,
    generate,
    git_revision,
    log,
    machine,
    table,
    write_json,
)

GDCM_PLUGIN = "/usr/share/orthanc/plugins/libOrthancGdcm.so"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
GOAL = 1.0  # Orthanc's time / Strata's time
_COMPLETED = re.compile(r"Number of Completed Suboperations\s*:\s*(\d+)")


def prerequisites() -> list[str]:
    missing = []
    for tool in ("getscu", "storescu"):
        if not any((Path(d) / tool).exists() for d in os.environ.get("PATH", "").split(os.pathsep)):
            missing.append(f"{tool} (apt-get install dcmtk)")
    if not Path(ORTHANC_BIN).exists():
        missing.append(f"{ORTHANC_BIN} (apt-get install orthanc)")
    if not Path(GDCM_PLUGIN).exists():
        missing.append(f"{GDCM_PLUGIN} (apt-get install orthanc-gdcm)")
    return missing


class GdcmOrthanc(Orthanc):
    """benchmarks.common's Orthanc with the GDCM plugin (JPEG 2000 transcoding) and C-GET
    allowed from any AE."""

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["Plugins"] = [GDCM_PLUGIN]
        cfg["DicomAlwaysAllowGet"] = True
        return cfg


class TranscodeStrata(Strata):
    """benchmarks.common's Strata with a set number of transcoding workers (0: default)."""

    def __init__(self, parent: Path, workers: int) -> None:
        super().__init__(parent)
        self.workers = workers

    def env(self) -> dict[str, str]:
        env = super().env()
        if self.workers:
            env["STRATA_TRANSCODE_WORKERS"] = str(self.workers)
        return env


def _compress(path: str) -> None:
    from pydicom import dcmread

    ds = dcmread(path)
    ds.compress(J2K_LOSSLESS, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)


def j2k_study(work: Path, count: int, cache: Path) -> tuple[list[Path], str]:
    """``count`` generated 512x512 CT slices, one study, compressed to JPEG 2000 lossless."""
    from pydicom import dcmread

    gen = generate(work / "study", SIZES["ct"], count, count, cache, "transcode")
    log(f"compressing {count} slices to JPEG 2000 lossless")
    with ProcessPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(_compress, [str(f) for f in gen.files], chunksize=8))
    study = str(dcmread(str(gen.files[0]), stop_before_pixels=True).StudyInstanceUID)
    return gen.files, study


def store(files: list[Path], aec: str, port: int, log_file: Path) -> None:
    """One storescu association proposing JPEG 2000 lossless: stored as compressed."""
    with open(log_file, "wb") as out:
        r = subprocess.run(
            ["storescu", "-v", "-xv", "-aet", "BENCH", "-aec", aec, HOST, str(port),
             *map(str, files)],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "TCP_NODELAY": "1"},
        )  # fmt: skip
    if r.returncode != 0:
        raise RuntimeError(f"storescu to {aec} failed ({r.returncode}), see {log_file}")


def get(aec: str, port: int, study: str, log_file: Path) -> tuple[float, int]:
    """One C-GET of the study with getscu proposing uncompressed syntaxes (its default);
    returns (seconds, completed sub-operations)."""
    argv = ["getscu", "-v", "--ignore", "-S", "-aet", "GETSCU", "-aec", aec,
            "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
            HOST, str(port)]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TCP_NODELAY": "1"})
    seconds = time.perf_counter() - t0
    text = r.stdout + r.stderr
    log_file.write_text(text)
    done = _COMPLETED.findall(text)
    if r.returncode != 0 or "Release Failed" in text:
        raise RuntimeError(f"getscu from {aec} failed ({r.returncode}), see {log_file}")
    return seconds, int(done[-1]) if done else 0


def own_cpu(pid: int) -> float:
    """user+system CPU seconds of ``pid`` itself (all its threads, not its children)."""
    with open(f"/proc/{pid}/stat") as f:
        st = f.read().rsplit(")", 1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf("SC_CLK_TCK")


def wait_visible(n: int, port: int, aec: str, study: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if count_instances(port, aec, [study]) >= n:
            return
        time.sleep(0.5)
    raise RuntimeError(f"{aec}: the study is not visible ({n} instances) after {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=300, help="slices (512x512, J2K lossless)")
    ap.add_argument("--runs", type=int, default=3, help="C-GETs of each peer")
    ap.add_argument(
        "--workers", type=int, default=0, help="STRATA_TRANSCODE_WORKERS (0: one per CPU)"
    )
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args(argv)
    missing = prerequisites()
    if missing:
        print("missing prerequisites:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 2
    load_before = busy_cpu_percent()
    log(f"machine busy before the run: {load_before}% of all cores")
    with tempfile.TemporaryDirectory(prefix="bench-transcode-") as tmp:
        work = Path(tmp)
        files, study = j2k_study(work, args.count, args.cache)
        size = sum(f.stat().st_size for f in files)
        log(f"{len(files)} J2K objects, {size / 1e6:.1f} MB")
        strata, orthanc = TranscodeStrata(work, args.workers), GdcmOrthanc(work)
        times: dict[str, list[float]] = {"strata": [], "orthanc": []}
        cpu: dict[str, list[float]] = {"strata": [], "orthanc": []}
        main_cpu: dict[str, list[float]] = {"strata": [], "orthanc": []}  # without children
        foreign: dict[str, list[float]] = {"strata": [], "orthanc": []}
        try:
            log("starting Strata and Orthanc")
            strata.start()
            orthanc.start()
            store(files, strata.aet, strata.store_port, work / "store-strata.log")
            store(files, orthanc.aet, orthanc.store_port, work / "store-orthanc.log")
            wait_visible(len(files), strata.find_port, strata.find_aet, study)
            wait_visible(len(files), orthanc.find_port, orthanc.find_aet, study)
            peers = {
                "strata": (strata.find_aet, strata.find_port),
                "orthanc": (orthanc.aet, orthanc.dicom_port),
            }

            def pids(name: str) -> list[int]:
                if name == "strata":  # the index node serves C-GET; its pool workers are children
                    return [strata.pids()["index"]]
                return [orthanc.proc.pid] if orthanc.proc else []

            for run in range(args.runs):
                order = ["strata", "orthanc"] if run % 2 == 0 else ["orthanc", "strata"]
                for name in order:
                    aec, port = peers[name]
                    load = ForeignLoad(lambda: [*strata.pids().values(), *pids("orthanc")])
                    load.start()
                    cpu0 = sum(cpu_seconds(pids(name)).values())
                    main0 = own_cpu(pids(name)[0])
                    seconds, done = get(aec, port, study, work / f"get-{name}-{run}.log")
                    cpu[name].append(sum(cpu_seconds(pids(name)).values()) - cpu0)
                    main_cpu[name].append(own_cpu(pids(name)[0]) - main0)
                    foreign[name].append(load.stop())
                    if done != len(files):
                        raise RuntimeError(f"{name}: {done}/{len(files)} completed")
                    times[name].append(seconds)
                    log(
                        f"run {run + 1}: {name} {seconds:.2f} s ({len(files) / seconds:.0f}/s), "
                        f"{cpu[name][-1]:.1f} CPU s ({main_cpu[name][-1]:.1f} in the main "
                        f"process), other users {foreign[name][-1]}% of CPU"
                    )
        finally:
            orthanc.stop()
            strata.stop()
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["orthanc"] / med["strata"]
    rows = [
        [
            name,
            len(files),
            f"{med[name]:.2f}",
            f"{min(times[name]):.2f}",
            f"{len(files) / med[name]:.0f}",
            f"{size / 1e6 / med[name]:.1f}",
            f"{1000 * statistics.median(cpu[name]) / len(files):.0f}",
            f"{statistics.median(foreign[name]):.0f}%",
        ]
        for name in ("strata", "orthanc")
    ]
    print(
        f"C-GET of a {len(files)}-slice JPEG 2000 lossless CT (512x512) to an "
        "uncompressed-only getscu"
    )
    print(
        table(
            [
                "peer",
                "objects",
                "median s",
                "best s",
                "objects/s",
                "stored MB/s",
                "CPU ms/object",
                "other users' CPU",
            ],
            rows,
        )
    )
    print(f"ratio (Orthanc time / Strata time, medians): {ratio:.2f} (goal >= {GOAL})")
    result = {
        "benchmark": "transcode",
        "date": datetime.now().isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": machine(),
        "machine_busy_before_percent": load_before,
        "objects": len(files),
        "stored_bytes": size,
        "runs": args.runs,
        "strata_transcode_workers": args.workers or os.cpu_count(),
        "seconds": times,
        "cpu_seconds": cpu,
        "cpu_seconds_main_process": main_cpu,
        "other_users_cpu_percent": foreign,
        "median_seconds": med,
        "ratio": ratio,
        "goal": GOAL,
        "met": ratio >= GOAL,
    }
    out = RESULTS_DIR / f"transcode-{datetime.now():%Y%m%d-%H%M%S}.json"
    write_json(out, result)
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
