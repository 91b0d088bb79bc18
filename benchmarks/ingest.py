"""Ingest benchmark: Strata vs Orthanc 1.10, same files, same client (DCMTK storescu), same
machine, same run. Then arrival-to-queryable latency under a sustained ingest rate.

    python -m benchmarks.ingest [--count N] [--sizes small,ct] [--assocs 1,4]
                                [--targets strata,orthanc] [--repeat 3]

Phases
1. Start the targets fresh: Orthanc (generated config, SQLite index, no plugins, temp storage)
   and a Strata stack (``strata up`` in a temp STRATA_HOME on free ports).
2. Warm-up: a few instances to each target (not measured).
3. Throughput: for each size, each number of parallel associations and each target, write
   ``count`` synthetic CT instances with fresh UIDs (so no run sees a duplicate), then send them
   with k storescu processes (one association each, TCP_NODELAY=1). Wall time from the first
   process start to the last exit; every exit code and every success response is checked.
   After each run we wait until the run's instances are all visible to C-FIND (Strata indexes
   asynchronously), so the next run does not compete with leftover indexing work; that
   catch-up time is reported too. Every (size, assocs, target) run is repeated ``--repeat``
   times (targets alternate going first); the table shows the median and the range.
4. Latency: a background pynetdicom sender stores instances one by one at a fixed rate; after
   each success response, the instance's SOPInstanceUID is polled with Study Root C-FIND at
   IMAGE level every ~10 ms until it matches (one query carries all pending UIDs as a list of
   UIDs, so the poller keeps up however many instances are in flight). Latency = C-STORE
   response received -> first C-FIND response that contains the instance. A DIMSE request
   that gets no response in 10 s is counted as a stall (the association is replaced; the
   instances pending meanwhile are left out of the percentiles and counted separately).
Results: a table on stdout, JSON in benchmarks/results/ingest-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_CACHE,
    RESULTS_DIR,
    SIZES,
    ForeignLoad,
    Orthanc,
    Strata,
    associate,
    busy_cpu_percent,
    c_find,
    count_instances,
    cpu_seconds,
    generate,
    git_revision,
    log,
    machine,
    percentile,
    storescu,
    table,
    write_json,
)

DEFAULT_COUNTS = {"small": 1000, "ct": 400}
WARMUP = 30
# A DIMSE exchange that gets no response within this many seconds is a stall: recorded,
# the association is replaced and the phase goes on (queries normally take ~5-30 ms).
STALL_TIMEOUT = 10.0
# A run during which other users' processes used more than this share of the machine is
# flagged and left out of the medians (on a shared machine a few idle services of other
# people already use ~10%).
DISTURBED_PCT = 20.0
IDLE_SECONDS = 5.0


def target_pids(t: Any) -> list[int]:
    if isinstance(t, Strata):
        return list(t.pids().values())
    return [t.proc.pid] if t.proc else []


def cpu_by_service(t: Any) -> dict[str, float]:
    if isinstance(t, Strata):
        pids = t.pids()
        cpu = cpu_seconds(pids.values())
        return {name: cpu.get(pid, 0.0) for name, pid in pids.items()}
    cpu = cpu_seconds(target_pids(t))
    return {"orthanc": sum(cpu.values())}


def children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_visible(t: Any, study_uids: list[str], expected: int, timeout: float) -> float | None:
    """Seconds until ``expected`` instances of the studies are visible to C-FIND (None if not
    within ``timeout``)."""
    t0 = time.perf_counter()
    seen = -1
    while time.perf_counter() - t0 < timeout:
        seen = count_instances(t.find_port, t.find_aet, study_uids)
        if seen >= expected:
            return time.perf_counter() - t0
        time.sleep(0.05)
    log(f"  {t.name}: only {seen}/{expected} instances visible after {timeout:.0f}s")
    return None


def throughput_run(
    t: Any, size: str, count: int, assocs: int, per_series: int, work: Path, cache: Path
) -> dict[str, Any]:
    label = f"{t.name[:2]}{size[:2]}{assocs}-{datetime.now().strftime('%H%M%S')}"
    data = work / "data" / f"{t.name}-{size}-{assocs}"
    gen = generate(data, SIZES[size], count, per_series, cache, label)
    load = ForeignLoad(lambda: target_pids(t))
    load.start()
    cpu0, cli0 = cpu_by_service(t), children_cpu()
    log(
        f"{t.name}: sending {count} x {size} ({gen.mean_size / 1024:.0f} KB) "
        f"over {assocs} association(s) ..."
    )
    run = storescu(gen.files, t.aet, t.store_port, assocs, work / "logs" / data.name)
    cpu1, cli1 = cpu_by_service(t), children_cpu()
    # CPU used meanwhile by other users' processes, as a share of the machine: a run with a
    # large share was disturbed and is flagged.
    foreign = load.stop()
    for p in run.problems:
        log(f"  PROBLEM: {p}")
    catch_up = wait_visible(t, gen.study_uids, run.sent_ok, timeout=300.0)
    log(
        f"  {t.name}: {run.sent_ok}/{count} in {run.seconds:.2f}s = {run.per_second:.1f} inst/s"
        f" ({run.sent_ok * gen.mean_size / run.seconds / 1e6:.1f} MB/s); all visible to C-FIND "
        + (f"after {catch_up:.2f}s" if catch_up is not None else "NOT within 300s")
        + (
            f"; DISTURBED: other processes used {foreign:.0f}% of the machine"
            if foreign > DISTURBED_PCT
            else ""
        )
    )
    shutil.rmtree(data, ignore_errors=True)
    return {
        "target": t.name,
        "size": size,
        "mean_bytes": gen.mean_size,
        "assocs": assocs,
        "count": count,
        "sent_ok": run.sent_ok,
        "seconds": round(run.seconds, 4),
        "inst_per_s": round(run.per_second, 2),
        "mb_per_s": round(run.sent_ok * gen.mean_size / run.seconds / 1e6, 2),
        "exit_codes": run.exit_codes,
        "problems": run.problems,
        "ok": run.ok,
        "visible_after_s": None if catch_up is None else round(catch_up, 3),
        "cpu_s": {k: round(cpu1.get(k, 0.0) - v, 2) for k, v in cpu0.items()},
        "client_cpu_s": round(cli1 - cli0, 2),
        "foreign_cpu_pct": round(foreign, 1),
    }


def latency_run(
    t: Any, count: int, rate: float, poll: float, size: str, work: Path, cache: Path
) -> dict[str, Any]:
    from pydicom import Dataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    data = work / "data" / f"{t.name}-latency"
    label = f"{t.name[:2]}lat-{datetime.now().strftime('%H%M%S')}"
    gen = generate(data, SIZES[size], count, count, cache, label)
    responded: dict[str, float] = {}
    order: list[str] = []
    rtts: list[float] = []
    failures: list[str] = []
    stalls: list[dict[str, Any]] = []
    affected: set[str] = set()  # pending while the poller was stalled: their latency is unknown
    lock = threading.Lock()
    done = threading.Event()
    t_start = time.perf_counter()
    store_cx = [(CTImageStorage, ExplicitVRLittleEndian)]

    def sender() -> None:
        assoc = None
        try:
            assoc = associate(t.store_port, t.aet, store_cx, STALL_TIMEOUT)
            t0 = time.perf_counter()
            for i, (f, uid) in enumerate(zip(gen.files, gen.sop_uids, strict=True)):
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                ts = time.perf_counter()
                st = assoc.send_c_store(f)
                tr = time.perf_counter()
                code = getattr(st, "Status", None)
                if code is None:  # no response within STALL_TIMEOUT: the association is gone
                    stalls.append(
                        {
                            "kind": "C-STORE",
                            "at_s": round(ts - t_start, 2),
                            "waited_s": round(tr - ts, 2),
                            "instance": i,
                        }
                    )
                    log(f"  STALL: C-STORE #{i} got no response in {tr - ts:.1f}s; re-associating")
                    assoc.abort()
                    assoc = associate(t.store_port, t.aet, store_cx, STALL_TIMEOUT)
                    continue
                if code != 0x0000:
                    failures.append(f"C-STORE {uid}: status 0x{code:04X}")
                    continue
                with lock:
                    responded[uid] = tr
                    order.append(uid)
                rtts.append(tr - ts)
        except Exception as exc:  # noqa: BLE001 - reported with the results
            failures.append(f"sender: {type(exc).__name__}: {exc}")
        finally:
            if assoc is not None and assoc.is_established:
                assoc.release()
            done.set()

    found: dict[str, float] = {}
    queries = 0
    query_times: list[float] = []
    qassoc = associate(t.find_port, t.find_aet, [(FIND,)], STALL_TIMEOUT)
    th = threading.Thread(target=sender, name="latency-sender", daemon=True)
    log(
        f"{t.name}: latency phase, {count} x {size} at {rate:g}/s, C-FIND poll every "
        f"{poll * 1000:.0f} ms ..."
    )
    load = ForeignLoad(lambda: target_pids(t))
    load.start()
    cpu0 = cpu_by_service(t)
    th.start()
    deadline: float | None = None
    try:
        while True:
            with lock:
                pending = [u for u in order if u not in found]
            if not pending:
                if done.is_set():
                    break
                time.sleep(0.001)
                continue
            if done.is_set():
                deadline = deadline or time.perf_counter() + 30.0
                if time.perf_counter() > deadline:
                    failures.append(f"{len(pending)} instances never became visible in 30 s")
                    break
            q = Dataset()
            q.QueryRetrieveLevel = "IMAGE"
            q.StudyInstanceUID = gen.study_uids[0]
            q.SeriesInstanceUID = gen.series_uids[0]
            q.SOPInstanceUID = pending[:100]
            tq = time.perf_counter()
            try:
                matches = c_find(qassoc, q)
            except RuntimeError as exc:  # no response / aborted: a stall, not a slow query
                ta = time.perf_counter()
                stalls.append(
                    {
                        "kind": "C-FIND",
                        "at_s": round(tq - t_start, 2),
                        "waited_s": round(ta - tq, 2),
                        "pending": len(pending),
                        "error": str(exc),
                    }
                )
                log(
                    f"  STALL: C-FIND got no response in {ta - tq:.1f}s ({len(pending)} "
                    "instances pending, excluded from the latency figures); re-associating"
                )
                affected.update(pending)
                qassoc.abort()
                qassoc = associate(t.find_port, t.find_aet, [(FIND,)], STALL_TIMEOUT)
                continue
            ta = time.perf_counter()
            queries += 1
            query_times.append(ta - tq)
            for ident in matches:
                uid = str(ident.get("SOPInstanceUID", ""))
                if uid in responded and uid not in found:
                    found[uid] = ta
            rest = poll - (ta - tq)
            if rest > 0:
                time.sleep(rest)
    finally:
        if qassoc.is_established:
            qassoc.release()
        th.join(timeout=60)
        shutil.rmtree(data, ignore_errors=True)
    cpu1 = cpu_by_service(t)
    foreign = load.stop()
    lat = [found[u] - responded[u] for u in order if u in found and u not in affected]
    res = {
        "target": t.name,
        "size": size,
        "rate_per_s": rate,
        "poll_interval_s": poll,
        "sent": count,
        "stored_ok": len(responded),
        "visible": sum(1 for u in order if u in found),
        "measured": len(lat),
        "failures": failures,
        "stalls": stalls,
        "store_rtt_p50_ms": round(percentile(rtts, 50) * 1000, 1),
        "store_rtt_p99_ms": round(percentile(rtts, 99) * 1000, 1),
        "visible_p50_ms": round(percentile(lat, 50) * 1000, 1),
        "visible_p99_ms": round(percentile(lat, 99) * 1000, 1),
        "visible_max_ms": round(max(lat) * 1000, 1) if lat else None,
        "find_queries": queries,
        "find_p50_ms": round(percentile(query_times, 50) * 1000, 1),
        "cpu_s": {k: round(cpu1.get(k, 0.0) - v, 2) for k, v in cpu0.items()},
        "foreign_cpu_pct": round(foreign, 1),
    }
    if (failures or stalls) and isinstance(t, Strata):
        res["log_tails"] = {svc: t.log_tail(svc, 15) for svc in ("index", "ingest")}
    for f in failures:
        log(f"  PROBLEM: {f}")
    log(
        f"  {t.name}: visible p50 {res['visible_p50_ms']} ms, p99 {res['visible_p99_ms']} ms "
        f"({len(lat)}/{count} measured, {len(stalls)} stalls); "
        f"C-STORE rtt p50 {res['store_rtt_p50_ms']} ms; C-FIND p50 {res['find_p50_ms']} ms"
        + (
            f"; DISTURBED: other processes used {foreign:.0f}% of the machine"
            if foreign > DISTURBED_PCT
            else ""
        )
    )
    return res


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median (and range) over repetitions, per (size, assocs), and the Strata/Orthanc ratio
    of the medians."""
    out = []
    keys = sorted(
        {(r["size"], r["assocs"]) for r in runs}, key=lambda k: (list(SIZES).index(k[0]), k[1])
    )
    for size, k in keys:
        row: dict[str, Any] = {"size": size, "assocs": k}
        for target in ("strata", "orthanc"):
            rs = [r for r in runs if (r["target"], r["size"], r["assocs"]) == (target, size, k)]
            if not rs:
                continue
            rates = [r["inst_per_s"] for r in rs]
            # The median over the undisturbed runs (all runs if every one was disturbed).
            quiet = [r["inst_per_s"] for r in rs if r["foreign_cpu_pct"] <= DISTURBED_PCT]
            row["mean_bytes"] = rs[0]["mean_bytes"]
            row[target] = {
                "median_inst_per_s": round(statistics.median(quiet or rates), 1),
                "median_over": "undisturbed runs" if quiet else "all runs",
                "min": min(rates),
                "max": max(rates),
                "runs": len(rates),
                "all_ok": all(r["ok"] for r in rs),
                "disturbed_runs": sum(1 for r in rs if r["foreign_cpu_pct"] > DISTURBED_PCT),
            }
            if target == "strata":
                vis = [r["visible_after_s"] for r in rs if r["visible_after_s"] is not None]
                row["strata"]["visible_after_s_max"] = max(vis) if vis else None
        if "strata" in row and "orthanc" in row and row["orthanc"]["median_inst_per_s"]:
            row["ratio"] = round(
                row["strata"]["median_inst_per_s"] / row["orthanc"]["median_inst_per_s"], 3
            )
        out.append(row)
    return out


