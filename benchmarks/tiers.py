"""Storage tiers: hot -> cold throughput of the lifecycle processor, and recall latency of a
study from the cold tier (Ceph RGW over HTTPS), on a fresh stack.

    python -m benchmarks.tiers [--instances 200] [--size ct] [--batch 100] [--workers 4]

What it does: ``strata up`` in a temp home (Kafka, Ceph mon/osd/radosgw with TLS, index and
ingest nodes; free ports), sends one CT study with DCMTK storescu (calling AE BENCH), waits
until it is indexed, and measures:

1. Hot study retrieve (gRPC RetrieveInstances of the whole study), as the reference.
2. Hot -> cold: the policy file is rewritten to move AE BENCH's instances now (the processor
   reloads it); from the rewrite to the moment the index shows every instance in the cold
   tier (copy, read-back SHA-256 verification, TierTransitioned, index) and to the moment
   every hot source is deleted. MB/s and instances/s over the whole study.
3. Recall from cold with an empty recall cache: each instance alone (one RetrieveInstances per
   SOP Instance UID: p50/p99 time to the last byte), then the whole study in one request,
   then the whole study again from the warm cache.

The raw numbers go to benchmarks/results/tiers-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_CACHE,
    RESULTS_DIR,
    SIZES,
    Strata,
    busy_cpu_percent,
    generate,
    git_revision,
    log,
    machine,
    percentile,
    storescu,
    table,
    write_json,
)

IDLE_POLICY = """
day_seconds = 1
interval_seconds = 0.5
batch = {batch}
workers = {workers}

