"""Query benchmark: study search and study metadata at >= 1M indexed instances, and C-MOVE
throughput of a 600-instance CT study side by side with Orthanc 1.10.

    python -m benchmarks.query [--studies 10000] [--per-study 100] [--queries 200]
                               [--move-instances 600] [--move-runs 3]

Everything runs on free loopback ports in a temporary directory (progress on stderr, the table
on stdout, JSON in benchmarks/results/query-<date>.json); nothing touches a running archive.

1. The index. An embedded Kafka broker (KRaft) gets ``studies x per-study`` InstanceStored
   events, exactly as ingest writes them (benchmarks.index.generate: realistic CT/MR/CR/US
   headers, patients with several studies, ten years of study dates), which are replayed into a
   fresh chDB index (processors.replay, the live write path) and merged (OPTIMIZE FINAL). The
   index node's consumer group ("strata-processors") is set to the log end and the archive is
   started on that log and that index (``strata up`` with STRATA_CLICKHOUSE_DSN=chdb://<path>).
2. Study search, the same random values for both interfaces (benchmarks.index.study_query_sets):
   exact PatientID; PatientName prefix wildcard; StudyDate 1-month range + ModalitiesInStudy=CT.
   Through gRPC SearchStudies (first page, ``--page-size``, with the total count) and through
   C-FIND (pynetdicom SCU, Study Root, STUDY level, one association, every match returned).
   Goal: p50 < 20 ms, p99 < 100 ms.
3. A real ``--move-instances`` CT study (512x512 slices, ~520 KB each, one series) is sent with
   DCMTK storescu through the ingest SCP; once all of it is visible to C-FIND,
   GetStudyMetadata (gRPC) is called ``--metadata-calls`` times. Goal: p50/p99 < 300 ms.
4. Orthanc 1.10 (generated JSON config: SQLite, no plugins, TCP_NODELAY=1, DicomModalities
   {"WORKSTATION": ["WORKSTATION", "127.0.0.1", PORT]}) gets the same files with storescu.
   Then, ``--move-runs`` times, alternating the archives: a fresh DCMTK storescp
   (``storescp +B +xa -aet WORKSTATION -od DIR PORT``, TCP_NODELAY=1) and
   ``movescu -S -aem WORKSTATION`` of the study (STUDY level, TCP_NODELAY=1); wall time of
   movescu; every file is checked (every SOP Instance UID arrived, nothing else; how many
   datasets are byte-identical to the files sent). instances/s and MB/s, median over runs.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from benchmarks import common
from benchmarks import index as ib
from benchmarks.common import (
    CALLING_AE,
    DEFAULT_CACHE,
    HOST,
    ORTHANC_BIN,
    RESULTS_DIR,
    SIZES,
    Orthanc,
    echo,
    free_port,
    generate,
    git_revision,
    log,
    machine,
    storescu,
    table,
    write_json,
)
from benchmarks.ingest import wait_visible

# Ports other people use on this machine: never handed out, even when free. Every port of
# the run comes from benchmarks.common.free_port (one "already handed out" set: stack.procs),
# so no port is given twice within this run.
NEVER_PORTS = {9092, 9093, 11112, 11113, 8081, 8082, 50051}
common.RESERVED_PORTS.update(NEVER_PORTS)

WORKSTATION = "WORKSTATION"
SEARCH_GOAL = (20.0, 100.0)  # p50, p99 ms
METADATA_GOAL = 300.0  # ms
TOOLS = ("storescu", "storescp", "movescu")


# ----------------------------------------------------------------------------- the peers
@dataclass
class QueryStack(ib.Stack):
    """benchmarks.index's stack (``strata up``/``down`` on free ports, chDB index at
    ``index_dsn``), plus extra settings (the C-MOVE destinations)."""

    extra: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**super().env(), **self.extra}

    @property
    def grpc_port(self) -> int:
        return int(self.other_ports["STRATA_GRPC_PORT"])


class MoveOrthanc(Orthanc):
    """benchmarks.common's Orthanc (SQLite, no plugins, TCP_NODELAY=1) with the workstation as
    a C-MOVE destination."""

    def __init__(self, parent: Path, ws_port: int) -> None:
        super().__init__(parent)
        self.ws_port = ws_port

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["DicomModalities"] = {WORKSTATION: [WORKSTATION, HOST, self.ws_port]}
        # movescu calls as CALLING_AE, which is not a known modality: allow it, as Strata does.
        cfg["DicomAlwaysAllowMove"] = True
        return cfg


class StoreSCP:
    """DCMTK storescp writing what it receives, bit-preserving, into a fresh directory."""

    def __init__(self, port: int, out_dir: Path, log_file: Path) -> None:
        self.port, self.out_dir, self.log_file = port, out_dir, log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> StoreSCP:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "storescp",
            "+B",
            "+xa",
            "-aet",
            WORKSTATION,
            "-od",
            str(self.out_dir),
            str(self.port),
        ]
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "TCP_NODELAY": "1"},
                start_new_session=True,
            )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"storescp exited ({self.proc.returncode}): {self.tail()}")
            if echo(self.port, WORKSTATION):
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"storescp did not answer C-ECHO on port {self.port}: {self.tail()}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def tail(self, n: int = 10) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-n:])
        return ""


# ----------------------------------------------------------------------------- the index
def build_index(settings: Any, args: argparse.Namespace, path: Path) -> tuple[Any, dict, dict]:
    """Produce the log (benchmarks.index.generate) and replay it into a fresh chDB index at
    ``path``. Returns (generated, log end positions, results)."""
    from strata.processors.index.store import IndexStore
    from strata.processors.replay import end_positions, replay

    n = args.studies * args.per_study
    log(f"producing {n:,} InstanceStored events ({args.studies:,} studies) ...")
    gen = ib.generate(settings, args.studies, args.per_study, args.seed)
    ends = end_positions(
        settings.kafka_bootstrap, [settings.study_topic, settings.quarantine_topic]
    )
    n_log = sum(ends[settings.study_topic].values())
    if n_log != gen.events:
        raise RuntimeError(f"the log holds {n_log} events, {gen.events} were produced")
    out: dict[str, Any] = {
        "events": gen.events,
        "studies": gen.studies,
        "series": gen.series,
        "patients": len(gen.patients),
        "produce_seconds": round(gen.seconds, 1),
        "produce_events_per_s": round(gen.rate),
    }
    log(f"  produced in {gen.seconds:.1f}s ({gen.rate:,.0f}/s)")

    path.mkdir(parents=True)
    index = IndexStore(f"chdb://{path.resolve()}", settings.clickhouse_database)
    try:
        index.migrate()
        progress = {"n": 0, "t": time.monotonic()}

        def on_progress(k: int) -> None:
            progress["n"] += k
            if time.monotonic() - progress["t"] > 10:
                progress["t"] = time.monotonic()
                log(f"  replayed {progress['n']:,}")

        log("replaying the log into a fresh chDB index ...")
        res = replay(settings.kafka_bootstrap, index, ends, on_progress=on_progress)
        out["replay_seconds"] = round(res.seconds, 1)
        out["replay_events_per_s"] = round(res.rate)
        db = settings.clickhouse_database
        rows = int(index.query(f"SELECT count() FROM {db}.instances FINAL")[0][0])
        out["indexed_instances"] = rows
        log(
            f"  replayed {res.events:,} events in {res.seconds:.1f}s ({res.rate:,.0f}/s); "
            f"{rows:,} instances indexed"
        )
        if rows != gen.events:
            raise RuntimeError(f"the index holds {rows} instances, {gen.events} were produced")
        if args.optimize:
            t = time.monotonic()
            tables = [
                r[0]
                for r in index.query(
                    "SELECT name FROM system.tables WHERE database = {d:String} "
                    "AND engine LIKE '%MergeTree'",
                    {"d": db},
                )
            ]
            for tname in tables:
                index.client.command(f"OPTIMIZE TABLE {db}.`{tname}` FINAL")
            out["optimize_final_seconds"] = round(time.monotonic() - t, 1)
            log(f"  OPTIMIZE FINAL of {len(tables)} tables in {out['optimize_final_seconds']}s")
        out["index_bytes"] = ib.du_bytes(path)
    finally:
        index.close()
    return gen, ends, out


# ----------------------------------------------------------------------------- search
def grpc_stub(port: int) -> tuple[Any, Any]:
    import grpc

    from strata.proto.strata.v1 import query_pb2_grpc

    channel = grpc.insecure_channel(f"{HOST}:{port}")
    grpc.channel_ready_future(channel).result(timeout=60)
    return channel, query_pb2_grpc.QueryServiceStub(channel)


def run_grpc_searches(
    port: int, qsets: dict[str, list[dict[str, str]]], page_size: int
) -> dict[str, Any]:
    """SearchStudies for every query (one channel; first page + total)."""
    from strata.proto.strata.v1 import query_pb2 as q

    channel, stub = grpc_stub(port)
    out: dict[str, Any] = {}
    try:
        for name, matches in qsets.items():
            stub.SearchStudies(
                q.SearchRequest(match=matches[0], page_size=page_size), timeout=60
            )  # warm-up
            times, totals, returned = [], [], []
            for m in matches:
                req = q.SearchRequest(match=m, page_size=page_size)
                t = time.perf_counter()
                resp = stub.SearchStudies(req, timeout=60)
                times.append(time.perf_counter() - t)
                totals.append(resp.total)
                returned.append(len(resp.matches))
            out[name] = {
                **ib.stats_ms(times),
                "matches_mean": round(sum(totals) / len(totals), 1),
                "returned_mean": round(sum(returned) / len(returned), 1),
                "page_size": page_size,
            }
            log(f"  gRPC {ib.QUERY_LABELS[name]}: {out[name]}")
    finally:
        channel.close()
    return out


# ----------------------------------------------------------------------------- metadata
def run_metadata(port: int, study_uid: str, calls: int, expected: int) -> dict[str, Any]:
    from strata.proto.strata.v1 import query_pb2 as q

    channel, stub = grpc_stub(port)
    req = q.GetStudyMetadataRequest(study_instance_uid=study_uid)
    times, sizes, counts = [], [], []
    try:
        stub.GetStudyMetadata(req, timeout=60)  # warm-up
        for _ in range(calls):
            t = time.perf_counter()
            resp = stub.GetStudyMetadata(req, timeout=60)
            times.append(time.perf_counter() - t)
            counts.append(len(resp.instances))
            sizes.append(sum(len(x) for x in resp.instances))
    finally:
        channel.close()
    res = {
        **ib.stats_ms(times),
        "instances": expected,
        "instances_returned": sorted(set(counts)),
        "response_json_bytes": max(sizes) if sizes else 0,
        "ok": all(c == expected for c in counts),
    }
    log(f"  GetStudyMetadata: {res}")
    return res


# ----------------------------------------------------------------------------- C-MOVE
def dataset_digest(path: Path) -> str:
    """sha256 of a Part 10 file's dataset (everything after the File Meta Information), so
    objects can be compared whatever meta header the receiver wrote."""
    data = path.read_bytes()
    start = 0
    # (0002,0000) UL group length, explicit VR little endian, right after 'DICM'.
    if data[128:132] == b"DICM" and data[132:138] == b"\x02\x00\x00\x00UL":
        start = 144 + int.from_bytes(data[140:144], "little")
    return hashlib.sha256(data[start:]).hexdigest()


def sop_uid_of(path: Path) -> str:
    from pydicom import dcmread

    ds = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.get("SOPInstanceUID", ""))


_FINAL = re.compile(r"Received Final Move Response \(([^)]*)\)")


def c_move_run(
    target: str,
    aec: str,
    port: int,
    study_uid: str,
    expected: dict[str, str],
    ws_port: int,
    work: Path,
    run_no: int,
) -> dict[str, Any]:
    """One C-MOVE of the study with movescu to a fresh storescp; every file checked."""
    out_dir = work / "moved" / f"{target}-{run_no}"
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    argv = [
        "movescu",
        "-v",
        "-S",
        "-aet",
        CALLING_AE,
        "-aec",
        aec,
        "-aem",
        WORKSTATION,
        HOST,
        str(port),
        "-k",
        "QueryRetrieveLevel=STUDY",
        "-k",
        f"StudyInstanceUID={study_uid}",
    ]
    with StoreSCP(ws_port, out_dir, logs / f"storescp-{target}-{run_no}.log"):
        t0 = time.perf_counter()
        r = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=3600,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        seconds = time.perf_counter() - t0
    (logs / f"movescu-{target}-{run_no}.log").write_text(r.stdout + r.stderr)
    files = [f for f in out_dir.iterdir() if f.is_file()]
    received: dict[str, Path] = {}
    unreadable = 0
    for f in files:
        try:
            received[sop_uid_of(f)] = f
        except Exception:  # noqa: BLE001 - counted as a problem below
            unreadable += 1
    missing = sorted(set(expected) - set(received))
    unexpected = sorted(set(received) - set(expected))
    identical = sum(
        1 for uid, f in received.items() if uid in expected and dataset_digest(f) == expected[uid]
    )
    nbytes = sum(f.stat().st_size for f in files)
    text = r.stdout + r.stderr
    finals = _FINAL.findall(text)
    final = finals[-1] if finals else "none"
    problems = []
    if r.returncode != 0:
        problems.append(f"movescu exited with {r.returncode}")
    if missing:
        problems.append(f"{len(missing)} instances did not arrive (e.g. {missing[0]})")
    if unexpected or unreadable:
        problems.append(f"{len(unexpected)} unexpected, {unreadable} unreadable files")
    if final != "Success":
        problems.append(f"final C-MOVE response: {final}")
    if problems:
        problems.append("movescu tail: " + " | ".join(text.strip().splitlines()[-6:]))
    res = {
        "target": target,
        "run": run_no,
        "seconds": round(seconds, 3),
        "received": len(received),
        "expected": len(expected),
        "bytes": nbytes,
        "inst_per_s": round(len(received) / seconds, 1) if seconds else 0.0,
        "mb_per_s": round(nbytes / seconds / 1e6, 1) if seconds else 0.0,
        "byte_identical_datasets": identical,
        "final_status": final,
        "problems": problems,
        "ok": not problems,
    }
    log(
        f"  C-MOVE {target} #{run_no}: {len(received)}/{len(expected)} in {seconds:.2f}s = "
        f"{res['inst_per_s']} inst/s, {res['mb_per_s']} MB/s; byte-identical {identical}"
        + ("" if res["ok"] else f"; PROBLEMS: {problems}")
    )
    shutil.rmtree(out_dir, ignore_errors=True)
    return res


def summarize_moves(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in ("strata", "orthanc"):
        rs = [r for r in runs if r["target"] == target]
        if not rs:
            continue
        out[target] = {
            "runs": len(rs),
            "median_inst_per_s": round(statistics.median(r["inst_per_s"] for r in rs), 1),
            "median_mb_per_s": round(statistics.median(r["mb_per_s"] for r in rs), 1),
            "min_inst_per_s": min(r["inst_per_s"] for r in rs),
            "max_inst_per_s": max(r["inst_per_s"] for r in rs),
            "median_seconds": round(statistics.median(r["seconds"] for r in rs), 2),
            "all_ok": all(r["ok"] for r in rs),
            "all_byte_identical": all(r["byte_identical_datasets"] == r["expected"] for r in rs),
        }
    if "strata" in out and "orthanc" in out and out["orthanc"]["median_inst_per_s"]:
        out["ratio"] = round(
            out["strata"]["median_inst_per_s"] / out["orthanc"]["median_inst_per_s"], 2
        )
    return out


# ----------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    from strata.common.kafka import ensure_topics
    from strata.common.settings import Settings
    from strata.stack.kafka import broker

    results: dict[str, Any] = {
        "benchmark": "query",
        "date": datetime.now().isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": machine(),
        "params": {k: v for k, v in vars(args).items() if k not in ("workdir", "keep")},
    }
    parent = Path(args.workdir) if args.workdir else None
    work = Path(tempfile.mkdtemp(prefix="strata-query-bench-", dir=parent))
    ws_port = free_port()
    home = work / "strata"
    home.mkdir()
    index_path = work / "index-1m"
    stack = QueryStack(
        home,
        index_dsn=f"chdb://{index_path.resolve()}",
        extra={"STRATA_MOVE_DESTINATIONS": f"{WORKSTATION}={HOST}:{ws_port}"},
    )
    settings = Settings.from_env(stack.env())
    orthanc: MoveOrthanc | None = None
    log(f"work directory {work}")
    try:
        # 1. Kafka, the log, the replayed index, the archive on both
        t = time.monotonic()
        broker.start(settings)
        broker.wait_ready(settings, timeout=120)
        ensure_topics(settings)
        log(f"Kafka broker on {settings.kafka_bootstrap} ready in {time.monotonic() - t:.1f}s")
        gen, ends, results["index"] = build_index(settings, args, index_path)
        ib.set_group_offsets(settings.kafka_bootstrap, ends)
        log("strata up (on that log and that index) ...")
        t = time.monotonic()
        stack.up()
        results["index"]["strata_up_seconds"] = round(time.monotonic() - t, 1)
        log(f"  up in {results['index']['strata_up_seconds']}s; waiting for the index node ...")
        n_log = sum(ends[settings.study_topic].values())
        try:
            results["index"]["caught_up"] = ib.wait_caught_up(
                stack, min_end=n_log + gen.studies, timeout=args.catch_up_timeout
            )
        except RuntimeError as exc:  # measured anyway: the replayed index holds everything
            log(f"  WARNING: {exc}")
            results["index"]["caught_up"] = {"error": str(exc)}

        # 2. study search: gRPC and C-FIND, same values
        qsets = ib.study_query_sets(gen, args.queries, args.seed + 7)
        log(f"gRPC SearchStudies, {args.queries} queries of each kind ...")
        results["search_grpc"] = run_grpc_searches(stack.grpc_port, qsets, args.page_size)
        log(f"C-FIND (Study Root, STUDY level), {args.queries} queries of each kind ...")
        results["search_cfind"] = ib.run_cfind_queries(stack.qr_port, "STRATA_QR", qsets)
        log("C-FIND from a lean SCU, the same queries ...")
        results["search_cfind_lean"] = ib.run_cfind_queries_lean(stack.qr_port, "STRATA_QR", qsets)
        log("C-FIND with DCMTK findscu (a process per search), the first 50 of each kind ...")
        results["search_findscu"] = ib.run_cfind_queries_findscu(stack.qr_port, "STRATA_QR", qsets)

        # 3. a real CT study through the ingest SCP, then its metadata
        label = f"qmv{datetime.now().strftime('%H%M%S')}"
        data = generate(
            work / "data",
            SIZES["ct"],
            args.move_instances,
            args.move_instances,
            Path(args.cache_dir),
            label,
        )
        study_uid = data.study_uids[0]
        log(
            f"{len(data.files)} CT slices ({data.mean_size / 1024:.0f} KB) generated; "
            f"storescu -> Strata ingest ({args.store_assocs} associations) ..."
        )
        expected = {
            uid: dataset_digest(f) for uid, f in zip(data.sop_uids, data.files, strict=True)
        }
        sent = storescu(
            data.files,
            "STRATA",
            stack.ingest_port,
            args.store_assocs,
            work / "logs" / "store-strata",
        )
        if not sent.ok:
            raise RuntimeError(f"storing the study into Strata failed: {sent.problems}")
        target = SimpleNamespace(name="strata", find_port=stack.qr_port, find_aet="STRATA_QR")
        visible = wait_visible(target, [study_uid], len(data.files), timeout=300.0)
        if visible is None:
            raise RuntimeError("the study did not become visible to C-FIND within 300 s")
        results["move_study"] = {
            "study_uid": study_uid,
            "instances": len(data.files),
            "mean_bytes": data.mean_size,
            "bytes_total": data.bytes_total,
            "strata_store": {
                "inst_per_s": round(sent.per_second, 1),
                "seconds": round(sent.seconds, 2),
                "visible_after_s": round(visible, 2),
            },
        }
        log(
            f"  stored in {sent.seconds:.1f}s ({sent.per_second:.0f}/s), all visible after "
            f"{visible:.2f}s"
        )
        log(f"GetStudyMetadata x {args.metadata_calls} ...")
        results["metadata"] = run_metadata(
            stack.grpc_port, study_uid, args.metadata_calls, len(data.files)
        )

        # 4. C-MOVE: Strata and Orthanc, same study, same client, same destination
        moves: list[dict[str, Any]] = []
        if not args.no_orthanc:
            orthanc = MoveOrthanc(work, ws_port)
            log("starting Orthanc ...")
            orthanc.start()
            log(f"storescu -> Orthanc ({args.store_assocs} associations) ...")
            o_sent = storescu(
                data.files,
                orthanc.aet,
                orthanc.dicom_port,
                args.store_assocs,
                work / "logs" / "store-orthanc",
            )
            if not o_sent.ok:
                raise RuntimeError(f"storing the study into Orthanc failed: {o_sent.problems}")
            n_orthanc = orthanc.instance_count()
            if n_orthanc != len(data.files):
                raise RuntimeError(
                    f"Orthanc holds {n_orthanc} instances, {len(data.files)} were sent"
                )
            results["move_study"]["orthanc_store"] = {
                "inst_per_s": round(o_sent.per_second, 1),
                "seconds": round(o_sent.seconds, 2),
            }
        targets: list[tuple[str, str, int]] = [("strata", "STRATA_QR", stack.qr_port)]
        if orthanc is not None:
            targets.append(("orthanc", orthanc.aet, orthanc.dicom_port))
        log(f"C-MOVE of the {len(data.files)}-instance study, {args.move_runs} runs each ...")
        for i in range(args.move_runs):
            order = targets if i % 2 == 0 else list(reversed(targets))
            for name, aec, port in order:
                moves.append(c_move_run(name, aec, port, study_uid, expected, ws_port, work, i + 1))
        results["move_runs"] = moves
        results["move"] = summarize_moves(moves)
        shutil.rmtree(work / "data", ignore_errors=True)
    except BaseException:
        with contextlib.suppress(Exception):
            for svc in ("index", "ingest"):
                tail = stack.tail(svc, 15)
                if tail:
                    log(f"--- {svc}.log tail ---\n{tail}")
        raise
    finally:
        if orthanc is not None:
            with contextlib.suppress(Exception):
                orthanc.stop()
        with contextlib.suppress(Exception):
            stack.started = True  # `strata down` also when `up` failed half-way
            stack.down()
        with contextlib.suppress(Exception):
            broker.proc(settings).stop()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return results


# ----------------------------------------------------------------------------- report
def _met(ok: bool) -> str:
    return "yes" if ok else "NO"


def report(r: dict[str, Any]) -> str:
    rows: list[list[object]] = []
    ix = r["index"]
    rows.append(
        [
            "indexed instances (log produced, replayed)",
            f"{ix['indexed_instances']:,} instances, {ix['studies']:,} studies, "
            f"{ix['patients']:,} patients; produced {ix['produce_events_per_s']:,}/s, "
            f"replayed {ix['replay_events_per_s']:,} events/s; "
            f"index {ix['index_bytes'] / 1e6:,.0f} MB",
            "-",
            ">= 1,000,000",
            _met(ix["indexed_instances"] >= 1_000_000),
        ]
    )
    p50g, p99g = SEARCH_GOAL
    for key, via in (
        ("search_grpc", "gRPC SearchStudies"),
        ("search_cfind", "C-FIND (pynetdicom SCU)"),
        ("search_cfind_lean", "C-FIND (lean SCU)"),
        ("search_findscu", "C-FIND (DCMTK findscu, process per search)"),
    ):
        for name, s in r.get(key, {}).items():
            if name not in ib.QUERY_LABELS or not isinstance(s, dict):
                continue  # run metadata (e.g. load averages), not a query kind
            extra = f", first page of {s['page_size']}" if "page_size" in s else ""
            rows.append(
                [
                    f"{ib.QUERY_LABELS[name]} [{via}]",
                    f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms (n={s['n']}, "
                    f"{s['matches_mean']} matches avg{extra})",
                    "-",
                    f"p50 < {p50g:g} ms, p99 < {p99g:g} ms",
                    _met(s["p50_ms"] < p50g and s["p99_ms"] < p99g),
                ]
            )
    if "metadata" in r:
        m = r["metadata"]
        rows.append(
            [
                f"GetStudyMetadata, {m['instances']}-instance CT study [gRPC]",
                f"p50 {m['p50_ms']} ms, p99 {m['p99_ms']} ms (n={m['n']}, "
                f"{m['response_json_bytes'] / 1e6:.1f} MB of DICOM JSON"
                + ("" if m["ok"] else ", WRONG instance count")
                + ")",
                "-",
                f"p50, p99 < {METADATA_GOAL:g} ms",
                _met(m["ok"] and m["p99_ms"] < METADATA_GOAL),
            ]
        )
    mv = r.get("move", {})
    if mv:
        ms = r["move_study"]

        def cell(t: str, unit: str) -> str:
            x = mv.get(t)
            if not x:
                return "-"
            v = x[f"median_{unit}"]
            rng = (
                f" ({x['min_inst_per_s']}-{x['max_inst_per_s']})"
                if unit == "inst_per_s" and x["runs"] > 1
                else ""
            )
            return f"{v}{rng}" + ("" if x["all_ok"] else " (INCOMPLETE)")

        what = (
            f"C-MOVE {ms['instances']} x {ms['mean_bytes'] / 1024:.0f} KB CT study -> "
            "storescp (movescu)"
        )
        ratio = mv.get("ratio")
        rows.append(
            [
                f"{what}, instances/s",
                cell("strata", "inst_per_s"),
                cell("orthanc", "inst_per_s"),
                "peer side by side" + (f"; strata/orthanc {ratio}" if ratio else ""),
                "",
            ]
        )
        rows.append(
            [f"{what}, MB/s", cell("strata", "mb_per_s"), cell("orthanc", "mb_per_s"), "", ""]
        )
        ident = {t: mv[t]["all_byte_identical"] for t in ("strata", "orthanc") if t in mv}
        rows.append(
            [
                "C-MOVE: every file arrived; datasets byte-identical to those sent",
                f"{_met(mv['strata']['all_ok'])}; {_met(ident['strata'])}",
                (
                    f"{_met(mv['orthanc']['all_ok'])}; {_met(ident['orthanc'])}"
                    if "orthanc" in mv
                    else "-"
                ),
                "every file, every run",
                _met(all(mv[t]["all_ok"] for t in ("strata", "orthanc") if t in mv)),
            ]
        )
    out = table(["measure", "strata", "orthanc 1.10", "goal", "met"], rows)
    runs = r.get("params", {}).get("move_runs", 1)
    return out + (
        f"\n(C-MOVE: median of {runs} runs per archive, range of instances/s in "
        "brackets; wall time of movescu)"
        if mv
        else ""
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.query",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--studies", type=int, default=10_000, help="studies in the generated log")
    ap.add_argument("--per-study", type=int, default=100, help="instances per generated study")
    ap.add_argument("--queries", type=int, default=200, help="searches of each kind")
    ap.add_argument("--page-size", type=int, default=100, help="gRPC SearchStudies page size")
    ap.add_argument(
        "--move-instances",
        type=int,
        default=600,
        help="instances of the real CT study (metadata and C-MOVE)",
    )
    ap.add_argument("--move-runs", type=int, default=3, help="C-MOVE runs per archive")
    ap.add_argument("--metadata-calls", type=int, default=50)
    ap.add_argument(
        "--store-assocs",
        type=int,
        default=4,
        help="storescu associations used to load the study into each archive",
    )
    ap.add_argument(
        "--no-optimize",
        dest="optimize",
        action="store_false",
        help="search the index as replayed (no OPTIMIZE FINAL)",
    )
    ap.add_argument("--no-orthanc", action="store_true", help="C-MOVE from Strata only")
    ap.add_argument(
        "--catch-up-timeout",
        type=float,
        default=900.0,
        help="seconds to wait for the index node after start",
    )
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="pixel payload cache")
    ap.add_argument("--workdir", default="", help="parent of the temporary work directory")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    a = ap.parse_args(argv)
    if (
        min(
            a.studies,
            a.per_study,
            a.queries,
            a.move_instances,
            a.move_runs,
            a.metadata_calls,
            a.store_assocs,
            a.page_size,
        )
        < 1
    ):
        ap.error("every count must be >= 1")
    return a


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    args = parse_args(argv)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(
            f"DCMTK tools not found: {', '.join(missing)} (apt-get install dcmtk)", file=sys.stderr
        )
        return 2
    if not args.no_orthanc and not Path(ORTHANC_BIN).exists():
        print(f"Orthanc not found at {ORTHANC_BIN} (apt-get install orthanc)", file=sys.stderr)
        return 2
    # `kill` (SIGTERM) stops the run like Ctrl-C does: through the clean-up in run().
    signal.signal(signal.SIGTERM, _terminate)
    r = run(args)
    print(report(r))
    path = RESULTS_DIR / f"query-{r['date'][:10]}.json"
    write_json(path, r)
    log(f"wrote {path}")
    ok = r.get("metadata", {}).get("ok", False) and all(
        v.get("all_ok") for k, v in r.get("move", {}).items() if k != "ratio"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