def report(results: dict[str, Any]) -> str:
    def cell(row: dict[str, Any], target: str) -> str:
        x = row.get(target)
        if not x:
            return "-"
        spread = f" ({x['min']:.0f}-{x['max']:.0f})" if x["runs"] > 1 else ""
        flags = ("" if x["all_ok"] else " (!)") + ("*" if x["disturbed_runs"] else "")
        return f"{x['median_inst_per_s']:.1f}{spread}{flags}"

    rows = []
    for row in results.get("summary", []):
        vis = (row.get("strata") or {}).get("visible_after_s_max")
        rows.append(
            [
                f"{row['size']} ({row['mean_bytes'] / 1024:.0f} KB)",
                row["assocs"],
                cell(row, "strata"),
                cell(row, "orthanc"),
                fmt(row.get("ratio"), 2),
                fmt(vis, 2),
            ]
        )
    out = [
        table(
            [
                "size",
                "assocs",
                "strata inst/s",
                "orthanc inst/s",
                "ratio",
                "strata all queryable after (s, max)",
            ],
            rows,
        )
    ]
    reps = results["config"].get("repeat", 1)
    if reps > 1:
        out.append(
            f"(median of up to {reps} runs each, over the runs not disturbed by other "
            "processes; range of all runs in brackets; ratio of the medians)"
        )
    disturbed = any(
        (row.get(t) or {}).get("disturbed_runs")
        for row in results.get("summary", [])
        for t in ("strata", "orthanc")
    ) or any(r.get("foreign_cpu_pct", 0) > DISTURBED_PCT for r in results["latency"])
    lrows = []
    for r in results["latency"]:
        lrows.append(
            [
                r["target"],
                f"{r['size']} @ {r['rate_per_s']:g}/s",
                f"{r['measured']}/{r['sent']}",
                fmt(r["visible_p50_ms"]),
                fmt(r["visible_p99_ms"]),
                fmt(r["visible_max_ms"]),
                fmt(r["store_rtt_p50_ms"]),
                len(r["stalls"]),
            ]
        )
        if r.get("foreign_cpu_pct", 0) > DISTURBED_PCT:
            lrows[-1][0] += "*"
    if lrows:
        out.append("")
        out.append(
            table(
                [
                    "arrival -> queryable",
                    "load",
                    "n",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "C-STORE rtt p50 ms",
                    "stalls",
                ],
                lrows,
            )
        )
    if disturbed:
        out.append(
            f"* some runs were disturbed: other processes used > {DISTURBED_PCT:.0f}% "
            "of the machine meanwhile (foreign_cpu_pct in the JSON)"
        )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--count",
        type=int,
        help="instances per run for every size "
        f"(default: {', '.join(f'{k} {v}' for k, v in DEFAULT_COUNTS.items())})",
    )
    p.add_argument("--sizes", default="small,ct", help="comma list of: " + ",".join(SIZES))
    p.add_argument("--assocs", default="1,4", help="comma list of parallel association counts")
    p.add_argument("--targets", default="strata,orthanc", help="comma list: strata,orthanc")
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="runs of every (size, assocs, target); the table shows the median",
    )
    p.add_argument(
        "--per-series", type=int, default=100, help="instances per series (one study per series)"
    )
    p.add_argument(
        "--latency-count",
        type=int,
        default=250,
        help="instances in the latency phase (0 = skip it)",
    )
    p.add_argument(
        "--latency-rate",
        type=float,
        default=20.0,
        help="sustained C-STORE rate of the latency phase, per second",
    )
    p.add_argument("--latency-size", default="small", choices=sorted(SIZES))
    p.add_argument("--poll-ms", type=float, default=10.0, help="C-FIND poll interval")
    p.add_argument(
        "--cache-dir", type=Path, default=DEFAULT_CACHE, help="where pixel payloads are cached"
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="parent of the temporary data/target directories (default: $TMPDIR)",
    )
    p.add_argument("--output", type=Path, default=None, help="JSON result file")
    p.add_argument("--keep", action="store_true", help="keep the Strata home (logs) at the end")
    p.add_argument(
        "--report",
        type=Path,
        metavar="JSON",
        help="only print the tables of an earlier result file (no measurement)",
    )
    a = p.parse_args(argv)
    a.sizes = [s.strip() for s in a.sizes.split(",") if s.strip()]
    a.assocs = [int(x) for x in a.assocs.split(",") if x.strip()]
    a.targets = [t.strip() for t in a.targets.split(",") if t.strip()]
    for s in a.sizes:
        if s not in SIZES:
            p.error(f"unknown size {s!r}")
    for t in a.targets:
        if t not in ("strata", "orthanc"):
            p.error(f"unknown target {t!r}")
    if any(k < 1 for k in a.assocs):
        p.error("--assocs must be >= 1")
    if a.repeat < 1:
        p.error("--repeat must be >= 1")
    return a


