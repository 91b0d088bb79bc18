"""The cost of DICOM TLS on ingest: C-STORE throughput of DCMTK storescu with ``+tls`` against
an archive in the hardened profile (TLS, a client certificate bound to the calling AE, AE
checks) vs plain storescu against an embedded-profile archive, in the same run.

    python -m benchmarks.tls [--count 300] [--sizes small,ct] [--assocs 1,4] [--repeat 3]

Both stacks (``strata up`` in fresh temporary homes on free ports) run side by side; for each
size x associations the rounds alternate plain, TLS, plain, TLS... so load from elsewhere on
the machine falls on both alike. Each round sends freshly generated instances (new UIDs). The
rate is instances stored successfully per second of storescu wall time (first process start to
last exit: it includes each association's set-up, and with TLS its handshake); the CPU is the
ingest node's (all its processes) per instance stored over the round, which a busy machine
disturbs less than the rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CALLING_AE,
    DEFAULT_CACHE,
    RESULTS_DIR,
    SIZES,
    Strata,
    cpu_seconds,
    generate,
    git_revision,
    log,
    machine,
    storescu,
    table,
    write_json,
)


def _hardened(parent: Path) -> tuple[Strata, list[str]]:
    from strata.common.pki import ensure_pki
    from strata.dicomnet import tls

    s = Strata(parent)
    pki = ensure_pki(s.home / "pki")  # the project CA the hardened stack uses
    cert, key = pki.client(CALLING_AE)
    aes = s.home / "aes.json"
    aes.write_text(json.dumps({"aes": {CALLING_AE: {"certificate": tls.fingerprint_of(cert)}}}))
    s.extra_env = {"STRATA_PROFILE": "hardened", "STRATA_AE_CONFIG": str(aes)}
    return s, ["+tls", str(key), str(cert), "+cf", str(pki.ca)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=300, help="instances per round (small)")
    ap.add_argument("--ct-count", type=int, default=100, help="instances per round (ct)")
    ap.add_argument("--sizes", default="small,ct")
    ap.add_argument("--assocs", default="1,4")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="strata-bench-tls-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    plain = Strata(work)
    hardened, tls_args = _hardened(work)
    rows: list[list[Any]] = []
    raw: list[dict[str, Any]] = []
    try:
        log("starting the plain (embedded) and the hardened stack")
        for st in (plain, hardened):  # no cold tier: only the ingest path is measured
            st.extra_env["STRATA_LOCAL_S3"] = "none"
            st.start()
        targets = [("plain", plain, []), ("tls", hardened, tls_args)]
        for name, st, extra in targets:  # warm-up: 30 instances each
            gen = generate(work / f"warm-{name}", SIZES["small"], 30, 30, DEFAULT_CACHE, "W")
            run = storescu(gen.files, st.aet, st.store_port, 1, work / f"warm-{name}-log", extra)
            if not run.ok:
                raise RuntimeError(f"warm-up on {name} failed: {run.problems}")
        for size_name in args.sizes.split(","):
            size = SIZES[size_name]
            count = args.count if size_name == "small" else args.ct_count
            for assocs in (int(a) for a in args.assocs.split(",")):
                rates: dict[str, list[float]] = {"plain": [], "tls": []}
                cpu: dict[str, list[float]] = {"plain": [], "tls": []}
                for rep in range(args.repeat):
                    for name, st, extra in targets:
                        tag = f"{size_name}-{assocs}-{rep}-{name}"
                        gen = generate(work / tag, size, count, 50, DEFAULT_CACHE, tag[:8])
                        logs = work / f"{tag}-log"
                        pid = st.pids()["ingest"]
                        c0 = cpu_seconds([pid])[pid]
                        run = storescu(gen.files, st.aet, st.store_port, assocs, logs, extra)
                        cpu_ms = (cpu_seconds([pid])[pid] - c0) * 1000 / max(1, run.sent_ok)
                        cpu[name].append(cpu_ms)
                        if not run.ok:
                            raise RuntimeError(f"{tag}: {run.problems}")
                        rates[name].append(run.per_second)
                        raw.append({"size": size_name, "assocs": assocs, "target": name,
                                    "rep": rep, "files": run.files, "seconds": run.seconds,
                                    "per_second": run.per_second,
                                    "ingest_cpu_ms_per_instance": cpu_ms,
                                    "mean_bytes": gen.mean_size})  # fmt: skip
                        log(f"  {tag}: {run.per_second:.1f} inst/s, ingest CPU {cpu_ms:.2f} ms/inst"
                            f" ({gen.mean_size // 1000} KB)")  # fmt: skip
                        for f in gen.files:
                            f.unlink()
                p, t = statistics.median(rates["plain"]), statistics.median(rates["tls"])
                pc, tc = statistics.median(cpu["plain"]), statistics.median(cpu["tls"])
                rows.append([size_name, assocs, f"{p:.1f}", f"{t:.1f}",
                             f"{(t / p - 1) * 100:+.1f}%", f"{pc:.2f}", f"{tc:.2f}",
                             " ".join(f"{x:.0f}" for x in rates["plain"]),
                             " ".join(f"{x:.0f}" for x in rates["tls"])])  # fmt: skip
    finally:
        plain.stop()
        hardened.stop()
    print(table(["size", "assocs", "plain inst/s", "TLS inst/s", "TLS vs plain",
                 "plain CPU ms/inst", "TLS CPU ms/inst", "plain runs", "TLS runs"],
                rows))  # fmt: skip
    out = RESULTS_DIR / f"tls-{datetime.now(UTC):%Y-%m-%dT%H%M}.json"
    write_json(out, {"machine": info, "revision": git_revision(), "args": vars(args) | {
        "workdir": str(work)}, "runs": raw})  # fmt: skip
    log(f"raw results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