[[rules]]
name = "nothing-yet"
action = "cold"
after_days = 0
calling_aes = ["NOBODY"]
"""

MOVE_POLICY = IDLE_POLICY.replace('"nothing-yet"', '"bench-cold"').replace('"NOBODY"', '"BENCH"')


def locations(port: int) -> list[list[Any]]:
    out: list[list[Any]] = []
    after = ""
    while True:
        url = f"http://127.0.0.1:{port}/storage/locations?limit=50000&after={after}"
        with urllib.request.urlopen(url, timeout=60) as r:
            page = json.loads(r.read())
        if not page:
            return out
        out += page
        after = "/".join(page[-1][:3])


def retrieve(stub: Any, study: str, sops: list[str] | None = None) -> tuple[float, int]:
    from strata.proto.strata.v1 import query_pb2 as q

    t0 = time.perf_counter()
    n = 0
    for ch in stub.RetrieveInstances(
        q.RetrieveRequest(study_instance_uid=study, sop_instance_uids=sops or []), timeout=600
    ):
        n += len(ch.data)
    return time.perf_counter() - t0, n


def clear_cache(home: Path) -> None:
    for f in (home / "recall-cache").glob("*.dcm"):
        f.unlink()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--size", choices=sorted(SIZES), default="ct")
    ap.add_argument("--batch", type=int, default=100, help="instances per lifecycle pass")
    ap.add_argument("--workers", type=int, default=4, help="parallel copies")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = ap.parse_args()

    import grpc

    from strata.proto.strata.v1 import query_pb2_grpc as q_grpc

    work = Path(tempfile.mkdtemp(prefix="strata-bench-tiers-"))
    stack = Strata(work)
    policy = stack.home / "lifecycle.toml"
    policy.write_text(IDLE_POLICY.format(batch=args.batch, workers=args.workers))
    result: dict[str, Any] = {
        "machine": machine(),
        "revision": git_revision(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    try:
        log("strata up (Kafka, Ceph RGW over HTTPS, index, ingest) ...")
        stack.start()
        env = stack.env()
        index_http = int(env["STRATA_INDEX_HTTP_PORT"])
        grpc_port = int(env["STRATA_GRPC_PORT"])
        gen = generate(
            work / "data", SIZES[args.size], args.instances, args.instances, args.cache, "tiers"
        )
        files = gen.files
        total_bytes = sum(f.stat().st_size for f in files)
        log(f"sending {len(files)} instances ({total_bytes / 1e6:.1f} MB) ...")
        run = storescu(files, stack.aet, stack.store_port, 1, work / "send")
        if not run.ok:
            raise RuntimeError(f"not every instance was stored: {run.problems[:3]}")
        deadline = time.monotonic() + 120
        while len(locations(index_http)) < len(files):
            if time.monotonic() > deadline:
                raise RuntimeError("the study was not indexed within 120 s")
            time.sleep(0.5)
        study = locations(index_http)[0][0]
        sops = [r[2] for r in locations(index_http)]
        channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
        stub = q_grpc.QueryServiceStub(channel)
        hot_study, nbytes = retrieve(stub, study)
        log(f"hot study retrieve: {hot_study:.2f} s ({nbytes / 1e6:.1f} MB)")
        result["idle_cpu_percent"] = busy_cpu_percent(3.0)

        log("policy: move AE BENCH to cold now ...")
        t0 = time.monotonic()
        policy.write_text(MOVE_POLICY.format(batch=args.batch, workers=args.workers))
        first = None
        while True:
            locs = locations(index_http)
            cold = sum(1 for r in locs if r[5] == "cold")
            if cold and first is None:
                first = time.monotonic() - t0
            if cold == len(files):
                break
            if time.monotonic() - t0 > 1800:
                raise RuntimeError(f"only {cold}/{len(files)} moved in 30 min")
            time.sleep(0.2)
        moved = time.monotonic() - t0
        hot_dir = stack.home / "hot"
        while any(hot_dir.joinpath(r[6]).exists() for r in locs):
            time.sleep(0.2)
        sources_gone = time.monotonic() - t0
        span = moved - (first or 0.0)
        log(f"moved in {moved:.1f} s (first visible after {first:.1f} s)")

        clear_cache(stack.home)
        per: list[float] = []
        for sop in sops:
            dt, _ = retrieve(stub, study, [sop])
            per.append(dt)
        clear_cache(stack.home)
        cold_study, cbytes = retrieve(stub, study)
        warm_study, _ = retrieve(stub, study)
        assert cbytes == nbytes, "recalled bytes differ in size from the hot retrieve"
        channel.close()

        result.update(
            {
                "instances": len(files),
                "bytes": total_bytes,
                "move_seconds": moved,
                "first_visible_seconds": first,
                "sources_deleted_seconds": sources_gone,
                "move_mb_per_s_end_to_end": total_bytes / 1e6 / moved,
                "move_mb_per_s": total_bytes / 1e6 / span if span else None,
                "move_instances_per_s": len(files) / span if span else None,
                "hot_study_seconds": hot_study,
                "cold_instance_seconds": per,
                "cold_study_seconds": cold_study,
                "warm_study_seconds": warm_study,
            }
        )
        RESULTS_DIR.mkdir(exist_ok=True)
        out = RESULTS_DIR / f"tiers-{time.strftime('%Y%m%d-%H%M%S')}.json"
        write_json(out, result)
        mb = total_bytes / 1e6
        print(
            table(
                ["measure", "value"],
                [
                    ["study", f"{len(files)} x {args.size} CT, {mb:.1f} MB"],
                    ["hot -> cold, policy edit to all indexed cold", f"{moved:.1f} s"],
                    [
                        "hot -> cold throughput (policy edit to all cold)",
                        f"{mb / moved:.1f} MB/s, {len(files) / moved:.0f} instances/s",
                    ],
                    [
                        "hot -> cold throughput (first to last move)",
                        f"{mb / span:.1f} MB/s, {len(files) / span:.0f} instances/s",
                    ],
                    ["hot sources deleted after", f"{sources_gone:.1f} s"],
                    ["recall 1 instance from cold, p50", f"{percentile(per, 50) * 1e3:.0f} ms"],
                    ["recall 1 instance from cold, p99", f"{percentile(per, 99) * 1e3:.0f} ms"],
                    ["whole study from cold (empty cache)", f"{cold_study:.2f} s"],
                    ["whole study from the recall cache", f"{warm_study:.2f} s"],
                    ["whole study from hot (reference)", f"{hot_study:.2f} s"],
                ],
            )
        )
        print(f"raw results: {out}")
        return 0
    finally:
        stack.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
