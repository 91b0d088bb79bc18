"""Time to first image for a web viewer: the DICOMweb request sequence a viewer (OHIF) makes to
open a study — QIDO-RS study search -> QIDO-RS series of the study -> series metadata ->
first frame — against Strata and, side by side in the same run, Orthanc 1.10 with its
DICOMweb plugin, serving the same 600-slice 512x512 CT.

    python -m benchmarks.viewer [--slices 600] [--runs 10]
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
    percentile,
    storescu,
    table,
    write_json,
)

FRAME_ACCEPT = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'


class OrthancDicomWeb(Orthanc):
    name = "orthanc+dicomweb"

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg["Plugins"] = ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"]
        cfg["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                           "StudiesMetadata": "Full", "SeriesMetadata": "Full"}
        return cfg

    @property
    def dicomweb_root(self) -> str:
        return f"http://{HOST}:{self.http_port}/dicom-web"


def _get(url: str, accept: str = "application/dicom+json") -> bytes:
    req = urllib.request.Request(url, headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.read()


def first_image(root: str, patient_id: str) -> dict[str, float]:
    """One viewer open: returns the cumulative time (ms) after each step."""
    t0 = time.perf_counter()
    marks = {}
    studies = json.loads(_get(f"{root}/studies?PatientID={patient_id}"))
    study = studies[0]["0020000D"]["Value"][0]
    marks["qido_studies"] = time.perf_counter() - t0
    series = json.loads(_get(f"{root}/studies/{study}/series"))
    se = series[0]["0020000E"]["Value"][0]
    marks["qido_series"] = time.perf_counter() - t0
    md = json.loads(_get(f"{root}/studies/{study}/series/{se}/metadata"))
    md.sort(key=lambda m: int(m.get("00200013", {}).get("Value", [0])[0]))
    sop = md[0]["00080018"]["Value"][0]
    marks["series_metadata"] = time.perf_counter() - t0
    frame = _get(f"{root}/studies/{study}/series/{se}/instances/{sop}/frames/1", FRAME_ACCEPT)
    marks["first_frame"] = time.perf_counter() - t0
    assert len(frame) > 512 * 512, "the first frame is smaller than a 512x512 slice"
    assert len(md) >= 1
    return {k: v * 1000 for k, v in marks.items()} | {"instances_in_metadata": len(md)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=600)
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="strata-viewer-bench-"))
    cache = work / "cache"
    gen = generate(work / "study", SIZES["ct"], args.slices, args.slices, cache, "viewer")
    import pydicom

    patient = str(pydicom.dcmread(str(gen.files[0]), stop_before_pixels=True).PatientID)
    log(f"generated {len(gen.files)} slices of {gen.mean_size / 1e3:.0f} KB, patient {patient}")
    strata, orthanc = Strata(work), OrthancDicomWeb(work)
    results: dict[str, Any] = {"machine": machine(), "slices": args.slices, "runs": args.runs}
    try:
        strata.start()
        orthanc.start()
        for target in (strata, orthanc):
            run = storescu(gen.files, target.aet, target.store_port, 4, work / target.name)
            if run.problems:
                raise RuntimeError("; ".join(run.problems))
            log(f"stored {run.sent_ok} slices into {target.name} ({run.per_second:.0f}/s)")
        s_root = f"http://{HOST}:{strata.env()['STRATA_DICOMWEB_PORT']}/dicom-web"
        roots = {"strata": s_root, "orthanc": orthanc.dicomweb_root}
        # wait until both serve the whole series
        for name, root in roots.items():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if first_image(root, patient)["instances_in_metadata"] == args.slices:
                        break
                except Exception:
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError(f"{name} does not serve all {args.slices} instances")
        samples: dict[str, list[dict[str, float]]] = {"strata": [], "orthanc": []}
        for _ in range(args.runs):  # alternate, so both see the same machine state
            for name, root in roots.items():
                samples[name].append(first_image(root, patient))
        rows = []
        for step in ("qido_studies", "qido_series", "series_metadata", "first_frame"):
            s = [x[step] for x in samples["strata"]]
            o = [x[step] for x in samples["orthanc"]]
            rows.append([step, f"{statistics.median(s):.0f}", f"{percentile(s, 95):.0f}",
                         f"{statistics.median(o):.0f}", f"{percentile(o, 95):.0f}",
                         f"{statistics.median(o) / statistics.median(s):.2f}"])
        results["samples"] = samples
        print(f"time to first image, {args.slices}-slice CT, {args.runs} runs each "
              "(cumulative ms after each step)")
        print(table(["step", "strata p50", "strata p95", "orthanc p50", "orthanc p95",
                     "orthanc/strata"], rows))
        out = Path(__file__).parent / "results" / f"viewer-{time.strftime('%Y-%m-%d')}.json"
        write_json(out, results)
        return 0
    finally:
        strata.stop()
        orthanc.stop()


if __name__ == "__main__":
    sys.exit(main())
