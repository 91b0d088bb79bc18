"""High-availability benchmark (issue #18): what the 3-node Kafka cluster costs, and what each
kill -9 costs the peers.

    python -m benchmarks.ha [--count 400] [--assocs 4] [--repeat 3] [--latency-count 150]
                            [--latency-rate 20] [--kill-count 200] [--report JSON]

Phases (one invocation, same machine, targets one after the other so they never compete)
1. Cost of replication. For each target, a fresh stack (``strata up`` in a temp STRATA_HOME on
   free ports), a warm-up, then the ingest throughput run and the arrival-to-queryable latency
   run of benchmarks/ingest.py (same files generator, same DCMTK storescu client, same C-FIND
   poller; the throughput run ``--repeat`` times, the median shown), then the log alone: a
   burst of ``--produce-count`` 2 KB events and 200 single writes with the relay's producer
   settings (acks=all, idempotent), where replication and the per-message flush cost (the
   modalities' acknowledgements wait for the fsync'd outbox, not for Kafka). Targets:
     single           the embedded single Kafka broker (flush per message)
     kafka3           three KRaft nodes, RF 3, min.insync.replicas 2, flush per message
     kafka3-noflush   the same without the per-message flush (docs/ha.md: only for brokers
                      in separate power domains)
2. Kills, on the HA layout (three Kafka nodes, two index replicas and two ingest nodes behind
   HAProxy), each during load through the balancer:
     broker       kill -9 of the broker leading the most study partitions during 4 storescu
                  associations: longest gap between acknowledgements (all associations
                  together) after the kill; how long until every acknowledged instance was
                  queryable, after the run ended
     ingest node  kill -9 of one ingest node (its workers too) during 4 associations: the
                  associations on it are cut (client-visible, unavoidable); longest gap between
                  acknowledgements; time until a new association through the balancer stores
                  successfully
     index        kill -9 of one index replica during two findscu loops through the balancer:
                  failed searches before and after HAProxy marked it down, time until it did,
                  longest gap between successful searches
   The killed process is started again (``strata up``) before the next kill.
Results: tables on stdout, JSON in benchmarks/results/ha-<date>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmarks.common import (
    CALLING_AE,
    DEFAULT_CACHE,
    HOST,
    RESULTS_DIR,
    Strata,
    busy_cpu_percent,
    count_instances,
    free_port,
    generate,
    git_revision,
    log,
    machine,
    percentile,
    storescu,
    table,
    write_json,
    write_rounds,
)
from benchmarks.common import SIZES as _SIZES
from benchmarks.ingest import latency_run, throughput_run

TARGETS = {
    "single": {"kafka_nodes": 1, "flush": True},
    "kafka3": {"kafka_nodes": 3, "flush": True},
    "kafka3-noflush": {"kafka_nodes": 3, "flush": False},
}


class HAStrata(Strata):
    """A fresh stack with ``kafka_nodes`` Kafka nodes and, optionally, index replicas and
    ingest nodes behind HAProxy."""

    def __init__(
        self,
        parent: Path,
        name: str,
        kafka_nodes: int = 1,
        flush: bool = True,
        replicas: int = 1,
        ingest_nodes: int = 1,
    ) -> None:
        super().__init__(parent)
        self.name = name
        self.kafka_ports = [self.kafka_port] + [free_port() for _ in range(kafka_nodes - 1)]
        self.ctl_ports = [self.controller_port] + [free_port() for _ in range(kafka_nodes - 1)]
        self.extra = {
            "STRATA_KAFKA_NODES": str(kafka_nodes),
            "STRATA_KAFKA_BOOTSTRAP": ",".join(f"{HOST}:{p}" for p in self.kafka_ports),
            "STRATA_KAFKA_CONTROLLER_PORTS": ",".join(map(str, self.ctl_ports)),
            "STRATA_KAFKA_FLUSH_EACH_MESSAGE": str(flush).lower(),
            "STRATA_INDEX_REPLICAS": str(replicas),
            "STRATA_INGEST_NODES": str(ingest_nodes),
            "STRATA_HAPROXY_CHECK_MS": "500",
        }
        if replicas > 1 or ingest_nodes > 1:
            self.extra["STRATA_INGEST_WORKERS"] = "1"  # two nodes on two cores

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}

    def pids(self) -> dict[str, int]:
        out = {}
        for f in sorted((self.home / "run").glob("*.pid")):
            try:
                out[f.stem] = int(f.read_text().strip())
            except ValueError:
                continue
        return out

    def settings(self) -> Any:
        from strata.common.settings import Settings

        return Settings.from_env(self.env())

    def up(self) -> None:
        r = subprocess.run(
            self.cli() + ["up"], env=self.env(), capture_output=True, text=True, timeout=300
        )
        if r.returncode != 0:
            raise RuntimeError(f"strata up failed:\n{r.stdout}{r.stderr}")


# ----------------------------------------------------------------------------- phase 1
def cost_phase(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    out = []
    for name in args.targets:
        spec = TARGETS[name]
        t = HAStrata(work, name, spec["kafka_nodes"], spec["flush"])
        log(f"starting {name} ({spec['kafka_nodes']} Kafka node(s), flush {spec['flush']}) ...")
        t0 = time.perf_counter()
        try:
            t.start()
            up_s = time.perf_counter() - t0
            log(f"  {name} up in {up_s:.1f}s")
            warm = generate(
                work / "data" / f"{name}-warm", _SIZES["small"], 20, 20, args.cache, f"w{name[:6]}"
            )
            storescu(warm.files, t.aet, t.store_port, 1, work / "logs" / f"{name}-warm")
            runs = [
                throughput_run(
                    t, "small", args.count, args.assocs, args.per_series, work, args.cache
                )
                for _ in range(args.repeat)
            ]
            # the median run (by rate) stands for the target; all runs are kept
            tp = sorted(runs, key=lambda r: r["inst_per_s"])[len(runs) // 2]
            log(f"  {name}: the log alone (producer acks=all) ...")
            produce = log_produce(t, args.produce_count, 200)
            log(f"  {name}: {produce}")
            lat = (
                latency_run(
                    t, args.latency_count, args.latency_rate, 0.01, "small", work, args.cache
                )
                if args.latency_count
                else None
            )
            out.append(
                {
                    "target": name,
                    **spec,
                    "up_s": round(up_s, 1),
                    "throughput": tp,
                    "throughput_runs": runs,
                    "log_produce": produce,
                    "latency": lat,
                }
            )
        finally:
            t.stop(keep=args.keep)
    return out


def log_produce(t: HAStrata, n_burst: int, n_single: int) -> dict[str, Any]:
    """The log alone, with the relay's producer settings (acks=all, idempotent, lz4, linger
    2 ms): ``n_burst`` 2 KB events as fast as the producer goes (events/s, delivery latency),
    then ``n_single`` events one at a time (the round trip of one acknowledged write)."""
    from confluent_kafka.admin import NewTopic

    from strata.common import kafka

    s = t.settings()
    topic = "strata.bench-produce"
    admin = kafka.admin(s, "bench")
    cfg = {"min.insync.replicas": str(min(2, s.topic_replicas))}
    for fut in admin.create_topics([NewTopic(topic, 3, s.topic_replicas, config=cfg)]).values():
        fut.result(30)
    # The settings this benchmark has always measured (a subset of the relay's profile).
    p = kafka.producer(s, "durable", "bench", {"linger.ms": 2, "compression.type": "lz4"})
    r = write_rounds(p, topic, n_burst, n_single)
    burst_lat, burst_s, single = r.burst, r.burst_seconds, r.single
    return {
        "events": n_burst,
        "events_per_s": round(len(burst_lat) / burst_s, 1),
        "delivery_p50_ms": round(percentile(burst_lat, 50) * 1000, 2),
        "delivery_p99_ms": round(percentile(burst_lat, 99) * 1000, 2),
        "single_p50_ms": round(percentile(single, 50) * 1000, 2),
        "single_p99_ms": round(percentile(single, 99) * 1000, 2),
    }


# ----------------------------------------------------------------------------- phase 2
class Sender:
    """One storescu association whose responses are timestamped as they arrive."""

    def __init__(self, port: int, files: list[Path]) -> None:
        self.acks: list[float] = []
        self.cv = threading.Condition()
        self.proc = subprocess.Popen(
            ["storescu", "-v", "-aet", CALLING_AE, "-aec", "STRATA", HOST, str(port)]
            + [str(f) for f in files],
            env={**os.environ, "TCP_NODELAY": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if "Received Store Response (Success)" in line:
                with self.cv:
                    self.acks.append(time.monotonic())
                    self.cv.notify_all()
        with self.cv:
            self.cv.notify_all()

    def wait_acks(self, n: int) -> None:
        with self.cv:
            self.cv.wait_for(lambda: len(self.acks) >= n or not self.reader.is_alive(), 120)

    def finish(self) -> int:
        code = self.proc.wait(timeout=600)
        self.reader.join(timeout=30)
        return code


def longest_gap(times: list[float], start: float) -> float | None:
    ts = sorted(t for t in times if t >= start)
    if not ts:
        return None
    return max([ts[0] - start] + [b - a for a, b in zip(ts, ts[1:], strict=False)])


def lb_state(t: HAStrata, backend: str, server: str) -> str:
    from strata.stack import haproxy

    return haproxy.servers(t.settings()).get((backend, server), "")


def wait_lb(t: HAStrata, backend: str, server: str, up: bool, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = lb_state(t, backend, server)
        if st and st.startswith("UP") == up:
            return time.monotonic()
        time.sleep(0.05)
    raise RuntimeError(f"HAProxy never saw {backend}/{server} {'UP' if up else 'DOWN'}")


def wait_all_visible(t: HAStrata, study_uids: list[str], n: int, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while count_instances(t.find_port, t.find_aet, study_uids) < n:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"not all {n} instances queryable within {timeout:.0f}s")
        time.sleep(0.1)
    return time.monotonic()


def killpg(t: HAStrata, name: str) -> None:
    os.killpg(t.pids()[name], signal.SIGKILL)


def kill_broker(t: HAStrata, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    from strata.stack import cluster

    gen = generate(
        work / "data" / "kill-broker", _SIZES["small"], args.kill_count, 1000, args.cache, "kb"
    )
    st = cluster.cluster_state(t.settings())
    assert st is not None
    leads: dict[int, int] = {}
    for p in st.partitions:
        leads[p.leader] = leads.get(p.leader, 0) + 1
    victim = max(leads, key=lambda n: leads[n])
    senders = [Sender(t.store_port, gen.files[i::4]) for i in range(4)]
    senders[0].wait_acks(args.kill_count // 20)
    killed = time.monotonic()
    killpg(t, f"kafka-{victim}")
    codes = [s.finish() for s in senders]
    ended = time.monotonic()
    acks = [a for s in senders for a in s.acks]
    visible = wait_all_visible(t, gen.study_uids, len(acks))
    log(f"  broker kafka-{victim} killed: {len(acks)}/{len(gen.files)} acked, exit {codes}")
    t.up()
    return {
        "kill": f"Kafka broker (kafka-{victim}, leader of {leads[victim]} partitions)",
        "load": f"4 storescu associations, {len(gen.files)} instances",
        "acked": len(acks),
        "sent": len(gen.files),
        "client_failures": sum(1 for c in codes if c != 0),
        "longest_ack_gap_s": round(longest_gap(acks, killed) or 0, 3),
        "all_queryable_after_run_s": round(visible - ended, 2),
    }


def kill_ingest(t: HAStrata, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    gen = generate(
        work / "data" / "kill-ingest", _SIZES["small"], args.kill_count, 1000, args.cache, "ki"
    )
    senders = [Sender(t.store_port, gen.files[i::4]) for i in range(4)]
    for s in senders:
        s.wait_acks(args.kill_count // 40)
    killed = time.monotonic()
    killpg(t, "ingest-1")
    # a modality opening a new association through the balancer, once a second at most
    probe = generate(work / "data" / "kill-ingest-probe", _SIZES["small"], 1, 1, args.cache, "kp")
    attempts = 0
    while True:
        attempts += 1
        r = subprocess.run(
            ["storescu", "-aet", CALLING_AE, "-aec", "STRATA", HOST, str(t.store_port)]
            + [str(probe.files[0])],
            env={**os.environ, "TCP_NODELAY": "1"},
            capture_output=True,
            timeout=60,
        )
        if r.returncode == 0:
            break
        time.sleep(0.05)
    new_assoc = time.monotonic()
    noticed = wait_lb(t, "ingest_dicom", "ingest-1", up=False)
    codes = [s.finish() for s in senders]
    acks = [a for s in senders for a in s.acks]
    log(f"  ingest-1 killed: {len(acks)}/{len(gen.files)} acked, exit {codes}")
    t.up()
    return {
        "kill": "ingest node (ingest-1 and its workers)",
        "load": f"4 storescu associations, {len(gen.files)} instances",
        "acked": len(acks),
        "sent": len(gen.files),
        "client_failures": sum(1 for c in codes if c != 0),
        "longest_ack_gap_s": round(longest_gap(acks, killed) or 0, 3),
        "new_association_ok_after_s": round(new_assoc - killed, 3),
        "failed_new_associations": attempts - 1,
        "noticed_by_haproxy_s": round(noticed - killed, 3),
    }


def kill_index(t: HAStrata, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    gen = generate(work / "data" / "kill-index", _SIZES["small"], 20, 20, args.cache, "kx")
    storescu(gen.files, t.aet, t.store_port, 1, work / "logs" / "kill-index")
    wait_all_visible(t, gen.study_uids, 20)
    results: list[tuple[float, float, bool]] = []
    stop = threading.Event()
    cv = threading.Condition()

    def load() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            r = subprocess.run(
                ["findscu", "-S", "-aet", CALLING_AE, "-aec", t.find_aet]
                + ["-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={gen.study_uids[0]}"]
                + ["-k", "SOPInstanceUID", HOST, str(t.find_port)],
                env={**os.environ, "TCP_NODELAY": "1"},
                capture_output=True,
                text=True,
                timeout=60,
            )
            ok = r.returncode == 0 and (r.stdout + r.stderr).count("(0008,0018)") == 20
            with cv:
                results.append((t0, time.monotonic(), ok))
                cv.notify_all()

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    for th in threads:
        th.start()
    try:
        with cv:
            cv.wait_for(lambda: len(results) >= 20, 120)
        killed = time.monotonic()
        killpg(t, "index-1")
        noticed = wait_lb(t, "qr", "index-1", up=False)
        n0 = len(results)
        with cv:
            cv.wait_for(lambda: len(results) >= n0 + 40, 300)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=90)
    before = [ok for s, _, ok in results if killed <= s < noticed]
    after = [ok for s, _, ok in results if s >= noticed]
    ok_times = [e for _, e, ok in results if ok]
    log(f"  index-1 killed: {before.count(False)} + {after.count(False)} failed searches")
    t.up()
    restarted = time.monotonic()
    back = wait_lb(t, "qr", "index-1", up=True)
    return {
        "kill": "index replica (index-1)",
        "load": "2 findscu loops (IMAGE level, 20 matches)",
        "searches": len(results),
        "failed_before_noticed": before.count(False),
        "failed_after_noticed": after.count(False),
        "noticed_by_haproxy_s": round(noticed - killed, 3),
        "longest_search_gap_s": round(longest_gap(ok_times, killed) or 0, 3),
        "restarted_and_up_in_balancer_s": round(back - restarted, 2),
    }


def kill_phase(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    t = HAStrata(work, "ha", kafka_nodes=3, flush=True, replicas=2, ingest_nodes=2)
    log("starting the HA layout (3 Kafka nodes, 2 index replicas, 2 ingest nodes, HAProxy) ...")
    out = []
    try:
        t.start()
        for fn in (kill_broker, kill_ingest, kill_index):
            log(f"kill phase: {fn.__name__} ...")
            out.append(fn(t, work, args))
    finally:
        t.stop(keep=args.keep)
    return out


# ----------------------------------------------------------------------------- report
def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def report(res: dict[str, Any]) -> str:
    rows = []
    for r in res["cost"]:
        tp, lat = r["throughput"], r["latency"] or {}
        rates = [x["inst_per_s"] for x in r.get("throughput_runs", [tp])]
        spread = f" ({min(rates):.0f}-{max(rates):.0f})" if len(rates) > 1 else ""
        rows.append(
            [
                r["target"],
                r["kafka_nodes"],
                "yes" if r["flush"] else "no",
                f"{tp['inst_per_s']:.1f}{spread}" + ("" if tp["ok"] else " (!)"),
                fmt(tp["visible_after_s"]),
                fmt(lat.get("visible_p50_ms"), 1),
                fmt(lat.get("visible_p99_ms"), 1),
                fmt(lat.get("visible_max_ms"), 1),
                fmt(lat.get("store_rtt_p50_ms"), 1),
                f"{max(x['foreign_cpu_pct'] for x in r.get('throughput_runs', [tp])):.0f}%",
            ]
        )
    cfg = res["config"]
    out = [
        table(
            [
                "target",
                "kafka nodes",
                "flush/msg",
                f"inst/s ({cfg['assocs']} assocs, median (range))",
                "all queryable after (s)",
                "queryable p50 ms",
                "p99 ms",
                "max ms",
                "C-STORE rtt p50 ms",
                "other load (max)",
            ],
            rows,
        ),
        f"(throughput: {cfg['count']} small instances, {cfg.get('repeat', 1)} runs; "
        f"latency: {cfg['latency_count']} at "
        f"{cfg['latency_rate']:g}/s, arrival = C-STORE response, queryable = first C-FIND match)",
        "",
    ]
    prows = [
        [
            r["target"],
            fmt(r["log_produce"]["events_per_s"], 0),
            fmt(r["log_produce"]["delivery_p50_ms"]),
            fmt(r["log_produce"]["delivery_p99_ms"]),
            fmt(r["log_produce"]["single_p50_ms"]),
            fmt(r["log_produce"]["single_p99_ms"]),
        ]
        for r in res["cost"]
        if r.get("log_produce")
    ]
    if prows:
        n = res["cost"][0]["log_produce"]["events"]
        out += [
            table(
                [
                    "the log alone",
                    f"events/s ({n} x 2 KB)",
                    "delivery p50 ms",
                    "p99 ms",
                    "one write p50 ms",
                    "p99 ms",
                ],
                prows,
            ),
            "(the relay's producer settings: acks=all, idempotent, lz4, linger 2 ms; "
            "one write = produce and wait for its acknowledgement, 200 times)",
            "",
        ]
    krows = []
    for k in res["kills"]:
        if "searches" in k:
            failed = f"{k['failed_before_noticed']} before / {k['failed_after_noticed']} after"
            krows.append(
                [
                    k["kill"],
                    k["load"],
                    f"{k['longest_search_gap_s']:.2f} (searches)",
                    f"{failed} HAProxy noticed ({k['searches']} searches)",
                    fmt(k["noticed_by_haproxy_s"]),
                    f"back in balancer {k['restarted_and_up_in_balancer_s']:.1f} s after restart",
                ]
            )
        elif "new_association_ok_after_s" in k:
            krows.append(
                [
                    k["kill"],
                    k["load"],
                    f"{k['longest_ack_gap_s']:.2f} (acks)",
                    f"{k['client_failures']} associations cut; {k['acked']}/{k['sent']} acked",
                    fmt(k["noticed_by_haproxy_s"]),
                    f"new association stored after {k['new_association_ok_after_s']:.2f} s "
                    f"({k['failed_new_associations']} failed tries)",
                ]
            )
        else:
            krows.append(
                [
                    k["kill"],
                    k["load"],
                    f"{k['longest_ack_gap_s']:.2f} (acks)",
                    f"{k['client_failures']} associations failed; {k['acked']}/{k['sent']} acked",
                    "-",
                    f"all queryable {k['all_queryable_after_run_s']:.2f} s after the run",
                ]
            )
    out.append(
        table(
            [
                "kill -9 of",
                "load",
                "longest stall (s)",
                "client-visible",
                "HAProxy noticed (s)",
                "recovery",
            ],
            krows,
        )
    )
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.ha",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--count", type=int, default=400, help="instances of the throughput run")
    p.add_argument("--assocs", type=int, default=4, help="parallel associations (throughput)")
    p.add_argument("--repeat", type=int, default=3, help="throughput runs per target")
    p.add_argument("--per-series", type=int, default=100)
    p.add_argument("--produce-count", type=int, default=20000, help="events of the log-alone burst")
    p.add_argument("--latency-count", type=int, default=150, help="0 = no latency run")
    p.add_argument("--latency-rate", type=float, default=20.0)
    p.add_argument("--kill-count", type=int, default=200, help="instances per kill run")
    p.add_argument(
        "--targets", default=",".join(TARGETS), help="comma list of " + ",".join(TARGETS)
    )
    p.add_argument("--no-kills", action="store_true", help="skip the kill phase")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--work-dir", type=Path, default=None)
    p.add_argument("--output", type=Path, default=None)
    p.add_argument("--keep", action="store_true", help="keep the stacks' homes (logs)")
    p.add_argument("--report", type=Path, metavar="JSON", help="only print an earlier result")
    a = p.parse_args(argv)
    a.targets = [x.strip() for x in a.targets.split(",") if x.strip()]
    for x in a.targets:
        if x not in TARGETS:
            p.error(f"unknown target {x!r}")
    return a


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    args = parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    for tool in ("storescu", "findscu", "java", "haproxy"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"{tool} not found (make deps; apt-get install haproxy)", file=sys.stderr)
            return 2
    busy = busy_cpu_percent()
    if busy > 15:
        log(f"WARNING: the machine is already {busy:.0f}% busy; the numbers will be noisy")
    res: dict[str, Any] = {
        "benchmark": "ha",
        "started": datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "revision": git_revision(),
        "background_cpu_busy_pct_at_start": busy,
        "config": {
            "count": args.count,
            "assocs": args.assocs,
            "latency_count": args.latency_count,
            "latency_rate": args.latency_rate,
            "kill_count": args.kill_count,
            "repeat": args.repeat,
            "produce_count": args.produce_count,
            "targets": args.targets,
        },
        "cost": [],
        "kills": [],
    }
    work = Path(tempfile.mkdtemp(prefix="strata-bench-ha-", dir=args.work_dir))
    try:
        res["cost"] = cost_phase(args, work)
        if not args.no_kills:
            res["kills"] = kill_phase(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    path = args.output or RESULTS_DIR / f"ha-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    write_json(path, res)
    print(report(res))
    log(f"results in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
