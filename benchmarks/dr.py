"""The DR drill (docs/dr.md, docs/runbooks/dr-drill.md): two sites on this machine, sustained
ingest at A through storescu, kill -9 of every process of site A mid-run, promote B, then every
instance storescu logged as acknowledged must be queryable and retrievable byte-identical at B.

Prints RPO (acknowledged instances missing at B and the seconds of ingest they span; and had A
died at any 0.1 s of the run, from when B recorded each copy), RTO (seconds from A's death until
B answers C-FIND, C-GET, gRPC and WADO-RS and accepts C-STORE), the ingest rate and the
acknowledgement latency (p50/p99, from storescu's Store Request to its Store Response).

    .venv/bin/python -m benchmarks.dr --instances 200 [--kill-after 0.6] [--keep DIR]
        [--mode async|sync|both]

``--mode both`` (the default) runs the drill on a fresh pair of sites in each mode, one after
the other, at the same offered load, and prints them side by side.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path
from typing import Any

from strata.common.settings import Settings
from tests.support.dcmtk import dcmtk_env, findscu, storescu
from tests.support.sites import Sites, kill_site, make_sites
from tests.support.stack import Stack
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for


@dataclass
class Sender:
    """Sustained ingest at one site: storescu on batches of files, one after another; the time
    each file was acknowledged (Success) is recorded from storescu's -v output."""

    port: int
    files: list[Path]
    batch: int = 5
    rate: float = 0.0  # instances/s at most (0 = as fast as storescu goes)
    acked: dict[str, float] = field(default_factory=dict)
    latency: dict[str, float] = field(default_factory=dict)  # file -> request-to-response s
    stopped: threading.Event = field(default_factory=threading.Event)
    senders: int = 1  # storescu processes at once (each on its share of the batches)

    def run(self) -> None:
        if self.senders <= 1:
            self._run(0, 1)
            return
        ts = [
            threading.Thread(target=self._run, args=(k, self.senders), daemon=True)
            for k in range(self.senders)
        ]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    def _run(self, k: int, n: int) -> None:
        t0 = time.monotonic()
        for i in range(k * self.batch, len(self.files), self.batch * n):
            if self.rate > 0:  # sustained ingest, as modalities send: not one burst
                self.stopped.wait(max(0.0, t0 + i / self.rate - time.monotonic()))
            if self.stopped.is_set():
                return
            chunk = self.files[i : i + self.batch]
            p = subprocess.Popen(
                ["storescu", "-v", "-aet", "MODALITY", "-aec", "STRATA", "127.0.0.1",
                 str(self.port), *map(str, chunk)],
                env=dcmtk_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            current = None
            sent = 0.0
            assert p.stdout is not None
            for line in p.stdout:
                m = re.search(r"Sending file: (.+)$", line)
                if m:
                    current = m.group(1).strip()
                elif "Sending Store Request" in line:
                    sent = time.time()
                elif "Received Store Response (Success)" in line and current:
                    self.acked[current] = time.time()
                    self.latency[current] = self.acked[current] - sent
            p.wait()
            if p.returncode != 0 and self.stopped.is_set():
                return


def _uids(path: Path) -> tuple[str, str, str]:
    from pydicom import dcmread

    ds = dcmread(str(path), stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _dataset_bytes(data: bytes) -> bytes:
    """The dataset of a Part 10 file (what storescu sends) without its file meta."""
    import io

    from pynetdicom.dsutils import split_dataset

    with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
        f.write(data)
        f.flush()
        _meta, offset = split_dataset(Path(f.name))
    del io
    return data[offset:]


def retrieve_at(grpc_target: str, study: str, sops: list[str]) -> dict[str, bytes]:
    """The instances ``sops`` of ``study`` the site serves (gRPC RetrieveInstances, one call
    per instance: one whose bytes are missing fails its own call only), sha-checked."""
    import grpc

    from strata.proto.strata.v1 import query_pb2 as q
    from strata.proto.strata.v1 import query_pb2_grpc as q_grpc

    out: dict[str, bytes] = {}
    with grpc.insecure_channel(grpc_target) as ch:
        stub = q_grpc.QueryServiceStub(ch)
        for sop in sops:
            buf, sha = bytearray(), ""
            try:
                for c in stub.RetrieveInstances(
                    q.RetrieveRequest(study_instance_uid=study, sop_instance_uids=[sop]),
                    timeout=60,
                ):
                    buf.extend(c.data)
                    sha = c.sha256 or sha
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    raise
                continue
            if hashlib.sha256(buf).hexdigest() == sha:
                out[sop] = bytes(buf)
    return out


def holdings(site: Stack, files: list[str]) -> tuple[set[str], set[str]]:
    """SOP Instance UIDs of ``files`` the site answers in C-FIND, and those it retrieves
    byte-identical (dataset for dataset) to the file."""
    by_study: dict[str, list[Path]] = {}
    uids = {}
    for f in files:
        st, _se, sop = _uids(Path(f))
        uids[f] = sop
        by_study.setdefault(st, []).append(Path(f))
    target = f"127.0.0.1:{site.env['STRATA_GRPC_PORT']}"
    found: set[str] = set()
    identical: set[str] = set()
    for study, fs in by_study.items():
        rows = findscu(
            int(site.env["STRATA_QR_PORT"]),
            "STRATA_QR",
            "IMAGE",
            {"StudyInstanceUID": study, "SeriesInstanceUID": "", "SOPInstanceUID": ""},
        )
        found |= {str(r.SOPInstanceUID) for r in rows}
        got = retrieve_at(target, study, [uids[str(f)] for f in fs])
        for f in fs:
            sop = uids[str(f)]
            if sop in got and _dataset_bytes(got[sop]) == _dataset_bytes(f.read_bytes()):
                identical.add(sop)
    return found, identical


def replicated_at(site: Stack, timeout: float = 120.0) -> dict[str, float]:
    """SOP Instance UID -> when the site's copier recorded its copy (the InstanceReplicated
    event's time: bytes fsync'd there, event mirrored there), the earliest if recorded more
    than once."""
    from strata.common.events import decode
    from strata.common.kafka import read_log

    out: dict[str, float] = {}
    for raw in read_log(site.settings, site.settings.study_topic, timeout):
        env = decode(raw)
        if env.WhichOneof("payload") == "instance_replicated":
            sop = env.instance_replicated.sop_instance_uid
            at = env.occurred_at.ToDatetime().replace(tzinfo=UTC).timestamp()
            out[sop] = min(at, out.get(sop, at))
    return out


def rpo_windows(
    acked: dict[str, float], at_b: dict[str, float], start: float, end: float, step: float = 0.1
) -> list[float]:
    """For each moment t from ``start`` to ``end`` (every ``step`` s): the seconds of ingest
    site A would have lost had it died at t, i.e. t minus the acknowledgement time of the
    oldest instance acknowledged by then whose copy B had not recorded yet (0 if none).
    ``acked``: key -> acknowledged at; ``at_b``: key -> recorded at B (absent: never)."""
    pending = sorted((t_ack, at_b.get(k, float("inf"))) for k, t_ack in acked.items())
    out = []
    t = start
    while t <= end:
        oldest = next((a for a, b in pending if a <= t < b), None)
        out.append(0.0 if oldest is None else t - oldest)
        t += step
    return out


def _answers_find(port: int) -> bool:
    try:
        findscu(port, "STRATA_QR", "STUDY", {"StudyInstanceUID": ""})
        return True
    except Exception:
        return False


def _answers_get(site: Stack, uids: tuple[str, str, str], work: Path) -> bool:
    """C-GET (DCMTK getscu) of one instance at IMAGE level brings that instance."""
    study, series, sop = uids
    out = Path(tempfile.mkdtemp(prefix="get-", dir=work))
    try:
        r = subprocess.run(
            ["getscu", "-S", "-aet", "DRILL", "-aec", site.settings.qr_ae_title, "-od", str(out),
             "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={study}",
             "-k", f"SeriesInstanceUID={series}", "-k", f"SOPInstanceUID={sop}",
             "127.0.0.1", str(site.settings.qr_port)],
            env=dcmtk_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return r.returncode == 0 and len(list(out.iterdir())) == 1
    except subprocess.TimeoutExpired:
        return False
    finally:
        shutil.rmtree(out, ignore_errors=True)


def _answers_wado(site: Stack, uids: tuple[str, str, str]) -> bool:
    """WADO-RS retrieve of one instance answers 200 with a multipart body."""
    import urllib.error
    import urllib.request

    study, series, sop = uids
    st = site.settings
    url = (
        f"http://127.0.0.1:{st.dicomweb_port}{st.dicomweb_prefix}"
        f"/studies/{study}/series/{series}/instances/{sop}"
    )
    req = urllib.request.Request(
        url, headers={"Accept": 'multipart/related; type="application/dicom"'}
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status == 200 and len(r.read()) > 0
    except (urllib.error.URLError, OSError):
        return False


def _answers_grpc(site: Stack, uids: tuple[str, str, str]) -> bool:
    """gRPC RetrieveInstances of one instance brings its bytes, SHA-256 checked."""
    study, _series, sop = uids
    try:
        return sop in retrieve_at(f"127.0.0.1:{site.env['STRATA_GRPC_PORT']}", study, [sop])
    except Exception:
        return False


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return round(v[min(len(v) - 1, int(q * len(v)))], 3)


def drill(
    sites: Sites,
    work: Path,
    instances: int = 100,
    kill_after: float = 0.6,
    rate: float = 4.0,
    senders: int = 2,
    batch: int = 5,
) -> dict[str, Any]:
    """Run the drill on started sites (A primary of epoch 1, B following); returns the numbers.
    ``senders`` storescu run at once, sharing the offered ``rate``."""
    a, b = sites.a, sites.b
    mode = a.env.get("STRATA_DR_MODE", "async")
    files: list[Path] = []
    per_study = 20
    for i in range((instances + per_study - 1) // per_study):
        n = min(per_study, instances - i * per_study)
        files += ct_series(work / f"s{i}", n, patient_id=f"DR{i:04d}")
    sender = Sender(
        int(a.env["STRATA_INGEST_PORT"]), files, batch=batch, rate=rate, senders=senders
    )
    t = threading.Thread(target=sender.run, daemon=True)
    t_start = time.time()
    t.start()
    while len(sender.acked) < int(instances * kill_after) and t.is_alive():
        time.sleep(0.05)
    t_dead = time.time()
    killed = kill_site(a)
    sender.stopped.set()
    t.join(60)
    acked = dict(sender.acked)
    latencies = [sender.latency[f] for f in acked if f in sender.latency]
    # Fail over: promote B, then measure until B answers C-FIND, C-GET, gRPC and WADO-RS (for
    # the first instance A acknowledged: B has it) and accepts C-STORE.
    promoted = b.cli("dr", "promote", "--reason", "drill: site A killed", "--by", "drill")
    t_promoted = time.time()
    probe = ct_series(work / "probe", 1, patient_id="DRPROBE")
    first = _uids(Path(min(acked, key=acked.__getitem__))) if acked else None
    checks: dict[str, Any] = {
        "find": lambda: _answers_find(int(b.env["STRATA_QR_PORT"])),
        "store": lambda: (
            storescu(int(b.env["STRATA_INGEST_PORT"]), "STRATA", probe)[1] == ["Success"]
        ),
    }
    if first is not None:
        checks["get"] = lambda: _answers_get(b, first, work)
        checks["grpc"] = lambda: _answers_grpc(b, first)
        checks["wado"] = lambda: _answers_wado(b, first)
    answered: dict[str, float] = {}
    while time.time() - t_dead < 300 and len(answered) < len(checks):
        for name, check in checks.items():
            if name not in answered and check():
                answered[name] = time.time()
        time.sleep(0.2)
    rto = (max(answered.values()) - t_dead) if len(answered) == len(checks) else None
    sites.acked = sorted(acked)
    # What B holds of what A acknowledged: queryable (C-FIND) and byte-identical (gRPC).
    uids = {f: _uids(Path(f))[2] for f in acked}
    if mode == "sync":
        # Every acknowledged instance's event and bytes are at B: wait (bounded) for B's
        # index to apply the events, then measure.
        want = set(uids.values())
        seen: list[tuple[set[str], set[str]]] = []

        def complete() -> bool:
            seen[:] = [holdings(b, list(acked))]
            return want <= seen[0][0] and want <= seen[0][1]

        wait_for(complete, 90, step=1.0)
        found, identical = seen[0]
    else:
        time.sleep(3)  # the index at B applies what the mirror delivered before the kill
        found, identical = holdings(b, list(acked))
    missing = [f for f in acked if uids[f] not in found or uids[f] not in identical]
    # The RPO had A died at any moment of the run, not only at the kill: from each acknowledged
    # instance's time and when B recorded its copy (one drill, many moments: a distribution).
    at_b = replicated_at(b)
    first_ack = min(acked.values()) if acked else t_start
    windows = rpo_windows(
        acked, {f: at_b[uids[f]] for f in acked if uids[f] in at_b}, first_ack, t_dead
    )
    span = (max(acked[f] for f in missing) - min(acked[f] for f in missing)) if missing else 0.0
    first = min(acked.values()) if acked else t_start
    return {
        "mode": mode,
        "instances_planned": instances,
        "acknowledged": len(acked),
        "rate_per_s": rate,
        "senders": senders,
        "batch": batch,
        "ingest_seconds_before_kill": round(t_dead - t_start, 1),
        # acknowledged instances per second from the first acknowledgement to the kill
        "ingest_rate_per_s": round((len(acked) - 1) / max(1e-3, t_dead - first), 2)
        if acked
        else 0.0,
        "ack_latency_p50_s": _pct(latencies, 0.50),
        "ack_latency_p99_s": _pct(latencies, 0.99),
        "killed": killed,
        "queryable_at_b": len([f for f in acked if uids[f] in found]),
        "identical_at_b": len([f for f in acked if uids[f] in identical]),
        "rpo_instances": len(missing),
        "rpo_seconds": round(span, 2),
        "rpo_oldest_missing_age_at_kill": round(t_dead - min(acked[f] for f in missing), 2)
        if missing
        else 0.0,
        # every 0.1 s of the run: seconds of ingest lost had A died then
        "rpo_window_samples": len(windows),
        "rpo_window_p50_s": _pct(windows, 0.50),
        "rpo_window_p99_s": _pct(windows, 0.99),
        "rpo_window_max_s": round(max(windows), 3) if windows else None,
        "rto_seconds": round(rto, 1) if rto is not None else None,
        "promote_seconds": round(t_promoted - t_dead, 1),  # kill -> `strata dr promote` done
        "promote_output": promoted.stdout.strip(),
        # each interface's own: seconds from the kill until it answered (None: never)
        **{
            f"rto_{n}_seconds": round(answered[n] - t_dead, 1) if n in answered else None
            for n in checks
        },  # fmt: skip
    }


def wait_following(sites: Sites, timeout: float = 300.0) -> float:
    """Until B holds A's epoch 1 (the mirror runs end to end); returns the seconds waited."""
    from strata.cli.dr import current_epoch

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ep = current_epoch(sites.b.settings.kafka_bootstrap, sites.b.settings.dr_topic)
        if ep is not None and ep.primary_site == "A":
            return time.monotonic() - t0
        time.sleep(1)
    raise AssertionError(f"B did not receive A's epoch within {timeout:.0f}s (mirror not running)")


def setup(root: Path, mode: str = "async", env: dict[str, str] | None = None) -> Sites:
    """Two sites, A primary (epoch 1) in ``mode`` (STRATA_DR_MODE), B following it; ``env``:
    more settings for both sites."""
    sites = make_sites(root)
    for s in (sites.a, sites.b):
        s.env.update(env or {})
        s.settings = Settings.from_env(s.env)
    sites.a.env["STRATA_DR_MODE"] = mode
    sites.a.settings = Settings.from_env(sites.a.env)
    sites.up()
    try:
        sites.a.cli("dr", "promote", "--reason", "initial primary", "--by", "drill")
        sites.b.cli("dr", "follow")
        wait_following(sites)
    except BaseException:
        sites.down()
        raise
    return sites


def main() -> int:
    ap = argparse.ArgumentParser(prog="strata dr drill", description=__doc__)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--kill-after", type=float, default=0.6)
    ap.add_argument("--rate", type=float, default=4.0, help="instances/s sent to A")
    ap.add_argument("--senders", type=int, default=2, help="storescu processes at once")
    ap.add_argument("--batch", type=int, default=5, help="files per storescu association")
    ap.add_argument("--mode", choices=("async", "sync", "both"), default="both")
    ap.add_argument("--keep", help="directory of the two sites (kept); default a temp dir")
    args = ap.parse_args()
    results = []
    for mode in ("async", "sync") if args.mode == "both" else (args.mode,):
        root = Path(args.keep or tempfile.mkdtemp(prefix="strata-dr-")) / mode
        sites = setup(root, mode)
        try:
            out = drill(
                sites,
                root / "files",
                args.instances,
                args.kill_after,
                args.rate,
                args.senders,
                args.batch,
            )
            print(json.dumps(out, indent=2), flush=True)
            results.append(out)
        finally:
            sites.down()
            if not args.keep:
                shutil.rmtree(root.parent, ignore_errors=True)
    print(side_by_side(results))
    from datetime import datetime

    from benchmarks.common import RESULTS_DIR, git_revision, machine, write_json

    out = RESULTS_DIR / f"dr-{datetime.now(UTC):%Y-%m-%dT%H%M}.json"
    write_json(out, {"machine": machine(), "revision": git_revision(), "args": vars(args),
                     "runs": results})  # fmt: skip
    print(f"raw results in {out}")
    return 0


def side_by_side(results: list[dict[str, Any]]) -> str:
    rows = [
        ("offered load (instances/s)", "rate_per_s"),
        ("storescu at once", "senders"),
        ("files per association", "batch"),
        ("acknowledged before the kill", "acknowledged"),
        ("ingest rate (acknowledged/s)", "ingest_rate_per_s"),
        ("acknowledgement latency p50 (s)", "ack_latency_p50_s"),
        ("acknowledgement latency p99 (s)", "ack_latency_p99_s"),
        ("RPO: acknowledged missing at B", "rpo_instances"),
        ("RPO: seconds of ingest missing", "rpo_seconds"),
        ("RPO had A died any 0.1 s: p50 (s)", "rpo_window_p50_s"),
        ("  p99 (s)", "rpo_window_p99_s"),
        ("  max (s)", "rpo_window_max_s"),
        ("RTO (s)", "rto_seconds"),
    ]
    head = f"{'':34}" + "".join(f"{r['mode']:>10}" for r in results)
    lines = [head] + [
        f"{label:34}" + "".join(f"{str(r.get(k)):>10}" for r in results) for label, k in rows
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