def result_path(explicit: Path | None) -> Path:
    if explicit:
        return explicit
    day = datetime.now().strftime("%Y-%m-%d")
    path = RESULTS_DIR / f"ingest-{day}.json"
    n = 2
    while path.exists():
        path = RESULTS_DIR / f"ingest-{day}-{n}.json"
        n += 1
    return path


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    args = parse_args(argv)
    if args.report:
        old = json.loads(args.report.read_text())
        old["summary"] = summarize(old["throughput"])
        print(report(old))
        return 0
    if "orthanc" in args.targets and not Path("/usr/sbin/Orthanc").exists():
        print("Orthanc not found at /usr/sbin/Orthanc (apt-get install orthanc)", file=sys.stderr)
        return 2
    if shutil.which("storescu") is None:
        print("DCMTK storescu not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    counts = {s: args.count or DEFAULT_COUNTS[s] for s in args.sizes}
    busy = busy_cpu_percent()
    if busy > 15:
        log(
            f"WARNING: the machine is already {busy:.0f}% busy before the benchmark starts; "
            "the numbers will be noisy and not comparable"
        )
    started = datetime.now()
    results: dict[str, Any] = {
        "benchmark": "ingest",
        "started": started.isoformat(timespec="seconds"),
        "machine": machine(),
        "revision": git_revision(),
        "background_cpu_busy_pct_at_start": busy,
        "config": {
            "sizes": args.sizes,
            "assocs": args.assocs,
            "targets": args.targets,
            "counts": counts,
            "per_series": args.per_series,
            "client": "DCMTK storescu",
            "repeat": args.repeat,
            "latency": {
                "count": args.latency_count,
                "rate": args.latency_rate,
                "size": args.latency_size,
                "poll_ms": args.poll_ms,
            },
        },
        "throughput": [],
        "latency": [],
    }
    work = Path(tempfile.mkdtemp(prefix="strata-bench-", dir=args.work_dir))
    targets: list[Any] = []
    try:
        # Orthanc first (starts in ~1 s), then Strata (Kafka takes a while).
        for name in ("orthanc", "strata"):
            if name not in args.targets:
                continue
            t = Orthanc(work) if name == "orthanc" else Strata(work)
            targets.append(t)
            log(f"starting {name} ...")
            t0 = time.perf_counter()
            t.start()
            log(f"  {name} up in {time.perf_counter() - t0:.1f}s")
        results["startup"] = {t.name: {"store_port": t.store_port} for t in targets}
        for t in targets:
            if isinstance(t, Orthanc):
                results["machine"]["orthanc"] = t.rest("/system").get("Version", "")

        for t in targets:  # warm-up: connections, caches, first-write paths (not measured)
            data = work / "data" / f"{t.name}-warmup"
            gen = generate(data, SIZES["small"], WARMUP, WARMUP, args.cache_dir, "warm")
            run = storescu(gen.files, t.aet, t.store_port, 1, work / "logs" / data.name)
            if not run.ok:
                raise RuntimeError(f"{t.name} warm-up failed: {run.problems}")
            wait_visible(t, gen.study_uids, WARMUP, 120.0)
            shutil.rmtree(data, ignore_errors=True)
        log("warm-up done")
        # What each target burns while idle (background loops compete with ingest for CPU).
        c0 = {t.name: cpu_by_service(t) for t in targets}
        time.sleep(IDLE_SECONDS)
        c1 = {t.name: cpu_by_service(t) for t in targets}
        results["idle_cpu_pct_of_one_core"] = {
            name: {
                k: round((c1[name].get(k, 0.0) - v) / IDLE_SECONDS * 100, 1)
                for k, v in c0[name].items()
            }
            for name in c0
        }
        log(f"idle CPU (% of one core): {results['idle_cpu_pct_of_one_core']}")

        for rep in range(args.repeat):
            # Alternate which target goes first, so slow drifts of the machine's background
            # load do not always favour the same one.
            order = targets if rep % 2 == 0 else list(reversed(targets))
            for size in args.sizes:
                for k in args.assocs:
                    for t in order:
                        r = throughput_run(
                            t, size, counts[size], k, args.per_series, work, args.cache_dir
                        )
                        r["rep"] = rep
                        results["throughput"].append(r)
        results["summary"] = summarize(results["throughput"])

        if args.latency_count > 0:
            for t in targets:
                results["latency"].append(
                    latency_run(
                        t,
                        args.latency_count,
                        args.latency_rate,
                        args.poll_ms / 1000.0,
                        args.latency_size,
                        work,
                        args.cache_dir,
                    )
                )

        for t in targets:
            if isinstance(t, Orthanc):
                sent = WARMUP + sum(
                    r["sent_ok"] for r in results["throughput"] if r["target"] == t.name
                )
                sent += sum(r["stored_ok"] for r in results["latency"] if r["target"] == t.name)
                results["final_counts"] = {"orthanc": t.instance_count(), "orthanc_sent": sent}
    except Exception as exc:  # noqa: BLE001 - stop the targets, keep what was measured
        import traceback

        results["error"] = f"{type(exc).__name__}: {exc}"
        log(f"ERROR: {results['error']}\n{traceback.format_exc()}")
    finally:
        for t in reversed(targets):
            log(f"stopping {t.name} ...")
            try:
                t.stop(keep=args.keep) if isinstance(t, Strata) else t.stop()
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                log(f"  stopping {t.name} failed: {exc}")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    results.setdefault("summary", summarize(results["throughput"]))
    results["finished"] = datetime.now().isoformat(timespec="seconds")
    results["machine"]["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    text = report(results)
    print(
        f"Ingest benchmark {results['started']} on {results['machine']['nproc']} cores, "
        f"{results['machine']['cpu_model']}, {results['machine']['memory_gib']} GiB; "
        f"revision {results['revision']}; CPU {busy:.0f}% busy before start"
    )
    print(text)
    out = result_path(args.output)
    write_json(out, results)
    log(f"results written to {out}")
    bad = [r for r in results["throughput"] if not r["ok"]]
    bad += [r for r in results["latency"] if r["failures"] or r["stalls"]]
    return 1 if bad or "error" in results else 0


if __name__ == "__main__":
    sys.exit(main())
