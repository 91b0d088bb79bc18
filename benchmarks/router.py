"""Forwarding throughput of the router to Orthanc, as stored and transcoded to JPEG 2000
lossless, side by side with Orthanc forwarding the same study to the same destination (a
fresh Orthanc 1.10) in the same run.

    python -m benchmarks.router [--count 200] [--size ct] [--runs 2]

Strata: the study is ingested, becomes stable, and one per-study route sends it over one
association (max_associations 1, like Orthanc's store job; the last row splits it over 4
concurrent associations); the time is from the route's
RouteDecided to its RouteDelivered (the router's own event times: it includes recording every
attempt in Kafka). Orthanc: POST /modalities/dest/store of the same study (synchronous job).
Each run uses a fresh copy of the study (new UIDs, same bytes otherwise) so the destination
always stores new instances.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.common import (
    HOST,
    SIZES,
    Orthanc,
    Strata,
    generate,
    log,
    machine,
    storescu,
    table,
    write_json,
)


class Destination(Orthanc):
    name = "destination"
    aet = "DEST"


class Source(Orthanc):
    """An Orthanc holding the study, forwarding it to the destination (its 'dest' modality)."""

    name = "orthanc-source"
    aet = "ORTHANC"

    def __init__(self, parent: Path, dest: Orthanc) -> None:
        super().__init__(parent)
        self.dest = dest

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["DicomModalities"] = {"dest": [self.dest.aet, HOST, self.dest.dicom_port]}
        return cfg

    def post(self, path: str, body: Any) -> Any:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{HOST}:{self.http_port}{path}", data=data)
        with urllib.request.urlopen(req, timeout=3600) as r:
            return json.loads(r.read())

    def forward(self, study_uid: str) -> float:
        [sid] = [
            r["ID"]
            for r in self.post("/tools/lookup", study_uid)  # type: ignore[arg-type]
            if r["Type"] == "Study"
        ]
        t0 = time.perf_counter()
        self.post("/modalities/dest/store", {"Resources": [sid], "Synchronous": True})
        return time.perf_counter() - t0


class RoutingStrata(Strata):
    def __init__(self, parent: Path, dest: Orthanc, count: int) -> None:
        super().__init__(parent)
        member = f"{dest.aet}@{HOST}:{dest.dicom_port}"
        rules = [("as-stored", "PLAIN", "dest", ""), ("j2k", "J2K", "dest", "jpeg2000-lossless"),
                 ("as-stored-x4", "PLAIN4", "dest4", "")]  # fmt: skip
        config = {
            "destinations": {
                "dest": {"pool": [member], "max_associations": 1, "batch": 100000},
                # the same destination over 4 concurrent associations
                "dest4": {"pool": [member], "max_associations": 4, "batch": -(-count // 4)},
            },
            "rules": [
                {
                    "name": n,
                    "when": {"called_ae": ae},
                    "forward": "study",
                    "to": to,
                    "transcode": tc,
                }
                for n, ae, to, tc in rules
            ],  # fmt: skip
        }
        self.config_file = self.home / "routes.json"
        self.config_file.write_text(json.dumps(config))

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "STRATA_ROUTER_CONFIG": str(self.config_file),
            "STRATA_STUDY_QUIET_SECONDS": "1",
        }

    def route_seconds(self, study_uid: str, timeout: float = 1800) -> tuple[float, int]:
        """Seconds from RouteDecided to RouteDelivered of the study's route, and its size."""
        from strata.common.events import decode
        from strata.common.kafka import read_log

        env = self.env()
        topic = f"{env.get('STRATA_TOPIC_PREFIX', 'strata')}.study-events.v1"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            decided: dict[str, Any] = {}
            ended: dict[str, Any] = {}
            for value in read_log(env["STRATA_KAFKA_BOOTSTRAP"], topic):
                ev = decode(value)
                if ev.study_instance_uid != study_uid:
                    continue
                kind = ev.WhichOneof("payload")
                if kind == "route_decided" and ev.route_decided.matched:
                    decided[ev.route_decided.route_id] = ev
                elif kind in ("route_delivered", "route_dead_lettered"):
                    ended[getattr(ev, kind).route_id] = ev
            for rid, d in decided.items():
                if rid in ended:
                    e = ended[rid]
                    if e.WhichOneof("payload") != "route_delivered":
                        raise RuntimeError(f"route dead-lettered: {e.route_dead_lettered}")
                    t0 = d.occurred_at.seconds + d.occurred_at.nanos / 1e9
                    t1 = e.occurred_at.seconds + e.occurred_at.nanos / 1e9
                    return t1 - t0, len(d.route_decided.instances)
            time.sleep(1.0)
        raise RuntimeError(f"no delivered route for {study_uid} within {timeout:.0f}s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--count", type=int, default=200, help="instances in the study")
    ap.add_argument("--size", choices=sorted(SIZES), default="ct")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="strata-router-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "cache"
    dest = Destination(work)
    source = Source(work, dest)
    strata = RoutingStrata(work, dest, args.count)
    modes = {"orthanc": "", "strata as stored": "PLAIN", "strata j2k": "J2K",
             "strata as stored, 4 assocs": "PLAIN4"}  # fmt: skip
    samples: dict[str, list[float]] = {m: [] for m in modes}
    mb = 0.0
    try:
        dest.start()
        source.start()
        strata.start()
        for run in range(args.runs):
            for i, (mode, aec) in enumerate(modes.items()):
                gen = generate(work / f"s{run}-{i}", SIZES[args.size], args.count,
                               args.count, cache, f"route{run}")  # fmt: skip
                mb = gen.bytes_total / 1e6
                study = gen.study_uids[0]
                if mode == "orthanc":
                    r = storescu(gen.files, source.aet, source.dicom_port, 1, work / "o")
                    if r.problems:
                        raise RuntimeError("; ".join(r.problems))
                    seconds = source.forward(study)
                else:
                    r = storescu(gen.files, aec, strata.store_port, 1, work / "s")
                    if r.problems:
                        raise RuntimeError("; ".join(r.problems))
                    seconds, n = strata.route_seconds(study)
                    assert n == args.count, f"route carried {n} of {args.count} instances"
                samples[mode].append(seconds)
                log(f"run {run + 1} {mode}: {args.count / seconds:.0f} instances/s")
        expected = args.count * args.runs * len(modes)
        got = dest.instance_count()
        if got != expected:
            raise RuntimeError(f"destination holds {got} instances, expected {expected}")
        rows = []
        base = statistics.median(samples["orthanc"])
        for mode, secs in samples.items():
            s = statistics.median(secs)
            rows.append([mode, f"{args.count / s:.0f}", f"{mb / s:.1f}", f"{s:.2f}",
                         f"{base / s:.2f}"])  # fmt: skip
        print(f"forwarding one {args.count}-instance study ({args.size}, {mb:.0f} MB) to Orthanc "
              f"1.10 (one association unless stated), median of {args.runs} runs")  # fmt: skip
        print(table(["sender", "instances/s", "MB/s", "seconds", "vs orthanc"], rows))
        out = Path(__file__).parent / "results" / f"router-{time.strftime('%Y-%m-%d')}.json"
        write_json(out, {"machine": machine(), "args": vars(args) | {"workdir": str(work)},
                         "samples": samples})  # fmt: skip
        return 0
    finally:
        strata.stop()
        source.stop()
        dest.stop()


if __name__ == "__main__":
    sys.exit(main())
