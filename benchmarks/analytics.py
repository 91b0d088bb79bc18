"""Analytics benchmark: does the archive stay fast while analysts query it?

    python -m benchmarks.analytics [--count 1000] [--latency-count 600] [--latency-rate 20]
                                   [--analysts 4]

One fresh Strata stack (``strata up`` in a temp home on free ports), then, in the same run:
1. without analysts: ingest rate (storescu, one association, ``--count`` small instances) and
   arrival-to-queryable latency (the latency probe of benchmarks.ingest: a paced sender, each
   instance polled with C-FIND until visible);
2. the same with ``--analysts`` threads, each a clickhouse-connect client of the index node's
   SQL endpoint running every curated view (processors/index/views.py) in a loop.
Goal: latency p99 under 1 s with the analysts. Prints a table; the JSON goes to
benchmarks/results/analytics-<time>.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_CACHE,
    RESULTS_DIR,
    Strata,
    git_revision,
    log,
    machine,
    percentile,
    table,
    write_json,
)
from benchmarks.ingest import latency_run, throughput_run
from strata.processors.index.views import VIEWS


def _analyst(port: int, k: int, stop: Any, out: Any) -> None:
    """One analyst (a process of its own): the curated views in a loop until ``stop``."""
    import clickhouse_connect

    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst")
    views = sorted(VIEWS)
    i = k
    times: list[float] = []
    errors: list[str] = []
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            client.query(f"SELECT * FROM {views[i % len(views)]}")
            times.append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        i += 1
    out.put((times, errors))


class Analysts:
    """``n`` clickhouse-connect clients querying the curated views in a loop, each in a
    process of its own (not threads of this one: their decoding would hold the GIL that the
    latency probe's sender and C-FIND poller need, and slow the probe rather than the
    archive)."""

    def __init__(self, port: int, n: int) -> None:
        import multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.port, self.n = port, n
        self.stop = self.ctx.Event()
        self.out = self.ctx.Queue()
        self.procs: list[Any] = []
        self.times: list[float] = []
        self.errors: list[str] = []

    def __enter__(self) -> Analysts:
        for k in range(self.n):
            p = self.ctx.Process(target=_analyst, args=(self.port, k, self.stop, self.out))
            p.start()
            self.procs.append(p)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for _ in self.procs:
            times, errors = self.out.get(timeout=300)
            self.times += times
            self.errors += errors
        for p in self.procs:
            p.join(timeout=60)


def phase(t: Strata, args: argparse.Namespace, work: Path, analysts: int) -> dict[str, Any]:
    port = int(t.other_ports["STRATA_SQL_PORT"])
    a = Analysts(port, analysts)
    with a if analysts else _Nothing():
        thr = throughput_run(t, "small", args.count, 1, args.count, work, DEFAULT_CACHE)
        lat = latency_run(
            t, args.latency_count, args.latency_rate, 0.05, "small", work, DEFAULT_CACHE
        )
    return {
        "analysts": analysts,
        "ingest_inst_per_s": thr["inst_per_s"],
        "visible_after_s": thr["visible_after_s"],
        "latency_p50_ms": lat["visible_p50_ms"],
        "latency_p99_ms": lat["visible_p99_ms"],
        "latency_max_ms": lat["visible_max_ms"],
        "latency_measured": lat["measured"],
        "latency_failures": lat["failures"] + lat["stalls"],
        "analyst_queries": len(a.times),
        "analyst_query_p50_ms": round(percentile(a.times, 50) * 1000, 1) if a.times else None,
        "analyst_query_p99_ms": round(percentile(a.times, 99) * 1000, 1) if a.times else None,
        "analyst_errors": a.errors[:5],
        "analyst_error_count": len(a.errors),
        "foreign_cpu_pct": max(thr["foreign_cpu_pct"], lat["foreign_cpu_pct"]),
        "log_tails": lat.get("log_tails", {}),
    }


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--count", type=int, default=1000, help="instances of the ingest-rate run")
    p.add_argument("--latency-count", type=int, default=600)
    p.add_argument("--latency-rate", type=float, default=20.0, help="paced C-STOREs per second")
    p.add_argument("--analysts", type=int, default=4)
    p.add_argument(
        "--sql-connections",
        type=int,
        default=0,
        help="STRATA_SQL_CONNECTIONS of the stack (0 = the archive's default)",
    )
    p.add_argument("--sql-nice", type=int, help="STRATA_SQL_NICE of the stack")
    p.add_argument("--sql-yield-lag", type=int, help="STRATA_SQL_YIELD_LAG of the stack")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="strata-analytics-"))
    t = Strata(work)
    # Strata.env() passes these settings on to `strata up`.
    if args.sql_connections:
        t.other_ports["STRATA_SQL_CONNECTIONS"] = str(args.sql_connections)
    if args.sql_nice is not None:
        t.other_ports["STRATA_SQL_NICE"] = str(args.sql_nice)
    if args.sql_yield_lag is not None:
        t.other_ports["STRATA_SQL_YIELD_LAG"] = str(args.sql_yield_lag)
    rows = []
    try:
        log("starting a fresh Strata stack ...")
        t.start()
        for n in (0, args.analysts):
            log(f"phase with {n} analysts ...")
            rows.append(phase(t, args, work, n))
    finally:
        t.stop()
    headers = [
        "analysts",
        "ingest inst/s",
        "latency p50 ms",
        "latency p99 ms",
        "latency max ms",
        "analyst queries",
        "query p50 ms",
        "query p99 ms",
        "errors",
        "foreign cpu %",
    ]
    print(
        table(
            headers,
            [
                [
                    r["analysts"],
                    r["ingest_inst_per_s"],
                    r["latency_p50_ms"],
                    r["latency_p99_ms"],
                    r["latency_max_ms"],
                    r["analyst_queries"],
                    r["analyst_query_p50_ms"],
                    r["analyst_query_p99_ms"],
                    r["analyst_error_count"] + len(r["latency_failures"]),
                    r["foreign_cpu_pct"],
                ]
                for r in rows
            ],
        )
    )
    out = RESULTS_DIR / f"analytics-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    write_json(
        out,
        {"machine": machine(), "revision": git_revision(), "args": vars(args), "phases": rows},
    )
    log(f"results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
