"""Index benchmark: the index at 1M instances (issue 4).

    python -m benchmarks.index [--studies 10000] [--per-study 100] [--queries 200]

What it does, on a real Kafka broker and real chDB, everything on free loopback ports in a
temporary STRATA_HOME (progress on stderr, the table on stdout, JSON in benchmarks/results/):

1. starts an embedded Kafka broker (KRaft) and creates the topics;
2. produces a realistic log of ``studies x per-study`` InstanceStored events (CT/MR/CR/US,
   patients with several studies, names, birth dates, study dates over ten years, accession
   numbers, 1-4 series per study); every header is the DICOM JSON of a real pydicom Dataset
   (common.dicom.header_json), built once per series, with only what differs per instance
   (SOPInstanceUID, InstanceNumber, slice position) varied;
3. replays the log into a fresh chDB index (processors.replay.replay, the live write path):
   events/s and the index size on disk, as replayed and after OPTIMIZE FINAL;
4. measures study search at that size in-process (what the C-FIND SCP runs: the index's search SQL,
   then the encoded response identifier of every match): by exact PatientID, by
   PatientName prefix wildcard, by StudyDate month + ModalitiesInStudy=CT (p50/p99), plus
   instance lookups; then the same STUDY searches through the real C-FIND SCP (step 5's stack);
5. starts the archive (``strata up``) on that Kafka and that index (the index node's consumer
   group is set to the log end first, so it does not re-read the log), sends instances one at a
   time (pynetdicom C-STORE, TCP_NODELAY) and polls C-FIND (IMAGE level) every ~5 ms until each
   is visible: store-response -> visible latency at 1M; then the same on a fresh empty archive,
   and the ratio;
6. prints one table, writes JSON, and (for a full-size run) updates the "Index at 1M instances
   (issue 4)" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks.common import associate, c_find, free_port

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"
MD_SECTION = "## Index at 1M instances (issue 4)"
HOST = "127.0.0.1"
# Ports other people use on shared machines: never picked, even when free.
CALLING_AE = "BENCH"
GROUP_ID = "strata-processors"  # the index node's faust app id = its consumer group

_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- helpers


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return math.nan
    s = sorted(values)
    return s[max(0, min(len(s) - 1, math.ceil(p / 100.0 * len(s)) - 1))]


def stats_ms(seconds: Sequence[float]) -> dict[str, float]:
    ms = [x * 1000.0 for x in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2) if ms else math.nan,
        "mean_ms": round(sum(ms) / len(ms), 2) if ms else math.nan,
    }


def machine() -> dict[str, str]:
    def run(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    model = ""
    for line in run("lscpu").splitlines():
        if line.startswith("Model name"):
            model = line.split(":", 1)[1].strip()
    mem = ""
    for line in run("free", "-g").splitlines():
        if line.startswith("Mem:"):
            mem = line.split()[1]
    return {
        "nproc": run("nproc"),
        "memory_gib": mem,
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def git_revision() -> str:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            cwd=ROOT,
        ).stdout.strip()
        return r.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return ""


def du_bytes(path: Path) -> int:
    """Disk usage (allocated blocks, so Kafka's preallocated sparse index files count for
    what they really take)."""
    r = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True)
    try:
        return int(r.stdout.split()[0])
    except (IndexError, ValueError):
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def children_cpu() -> float:
    """CPU seconds of this process's finished (waited-for) children: the replay's projector
    processes (the Kafka broker is still running, so not counted)."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def table(headers: list[str], rows: Iterable[Iterable[object]]) -> str:
    cells = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=False)]
    fmt = "| " + " | ".join(f"{{:<{w}}}" for w in widths) + " |"
    out = [fmt.format(*headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [fmt.format(*r) for r in cells]
    return "\n".join(out)


# ----------------------------------------------------------------------------- synthetic log
FAMILY = (  # noqa: SIM905 - a word list reads best as text
    "SMITH JOHNSON WILLIAMS BROWN JONES GARCIA MILLER DAVIS RODRIGUEZ MARTINEZ HERNANDEZ LOPEZ "
    "GONZALEZ WILSON ANDERSON THOMAS TAYLOR MOORE JACKSON MARTIN LEE PEREZ THOMPSON WHITE HARRIS "
    "SANCHEZ CLARK RAMIREZ LEWIS ROBINSON WALKER YOUNG ALLEN KING WRIGHT SCOTT TORRES NGUYEN HILL "
    "FLORES GREEN ADAMS NELSON BAKER HALL RIVERA CAMPBELL MITCHELL CARTER ROBERTS MUELLER SCHMIDT "
    "SCHNEIDER FISCHER WEBER MEYER WAGNER BECKER SCHULZ HOFFMANN DUBOIS DURAND LEROY MOREAU "
    "LAURENT ROSSI RUSSO FERRARI ESPOSITO BIANCHI ROMANO COLOMBO JANSEN DEJONG VISSER NOWAK "
    "KOWALSKI WISNIEWSKI JOHANSSON ANDERSSON NILSSON ERIKSSON LARSEN HANSEN NIELSEN KIM PARK CHOI "
    "TANAKA SUZUKI SATO WATANABE ITO YAMAMOTO NAKAMURA WANG LI ZHANG LIU CHEN YANG HUANG ZHAO "
    "O'BRIEN MURPHY KELLY SULLIVAN WALSH OCONNOR MCCARTHY DOYLE SILVA SANTOS OLIVEIRA SOUZA COSTA "
    "PEREIRA ALMEIDA FERREIRA IVANOV SMIRNOV KUZNETSOV POPOV PETROV SOKOLOV COHEN LEVI MIZRAHI"
).split() + ["MÜLLER", "SCHRÖDER", "GÖTZ", "LÓPEZ", "NÚÑEZ", "JAŠEK", "ÅBERG", "BJÖRK"]
GIVEN_M = (  # noqa: SIM905
    "JAMES JOHN ROBERT MICHAEL WILLIAM DAVID RICHARD JOSEPH THOMAS CHARLES CHRISTOPHER DANIEL "
    "MATTHEW ANTHONY MARK DONALD STEVEN PAUL ANDREW JOSHUA KENNETH KEVIN BRIAN GEORGE TIMOTHY "
    "HANS PETER KLAUS JEAN PIERRE LUCA MARCO JAN PIOTR LARS ERIK HIROSHI WEI JUAN CARLOS JÜRGEN"
).split()
GIVEN_F = (  # noqa: SIM905
    "MARY PATRICIA JENNIFER LINDA ELIZABETH BARBARA SUSAN JESSICA SARAH KAREN LISA NANCY BETTY "
    "MARGARET SANDRA ASHLEY KIMBERLY EMILY DONNA MICHELLE CAROL AMANDA MELISSA DEBORAH STEPHANIE "
    "ANNA MARIA SOPHIE CLAIRE GIULIA EVA INGRID YUKI MEI LUCIA ANA HELGA SØREN-ANNE RENÉE"
).split()
MIDDLE = list("ABCDEFGHJKLMNPRSTW") + [""] * 12
PHYSICIANS = [
    "HOUSE^GREGORY^^DR",
    "WELBY^MARCUS^^DR",
    "KILDARE^JAMES^^DR",
    "GREY^MEREDITH^^DR",
    "ROSS^DOUGLAS^^DR",
    "CARTER^JOHN^^DR",
    "QUINN^MICHAELA^^DR",
    "",
]


@dataclass(frozen=True)
class ModalitySpec:
    modality: str
    weight: float
    sop_class: str
    size_bytes: int
    rows: int
    columns: int
    bits_stored: int
    studies: tuple[tuple[str, str, tuple[str, ...]], ...]  # (description, body part, series)
    station: str
    manufacturer: str
    model: str


MODALITIES = [
    ModalitySpec(
        "CT",
        0.40,
        "1.2.840.10008.5.1.4.1.1.2",
        526_000,
        512,
        512,
        12,
        (
            ("CT CHEST W/O CONTRAST", "CHEST", ("SCOUT", "AXIAL 1.25MM LUNG", "AXIAL 5MM STD")),
            ("CT ABDOMEN PELVIS W CONTRAST", "ABDOMEN", ("SCOUT", "PORTAL VENOUS 3MM", "COR MPR")),
            ("CT HEAD W/O CONTRAST", "HEAD", ("SCOUT", "AXIAL 5MM BRAIN", "AXIAL 2.5MM BONE")),
            ("CTA PULMONARY", "CHEST", ("SCOUT", "ARTERIAL 1MM", "MIP AXIAL", "COR MPR")),
        ),
        "CT01",
        "GE MEDICAL SYSTEMS",
        "Revolution CT",
    ),
    ModalitySpec(
        "MR",
        0.25,
        "1.2.840.10008.5.1.4.1.1.4",
        140_000,
        256,
        256,
        12,
        (
            ("MR BRAIN W/WO CONTRAST", "HEAD", ("T1 SAG", "T2 AX", "FLAIR AX", "T1 AX POST")),
            ("MR KNEE LEFT W/O CONTRAST", "KNEE", ("PD COR", "PD FS SAG", "T1 SAG")),
            ("MR LUMBAR SPINE", "LSPINE", ("T2 SAG", "T1 SAG", "T2 AX")),
        ),
        "MR3T",
        "SIEMENS",
        "MAGNETOM Vida",
    ),
    ModalitySpec(
        "CR",
        0.20,
        "1.2.840.10008.5.1.4.1.1.1",
        8_400_000,
        2800,
        2300,
        12,
        (
            ("XR CHEST PA AND LATERAL", "CHEST", ("PA", "LAT")),
            ("XR HAND 3 VIEWS RIGHT", "HAND", ("PA", "OBLIQUE", "LAT")),
        ),
        "CR02",
        "CARESTREAM HEALTH",
        "DRX-Evolution",
    ),
    ModalitySpec(
        "US",
        0.15,
        "1.2.840.10008.5.1.4.1.1.6.1",
        620_000,
        600,
        800,
        8,
        (
            ("US ABDOMEN COMPLETE", "ABDOMEN", ("LIVER", "KIDNEYS", "GALLBLADDER", "SPLEEN")),
            ("US THYROID", "NECK", ("THYROID",)),
        ),
        "US05",
        "PHILIPS",
        "EPIQ 7G",
    ),
]
_MOD_WEIGHTS = [m.weight for m in MODALITIES]

# Placeholders in a study's header JSON, replaced per series and per instance.
SERIES_MARK = "8.8.8.8.8.8.8.8.876543210"
SNUM_MARK = "876543210"
SDESC_MARK = "SERIES-DESCRIPTION-MARK"
SOP_MARK = "9.9.9.9.9.9.9.9.987654321"
INUM_MARK = "987654321"
Z_MARK = "-98765.4321"
FIRST_YEAR, YEARS = 2015, 11  # study dates 2015-01-01 .. 2025-12-31


@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


@dataclass
class GenResult:
    events: int
    studies: int
    series: int
    patients: list[Patient]
    months: list[str]  # 'YYYYMM' with at least one study
    sample_instances: list[tuple[str, str, str]]  # (study, series, sop) for lookups
    header_bytes_mean: int
    seconds: float
    event_bytes: int

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _uid(rng: random.Random) -> str:
    """A UUID-derived UID (PS3.5 B.2): 2.25.<128-bit integer>."""
    return f"2.25.{rng.getrandbits(128)}"


def _patients(rng: random.Random, n: int) -> list[Patient]:
    out = []
    ids: set[str] = set()
    for _ in range(n):
        sex = rng.choice("MF")
        given = rng.choice(GIVEN_M if sex == "M" else GIVEN_F)
        name = f"{rng.choice(FAMILY)}^{given}"
        middle = rng.choice(MIDDLE)
        if middle:
            name += f"^{middle}"
        pid = f"MRN{rng.randrange(10**7):07d}"
        while pid in ids:
            pid = f"MRN{rng.randrange(10**7):07d}"
        ids.add(pid)
        born = date(1930, 1, 1) + timedelta(days=rng.randrange(365 * 90))
        out.append(Patient(pid, name, born.strftime("%Y%m%d"), sex))
    return out


def _study_header(
    spec: ModalitySpec, patient: Patient, study: dict[str, Any], frame_uid: str
) -> str:
    """The DICOM JSON of a realistic instance of this study (a real pydicom Dataset through
    common.dicom.header_json), with placeholders for what differs per series and instance."""
    from pydicom import Dataset

    from strata.common.dicom import header_json

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"] + (["AXIAL"] if spec.modality in ("CT", "MR") else [])
    ds.InstanceCreationDate = study["date"]
    ds.InstanceCreationTime = study["time"]
    ds.SOPClassUID = spec.sop_class
    ds.SOPInstanceUID = SOP_MARK
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study["date"]
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = study["time"]
    ds.AccessionNumber = study["accession"]
    ds.Modality = spec.modality
    ds.Manufacturer = spec.manufacturer
    ds.InstitutionName = "GENERAL HOSPITAL"
    ds.InstitutionAddress = "1 HOSPITAL ROAD, SPRINGFIELD"
    ds.ReferringPhysicianName = study["referring"]
    ds.StationName = spec.station
    ds.StudyDescription = study["description"]
    ds.SeriesDescription = SDESC_MARK
    ds.InstitutionalDepartmentName = "RADIOLOGY"
    ds.PerformingPhysicianName = ""
    ds.OperatorsName = "TECH^ALEX"
    ds.ManufacturerModelName = spec.model
    proc = Dataset()
    proc.CodeValue = study["description"][:16].replace(" ", "")
    proc.CodingSchemeDesignator = "LOCAL"
    proc.CodeMeaning = study["description"]
    ds.ProcedureCodeSequence = [proc]
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "GH"
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    age = int(study["date"][:4]) - int(patient.birth_date[:4])
    ds.PatientAge = f"{max(0, age):03d}Y"
    ds.PatientWeight = str(50 + int(patient.patient_id[3:]) % 50)
    ds.BodyPartExamined = study["body_part"]
    ds.DeviceSerialNumber = "SN" + spec.station
    ds.SoftwareVersions = "v1.7.2"
    ds.ProtocolName = study["description"]
    ds.PatientPosition = "HFS" if spec.modality in ("CT", "MR") else ""
    if spec.modality == "CT":
        ds.ScanOptions = "HELICAL MODE"
        ds.SliceThickness = "1.25"
        ds.KVP = "120"
        ds.DataCollectionDiameter = "500"
        ds.ReconstructionDiameter = "360"
        ds.DistanceSourceToDetector = "949.075"
        ds.DistanceSourceToPatient = "541"
        ds.GantryDetectorTilt = "0"
        ds.TableHeight = "160"
        ds.RotationDirection = "CW"
        ds.ExposureTime = "500"
        ds.XRayTubeCurrent = "250"
        ds.Exposure = "125"
        ds.FilterType = "BODY FILTER"
        ds.ConvolutionKernel = "STANDARD"
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.WindowCenter = "40"
        ds.WindowWidth = "400"
    elif spec.modality == "MR":
        ds.ScanningSequence = ["SE"]
        ds.SequenceVariant = ["SK", "SP"]
        ds.MRAcquisitionType = "2D"
        ds.SliceThickness = "3"
        ds.RepetitionTime = "4000"
        ds.EchoTime = "90"
        ds.MagneticFieldStrength = "3"
        ds.EchoTrainLength = "16"
        ds.FlipAngle = "150"
    elif spec.modality == "CR":
        ds.ViewPosition = "PA"
        ds.KVP = "110"
        ds.ExposureTime = "10"
        ds.ImagerPixelSpacing = ["0.139", "0.139"]
    else:
        ds.TransducerData = ["C5-1"]
    ds.StudyInstanceUID = study["uid"]
    ds.SeriesInstanceUID = SERIES_MARK
    ds.StudyID = study["study_id"]
    ds.SeriesNumber = SNUM_MARK
    ds.AcquisitionNumber = "1"
    ds.InstanceNumber = INUM_MARK
    if spec.modality in ("CT", "MR"):
        ds.ImagePositionPatient = ["-180", "-180", Z_MARK]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.SliceLocation = Z_MARK
    ds.SamplesPerPixel = 1 if spec.modality != "US" else 3
    ds.PhotometricInterpretation = "MONOCHROME2" if spec.modality != "US" else "RGB"
    ds.Rows = spec.rows
    ds.Columns = spec.columns
    ds.PixelSpacing = ["0.703125", "0.703125"]
    ds.BitsAllocated = 16 if spec.bits_stored > 8 else 8
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    text = header_json(ds)
    for mark in (
        f'"{SOP_MARK}"',
        f"[{INUM_MARK}]",
        f'"{SERIES_MARK}"',
        f"[{SNUM_MARK}]",
        f'"{SDESC_MARK}"',
    ):
        assert text.count(mark) == 1, mark
    return text


def generate(
    settings: Any, n_studies: int, per_study: int, seed: int, samples: int = 2000
) -> GenResult:
    """Produce ``n_studies * per_study`` InstanceStored events (keyed by StudyInstanceUID)."""
    from confluent_kafka import KafkaException

    from strata.common import kafka
    from strata.common.events import envelope
    from strata.proto.strata.v1 import events_pb2 as pb

    rng = random.Random(seed)
    patients = _patients(rng, max(1, int(n_studies * 0.6)))
    # A few patients have many studies (follow-ups), most have one or two.
    weights = [1.0 / (1 + (i % 50)) for i in range(len(patients))]
    producer = kafka.producer(settings, "bulk", "bench")
    failures: list[str] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    topic = settings.study_topic
    node = "node-1"
    span_days = (date(FIRST_YEAR + YEARS, 1, 1) - date(FIRST_YEAR, 1, 1)).days
    months: set[str] = set()
    sample_every = max(1, (n_studies * per_study) // samples)
    sample: list[tuple[str, str, str]] = []
    n = n_series = 0
    header_bytes = 0
    event_bytes = 0
    t0 = time.monotonic()
    last_log = t0
    for s in range(n_studies):
        spec = rng.choices(MODALITIES, weights=_MOD_WEIGHTS)[0]
        patient = rng.choices(patients, weights=weights)[0]
        desc, body, series_names = rng.choice(spec.studies)
        day = date(FIRST_YEAR, 1, 1) + timedelta(days=rng.randrange(span_days))
        hh, mm, ss = rng.randrange(7, 20), rng.randrange(60), rng.randrange(60)
        study = {
            "uid": _uid(rng),
            "date": day.strftime("%Y%m%d"),
            "time": f"{hh:02d}{mm:02d}{ss:02d}",
            "accession": f"GH{day.strftime('%y%m%d')}{s % 100000:05d}",
            "study_id": str(rng.randrange(1, 99999)),
            "description": desc,
            "body_part": body,
            "referring": rng.choice(PHYSICIANS),
        }
        months.add(study["date"][:6])
        started = datetime(day.year, day.month, day.day, hh, mm, ss, tzinfo=UTC)
        started_s = int(started.timestamp())
        study_tpl = _study_header(spec, patient, study, _uid(rng))
        # 1-4 series per study (bounded by the protocol's series), instances split among them.
        k = min(len(series_names), rng.randint(1, 4))
        counts = [per_study // k] * k
        for j in range(per_study - sum(counts)):
            counts[j] += 1
        inst = 0
        for j, count in enumerate(counts):
            if count == 0:
                continue
            series_uid = _uid(rng)
            n_series += 1
            tpl = (
                study_tpl.replace(f'"{SERIES_MARK}"', f'"{series_uid}"')
                .replace(f"[{SNUM_MARK}]", f"[{j + 1}]")
                .replace(f'"{SDESC_MARK}"', json.dumps(series_names[j], ensure_ascii=False))
            )
            a, rest = tpl.split(f'"{SOP_MARK}"')
            b, c = rest.split(f"[{INUM_MARK}]")
            header_bytes += len(tpl) * count
            for i in range(count):
                sop = f"{series_uid}.{i + 1}"
                z = f"{-100.0 - 1.25 * i:.2f}"
                hjson = f'{a}"{sop}"{b}[{i + 1}]{c}'.replace(Z_MARK, z)
                received_s = started_s + 2 + inst // 4
                inst += 1
                payload = pb.InstanceStored(
                    sop_class_uid=spec.sop_class,
                    sop_instance_uid=sop,
                    series_instance_uid=series_uid,
                    study_instance_uid=study["uid"],
                    patient=pb.PatientRef(patient_id=patient.patient_id, issuer_of_patient_id="GH"),
                    modality=spec.modality,
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    size_bytes=spec.size_bytes + rng.randrange(4096),
                    sha256=f"{rng.getrandbits(256):064x}",
                    location=pb.StorageLocation(
                        tier="hot", key=f"studies/{study['uid']}/{series_uid}/{sop}.dcm"
                    ),
                    calling_ae_title=spec.station,
                    called_ae_title="STRATA",
                    peer_address="10.1.2.3:40000",
                    ingest_node=node,
                    header_json=hjson,
                    received_via="store",
                )
                payload.received_at.seconds = received_s
                env = envelope(
                    payload,
                    study_uid=study["uid"],
                    service="ingest",
                    node=node,
                    occurred_at=datetime.fromtimestamp(received_s, UTC),
                    event_id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                )
                value = env.SerializeToString()
                event_bytes += len(value)
                while True:
                    try:
                        producer.produce(
                            topic, key=study["uid"].encode(), value=value, on_delivery=on_delivery
                        )
                        break
                    except BufferError:
                        producer.poll(0.05)
                    except KafkaException as exc:
                        raise RuntimeError(f"produce failed: {exc}") from exc
                n += 1
                if n % sample_every == 0:
                    sample.append((study["uid"], series_uid, sop))
                if n % 5000 == 0:
                    producer.poll(0)
        now = time.monotonic()
        if now - last_log > 10:
            last_log = now
            log(f"  produced {n:,} events ({n / (now - t0):,.0f}/s)")
    left = producer.flush(120)
    seconds = time.monotonic() - t0
    if left or failures:
        raise RuntimeError(f"{left} events not delivered, {len(failures)} failed: {failures[:3]}")
    return GenResult(
        events=n,
        studies=n_studies,
        series=n_series,
        patients=patients,
        months=sorted(months),
        sample_instances=sample,
        header_bytes_mean=header_bytes // max(1, n),
        seconds=seconds,
        event_bytes=event_bytes,
    )


# ----------------------------------------------------------------------------- queries
STUDY_RETURN_KEYS = [
    "StudyInstanceUID",
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
]


def study_query_sets(gen: GenResult, n: int, seed: int) -> dict[str, list[dict[str, str]]]:
    """Random matching values for the three STUDY-level searches (same values for every way
    of querying: in-process and through the C-FIND SCP)."""
    rng = random.Random(seed)
    by_pid, by_name, by_date = [], [], []
    for _ in range(n):
        p = rng.choice(gen.patients)
        by_pid.append({"PatientID": p.patient_id})
        family = p.name.split("^")[0]
        by_name.append({"PatientName": family[: rng.choice((3, 3, 4))] + "*"})
        month = rng.choice(gen.months)
        y, m = int(month[:4]), int(month[4:])
        first = date(y, m, 1)
        last = (first + timedelta(days=32)).replace(day=1) - timedelta(days=1)
        # a one-month window starting on a random day of that month
        start = first + timedelta(days=rng.randrange((last - first).days + 1))
        end = start + timedelta(days=30)
        by_date.append(
            {
                "StudyDate": f"{start:%Y%m%d}-{end:%Y%m%d}",
                "ModalitiesInStudy": "CT",
            }
        )
    return {
        "study_by_patient_id": by_pid,
        "study_by_name_wildcard": by_name,
        "study_by_date_month_ct": by_date,
    }


QUERY_LABELS = {
    "study_by_patient_id": "STUDY by exact PatientID",
    "study_by_name_wildcard": "STUDY by PatientName prefix* (random)",
    "study_by_date_month_ct": "STUDY by StudyDate 1 month + ModalitiesInStudy=CT",
    "image_by_uids": "IMAGE by Study+Series+SOP Instance UID (hierarchical)",
    "image_by_sop_only": "IMAGE by SOPInstanceUID only (relational)",
}


def study_keys(match: dict[str, str]) -> list[tuple[str, str]]:
    keys = [(k, match.get(k, "")) for k in STUDY_RETURN_KEYS]
    keys += [(k, v) for k, v in match.items() if k not in STUDY_RETURN_KEYS]
    return keys


def image_keys(study: str, series: str, sop: str, hierarchical: bool) -> list[tuple[str, str]]:
    return [
        ("StudyInstanceUID", study if hierarchical else ""),
        ("SeriesInstanceUID", series if hierarchical else ""),
        ("SOPInstanceUID", sop),
        ("SOPClassUID", ""),
        ("InstanceNumber", ""),
    ]


def timed_find(index: Any, q: Any) -> tuple[int, float, float]:
    """What the C-FIND SCP does for a search (query.scp: find_rows, then to_bytes per match),
    step by step: (matches, seconds in the SQL query, seconds in total including the encoded
    response identifiers, explicit VR little endian)."""
    from strata.processors.index.search import build_sql, row_dict
    from strata.query.find import to_bytes

    t0 = time.perf_counter()
    sql, params, cols = build_sql(q, index.database, only_requested=True)
    rows = index.query(sql, params)
    t1 = time.perf_counter()
    out = [to_bytes(q, row_dict(cols, row), False) for row in rows]
    return len(out), t1 - t0, time.perf_counter() - t0


def run_inprocess_queries(
    index: Any, qsets: dict[str, list[dict[str, str]]], gen: GenResult, n: int, seed: int
) -> dict[str, Any]:
    from strata.query.find import FindQuery

    out: dict[str, Any] = {"load_avg_before": loadavg()}
    rng = random.Random(seed + 1)
    picks = [rng.choice(gen.sample_instances) for _ in range(n)]
    plans: dict[str, list[Any]] = {
        name: [FindQuery("STUDY", study_keys(m), 10000) for m in matches]
        for name, matches in qsets.items()
    }
    for name, hier in (("image_by_uids", True), ("image_by_sop_only", False)):
        plans[name] = [
            FindQuery("IMAGE", image_keys(st, se, sop, hier), 10000)
            for st, se, sop in picks[: n if hier else max(20, n // 4)]
        ]
    for name, queries in plans.items():
        timed_find(index, queries[0])  # warm-up (first query of a kind loads marks)
        totals, sqls, hits = [], [], []
        for q in queries:
            k, t_sql, t_total = timed_find(index, q)
            totals.append(t_total)
            sqls.append(t_sql)
            hits.append(k)
        sql = stats_ms(sqls)
        out[name] = {
            **stats_ms(totals),
            "sql_p50_ms": sql["p50_ms"],
            "sql_p99_ms": sql["p99_ms"],
            "matches_mean": round(sum(hits) / len(hits), 1),
        }
        log(f"  {QUERY_LABELS[name]}: {out[name]}")
    return out


# ----------------------------------------------------------------------------- DIMSE
def identifier(level: str, keys: list[tuple[str, str]]) -> Any:
    from pydicom import Dataset

    ds = Dataset()
    if not all(v.isascii() for _k, v in keys):
        ds.SpecificCharacterSet = "ISO_IR 192"  # e.g. a name prefix 'MÜL*'
    ds.QueryRetrieveLevel = level
    for k, v in keys:
        setattr(ds, k, v)
    return ds


def run_cfind_queries(port: int, aec: str, qsets: dict[str, list[dict[str, str]]]) -> dict:
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

    assoc = associate(port, aec, [(FIND,)])
    out: dict[str, Any] = {"load_avg_before": loadavg()}
    try:
        _timed_study_finds(lambda ds: c_find(assoc, ds), qsets, "C-FIND", out)
    finally:
        assoc.release()
    return out


def _timed_study_finds(
    find: Any, qsets: dict[str, list[dict[str, str]]], label: str, out: dict[str, Any]
) -> None:
    """Every STUDY search of ``qsets`` through ``find`` (identifier -> matches), one warm-up
    per kind first; per kind into ``out``: latency stats and the mean number of matches."""
    for name, matches in qsets.items():
        find(identifier("STUDY", study_keys(matches[0])))  # warm-up
        times, hits = [], []
        for m in matches:
            ds = identifier("STUDY", study_keys(m))
            t = time.perf_counter()
            res = find(ds)
            times.append(time.perf_counter() - t)
            hits.append(len(res))
        out[name] = {**stats_ms(times), "matches_mean": round(sum(hits) / len(hits), 1)}
        log(f"  {label} {QUERY_LABELS[name]}: {out[name]}")


def run_cfind_queries_lean(port: int, aec: str, qsets: dict[str, list[dict[str, str]]]) -> dict:
    """The same searches from a lean C-FIND SCU (the archive's requestor, dicomnet/requestor.py):
    one association, every response identifier decoded by pydicom as a viewer would, but
    without pynetdicom's ~0.5 ms of client CPU per match, so the archive's side shows."""
    from io import BytesIO

    from pynetdicom.dsutils import decode, encode

    from strata.dicomnet import dul
    from strata.dicomnet.requestor import IMPLICIT_LE, Requestor, find_command

    find_uid = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R information model - FIND
    r = Requestor("127.0.0.1", port, "BENCH", aec, [(find_uid, [IMPLICIT_LE])])
    pc = r.context(find_uid)
    msg = 0

    def c_find_lean(ds: Any) -> list[Any]:
        nonlocal msg
        msg += 1
        r.send_message(pc, find_command(find_uid, msg), encode(ds, True, True))
        found = []
        while True:
            _, rsp, data = r.receive()
            status = dul.us(rsp, dul.STATUS)
            if status not in (0xFF00, 0xFF01):
                if status != 0:
                    raise RuntimeError(f"C-FIND failed: 0x{status:04X}")
                return found
            found.append(decode(BytesIO(data or b""), True, True))

    out: dict[str, Any] = {"load_avg_before": loadavg(), "client": "lean SCU (dicomnet/requestor)"}
    try:
        _timed_study_finds(c_find_lean, qsets, "C-FIND (lean SCU)", out)
    finally:
        r.release()
    return out


def run_cfind_queries_findscu(
    port: int, aec: str, qsets: dict[str, list[dict[str, str]]], per_kind: int = 50
) -> dict:
    """The first ``per_kind`` searches of each kind with DCMTK findscu, as a workstation
    script would run it: one process and one association per search, every response written
    to a file (-X). The time includes starting the process (DCMTK's dictionary load) and the
    association; the process start alone is measured too (findscu --version)."""
    import subprocess
    import tempfile

    env = {**os.environ, "TCP_NODELAY": "1"}
    starts = []
    for _ in range(20):
        t = time.perf_counter()
        subprocess.run(["findscu", "--version"], capture_output=True, env=env, check=True)
        starts.append(time.perf_counter() - t)
    out: dict[str, Any] = {
        "load_avg_before": loadavg(),
        "client": "DCMTK findscu, one process + association per search",
        "process_start": stats_ms(starts),
    }
    for name, matches in qsets.items():
        times, hits = [], []
        for m in matches[:per_kind]:
            with tempfile.TemporaryDirectory() as d:
                args = ["findscu", "-S", "-aet", "BENCH", "-aec", aec, "-X", "-od", d]
                args += ["-k", "QueryRetrieveLevel=STUDY"]
                for k, v in study_keys(m):
                    args += ["-k", f"{k}={v}" if v else k]
                args += ["127.0.0.1", str(port)]
                t = time.perf_counter()
                r = subprocess.run(args, capture_output=True, env=env)
                times.append(time.perf_counter() - t)
                if r.returncode != 0:
                    raise RuntimeError(f"findscu failed: {r.stderr[-300:]!r}")
                hits.append(len(os.listdir(d)))
        out[name] = {**stats_ms(times), "matches_mean": round(sum(hits) / len(hits), 1)}
        log(f"  C-FIND (findscu) {QUERY_LABELS[name]}: {out[name]}")
    return out


def synthetic_instances(n: int, per_study: int, label: str) -> list[Any]:
    """Small CT instances (128x128, ~40 KB) in fresh studies of ``per_study`` instances."""
    from pydicom import Dataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    pixels = bytes(128 * 128 * 2)
    out = []
    now = datetime.now()
    for i in range(n):
        k = i % per_study
        if k == 0:
            study, series = generate_uid(), generate_uid()
            s = i // per_study + 1
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
        ds.AccessionNumber = f"LAT{label}{s:04d}"
        ds.Modality = "CT"
        ds.ReferringPhysicianName = "HOUSE^GREGORY"
        ds.StudyDescription = "CT CHEST LATENCY PROBE"
        ds.SeriesDescription = "AXIAL 5MM"
        ds.PatientName = f"LATENCY^{label.upper()}^{s}"
        ds.PatientID = f"LAT-{label}-{s}"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "O"
        ds.BodyPartExamined = "CHEST"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = str(s)
        ds.SeriesNumber = "1"
        ds.InstanceNumber = str(k + 1)
        ds.ImagePositionPatient = ["-180", "-180", f"{-1.25 * k:.2f}"]
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = ds.Columns = 128
        ds.PixelSpacing = ["2.8125", "2.8125"]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        ds["PixelData"].VR = "OW"
        ds.file_meta = Dataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        out.append(ds)
    return out


class LatencyProbe:
    """Sends instances to one archive one at a time; after each success polls C-FIND (IMAGE
    level, Study Root, Study/Series/SOP Instance UID) every ``poll`` s until it is visible."""

    def __init__(self, stack: Stack, n: int, label: str, poll: float = 0.005) -> None:
        from pydicom.uid import ExplicitVRLittleEndian
        from pynetdicom.sop_class import CTImageStorage
        from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND

        self.label, self.poll = label, poll
        self.instances = synthetic_instances(n, 20, label)
        self.store = associate(
            stack.ingest_port, "STRATA", [(CTImageStorage, [ExplicitVRLittleEndian])]
        )
        self.find = associate(stack.qr_port, "STRATA_QR", [(FIND,)])
        self.store_rtt: list[float] = []
        self.visible: list[float] = []
        self.polls: list[int] = []
        self.failures = 0

    def step(self, i: int) -> None:
        ds = self.instances[i]
        t0 = time.perf_counter()
        st = self.store.send_c_store(ds)
        t1 = time.perf_counter()
        if not st or st.Status != 0:
            self.failures += 1
            return
        self.store_rtt.append(t1 - t0)
        q = identifier(
            "IMAGE",
            image_keys(
                ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, hierarchical=True
            ),
        )
        k = 0
        while True:
            k += 1
            tq = time.perf_counter()
            try:
                found = c_find(self.find, q)
            except RuntimeError as exc:
                raise RuntimeError(
                    f"{self.label}: instance {i}, poll {k}, "
                    f"{time.perf_counter() - tq:.1f} s into the C-FIND: {exc}"
                ) from exc
            if found:
                self.visible.append(time.perf_counter() - t1)
                break
            if tq > t1 + 60:
                raise RuntimeError(f"{self.label}: instance {i} not visible after 60 s")
            time.sleep(max(0.0, self.poll - (time.perf_counter() - tq)))
        self.polls.append(k)

    def close(self) -> None:
        for assoc in (self.store, self.find):
            with contextlib.suppress(Exception):
                assoc.release()

    def result(self) -> dict[str, Any]:
        return {
            "visible": stats_ms(self.visible),
            "store_rtt": stats_ms(self.store_rtt),
            "polls_mean": round(sum(self.polls) / max(1, len(self.polls)), 1),
            "failures": self.failures,
        }


def ingest_latency(stacks: dict[str, Stack], n: int) -> dict[str, dict[str, Any]]:
    """The same measurement on several archives, interleaved instance by instance (A, B, A,
    B, ...) so that every archive sees the same background load of a shared machine."""
    probes = {label: LatencyProbe(stack, n, label) for label, stack in stacks.items()}
    load0 = loadavg()
    try:
        for i in range(n):
            for probe in probes.values():
                probe.step(i)
            if (i + 1) % 50 == 0:
                log(f"  {i + 1}/{n} instances stored+visible on each archive")
    finally:
        for probe in probes.values():
            probe.close()
    load = [load0, loadavg()]
    return {label: {**p.result(), "load_avg_before_after": load} for label, p in probes.items()}


# ----------------------------------------------------------------------------- the stack
@dataclass
class Stack:
    """One archive (Kafka, index node, ingest node) in ``home`` on free ports, driven through
    the CLI (``strata up`` / ``strata down``) as a user would."""

    home: Path
    index_dsn: str = ""
    kafka_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    ingest_port: int = field(default_factory=free_port)
    qr_port: int = field(default_factory=free_port)
    ingest_http_port: int = field(default_factory=free_port)
    index_http_port: int = field(default_factory=free_port)
    started: bool = False
    other_ports: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from strata.common.settings import Settings

        # Any other listener a later version adds: a free port too, never a default.
        known = {
            "STRATA_KAFKA_CONTROLLER_PORT",
            "STRATA_INGEST_PORT",
            "STRATA_QR_PORT",
            "STRATA_INGEST_HTTP_PORT",
            "STRATA_INDEX_HTTP_PORT",
        }
        for name, _default, _help in Settings.describe():
            if name.endswith("_PORT") and name not in known:
                self.other_ports[name] = str(free_port())

    def env(self) -> dict[str, str]:
        fixed = {
            **self.other_ports,
            "STRATA_HOME": str(self.home),
            "STRATA_NODE_NAME": "bench-node",
            "STRATA_KAFKA_BOOTSTRAP": f"{HOST}:{self.kafka_port}",
            "STRATA_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "STRATA_INGEST_PORT": str(self.ingest_port),
            "STRATA_QR_PORT": str(self.qr_port),
            "STRATA_INGEST_HTTP_PORT": str(self.ingest_http_port),
            "STRATA_INDEX_HTTP_PORT": str(self.index_http_port),
        }
        if self.index_dsn:
            fixed["STRATA_CLICKHOUSE_DSN"] = self.index_dsn
        return fixed

    def settings(self) -> Any:
        from strata.common.settings import Settings

        return Settings.from_env(self.env())

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        exe = Path(sys.executable).with_name("strata")
        argv = [str(exe)] if exe.exists() else [sys.executable, "-m", "strata.cli.main"]
        base = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}
        return subprocess.run(
            argv + list(args),
            env={**base, **self.env()},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
        )

    def up(self) -> None:
        self.started = True
        r = self.cli("up")
        if r.returncode != 0:
            raise RuntimeError(
                f"strata up failed ({r.returncode}):\n{r.stdout}{r.stderr}\n"
                f"{self.tail('index')}\n{self.tail('ingest')}"
            )

    def down(self) -> None:
        if self.started:
            r = self.cli("down")
            log(f"  strata down: {r.stdout.strip()}")
            self.started = False

    def tail(self, service: str, n: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            text = (self.home / "logs" / f"{service}.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-n:])
        return ""

    def index_positions(self) -> dict[str, dict[int, int]]:
        url = f"http://{HOST}:{self.index_http_port}/positions"
        with urllib.request.urlopen(url, timeout=30) as r:
            raw = json.loads(r.read())
        return {t: {int(p): int(o) for p, o in parts.items()} for t, parts in raw.items()}


def committed_offsets(bootstrap: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from strata.common import kafka

    admin = kafka.admin(bootstrap, "bench")
    req = [ConsumerGroupTopicPartitions(GROUP_ID, [TopicPartition(topic, p) for p in partitions])]
    res = admin.list_consumer_group_offsets(req)[GROUP_ID].result()
    return {tp.partition: tp.offset for tp in res.topic_partitions}


def set_group_offsets(bootstrap: str, ends: dict[str, dict[int, int]]) -> None:
    """Commit the log end as the index node's consumer-group position (the replayed index
    already holds everything before it)."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

    from strata.common import kafka

    admin = kafka.admin(bootstrap, "bench")
    tps = [TopicPartition(t, p, o) for t, parts in ends.items() for p, o in parts.items()]
    fut = admin.alter_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP_ID, tps)])
    fut[GROUP_ID].result()


def wait_caught_up(stack: Stack, min_end: int, timeout: float = 300.0) -> dict[str, Any]:
    """Wait until the study topic's end is >= ``min_end`` (e.g. after the StudyStable burst the
    live index announces for a log of quiet studies), the index holds everything up to the end
    and the consumer group's committed offsets are at the end (nothing re-read)."""
    from strata.processors.replay import end_positions

    s = stack.settings()
    topic = s.study_topic
    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    last = ""
    while time.monotonic() < deadline:
        ends = end_positions(s.kafka_bootstrap, [topic])[topic]
        end = sum(ends.values())
        try:
            done = stack.index_positions().get(topic, {})
        except OSError:
            done = {}
        indexed = sum(min(done.get(p, 0), o) for p, o in ends.items())
        committed = committed_offsets(s.kafka_bootstrap, topic, ends)
        comm = sum(min(max(committed.get(p, 0), 0), o) for p, o in ends.items())
        state = f"end {end:,} indexed {indexed:,} committed {comm:,}"
        if state != last:
            log(f"  {state}")
            last = state
        if end >= min_end and indexed == end and comm == end:
            return {"end": end, "seconds": round(time.monotonic() - t0, 1)}
        time.sleep(1.0)
    raise RuntimeError(f"index did not catch up within {timeout:.0f}s: {last}")


# ----------------------------------------------------------------------------- the run
def run(args: argparse.Namespace) -> dict[str, Any]:
    from strata.common.kafka import ensure_topics
    from strata.common.settings import Settings
    from strata.processors.index.store import IndexStore
    from strata.processors.replay import end_positions, replay
    from strata.stack.kafka import broker

    results: dict[str, Any] = {
        "benchmark": "index",
        "date": datetime.now().isoformat(timespec="seconds"),
        "git": git_revision(),
        "machine": machine(),
        "params": {
            "studies": args.studies,
            "per_study": args.per_study,
            "queries": args.queries,
            "latency_instances": args.latency_n,
            "seed": args.seed,
        },
    }
    parent = Path(args.workdir) if args.workdir else None
    home = Path(tempfile.mkdtemp(prefix="strata-index-bench-", dir=parent))
    stack1 = Stack(home, index_dsn=f"chdb://{(home / 'index-1m').resolve()}")
    settings = Settings.from_env(stack1.env())
    stack2: Stack | None = None
    log(f"STRATA_HOME {home}")
    try:
        # 1. Kafka
        t = time.monotonic()
        broker.start(settings)
        broker.wait_ready(settings, timeout=120)
        ensure_topics(settings)
        log(f"Kafka broker on {settings.kafka_bootstrap} ready in {time.monotonic() - t:.1f}s")

        # 2. the log
        log(f"producing {args.studies * args.per_study:,} InstanceStored events ...")
        load0, cpu0 = loadavg(), time.process_time()
        gen = generate(settings, args.studies, args.per_study, args.seed)
        gen_cpu = time.process_time() - cpu0
        topics = [settings.study_topic, settings.quarantine_topic]
        ends = end_positions(settings.kafka_bootstrap, topics)
        n_log = sum(ends[settings.study_topic].values())
        results["produce"] = {
            "events": gen.events,
            "studies": gen.studies,
            "series": gen.series,
            "patients": len(gen.patients),
            "seconds": round(gen.seconds, 1),
            "events_per_s": round(gen.rate),
            "mean_event_bytes": gen.event_bytes // max(1, gen.events),
            "mean_header_json_bytes": gen.header_bytes_mean,
            "log_end": n_log,
            "cpu_us_per_event": round(gen_cpu / max(1, gen.events) * 1e6, 1),
            "kafka_topic_bytes": sum(
                du_bytes(d) for d in (settings.kafka_dir / "data").glob(f"{settings.study_topic}-*")
            ),
            "load_avg_before_after": [load0, loadavg()],
        }
        log(f"produced: {results['produce']}")
        if n_log != gen.events:
            raise RuntimeError(f"log holds {n_log} events, {gen.events} produced")

        # 3. replay into a fresh chDB index
        path = home / "index-1m"
        path.mkdir()
        index = IndexStore(f"chdb://{path.resolve()}", settings.clickhouse_database)
        index.migrate()
        progress = {"n": 0, "t": time.monotonic()}

        def on_progress(k: int) -> None:
            progress["n"] += k
            if time.monotonic() - progress["t"] > 10:
                progress["t"] = time.monotonic()
                log(f"  replayed {progress['n']:,}")

        log("replaying the log into a fresh chDB index ...")
        load0, cpu0, kids0 = loadavg(), time.process_time(), children_cpu()
        res = replay(settings.kafka_bootstrap, index, ends, on_progress=on_progress)
        # every thread of this process (chDB's too) and of the projector processes it ran
        main_cpu = time.process_time() - cpu0
        projector_cpu = children_cpu() - kids0
        replay_cpu = main_cpu + projector_cpu
        load1 = loadavg()
        db = settings.clickhouse_database
        counts = {
            t: int(index.query(f"SELECT count() FROM {db}.{t} FINAL")[0][0])
            for t in ("instances", "series", "studies", "events")
        }
        parts_sql = (
            f"SELECT count(), sum(bytes_on_disk) FROM system.parts WHERE database='{db}' AND active"
        )
        [(parts, active_bytes)] = index.query(parts_sql)
        results["replay"] = {
            "events": res.events,
            "seconds": round(res.seconds, 1),
            "events_per_s": round(res.rate),
            "cpu_us_per_event": round(replay_cpu / max(1, res.events) * 1e6, 1),
            "cpu_us_per_event_inserting_process": round(main_cpu / max(1, res.events) * 1e6, 1),
            "cpu_us_per_event_projectors": round(projector_cpu / max(1, res.events) * 1e6, 1),
            "load_avg_before_after": [load0, load1],
            "rows_final": counts,
            "index_du_bytes_as_replayed": du_bytes(path),
            "index_active_bytes_as_replayed": int(active_bytes),
            "active_parts_as_replayed": int(parts),
        }
        log(f"replay: {results['replay']}")
        if counts["instances"] != gen.events:
            raise RuntimeError(f"index holds {counts['instances']} instances, {gen.events} sent")

        # 4. search latency in-process
        qsets = study_query_sets(gen, args.queries, args.seed + 7)
        log("in-process search latency (as replayed) ...")
        results["search_inprocess_as_replayed"] = run_inprocess_queries(
            index, qsets, gen, args.queries, args.seed
        )
        log("OPTIMIZE TABLE ... FINAL ...")
        t = time.monotonic()
        # Every table the searches read (study_stats since the study aggregates are stored).
        for tname in (
            "instances",
            "instance_versions",
            "series",
            "studies",
            "events",
            "study_stats",
        ):
            index.client.command(f"OPTIMIZE TABLE {db}.{tname} FINAL")
        results["replay"]["optimize_final_seconds"] = round(time.monotonic() - t, 1)
        [(parts, active_bytes)] = index.query(parts_sql)
        results["replay"]["index_active_bytes_optimized"] = int(active_bytes)
        results["replay"]["active_parts_optimized"] = int(parts)
        log(
            f"  optimized in {results['replay']['optimize_final_seconds']}s, "
            f"{int(active_bytes) / 1e6:.0f} MB in {parts} active parts"
        )
        log("in-process search latency (after OPTIMIZE FINAL) ...")
        results["search_inprocess"] = run_inprocess_queries(
            index, qsets, gen, args.queries, args.seed
        )
        index.close()
        del index

        # 5. the live archive on this log and this index
        set_group_offsets(settings.kafka_bootstrap, ends)
        log("strata up (index at 1M) ...")
        t = time.monotonic()
        stack1.up()
        up_s = time.monotonic() - t
        log(f"  up in {up_s:.1f}s; waiting for the index node (StudyStable burst) ...")
        caught = wait_caught_up(stack1, min_end=n_log + gen.studies)
        results["live_1m"] = {"up_seconds": round(up_s, 1), "caught_up": caught}
        log("C-FIND search latency through the query SCP ...")
        results["search_cfind"] = run_cfind_queries(stack1.qr_port, "STRATA_QR", qsets)
        log("fresh empty archive: strata up ...")
        stack2 = Stack(home / "empty")
        stack2.home.mkdir()
        t = time.monotonic()
        stack2.up()
        results["live_empty"] = {"up_seconds": round(time.monotonic() - t, 1)}
        log(
            f"ingest -> visible latency, archive at {gen.events:,} instances and empty archive, "
            "interleaved ..."
        )
        lat = ingest_latency({"full": stack1, "empty": stack2}, args.latency_n)
        results["live_1m"]["latency"] = lat["full"]
        results["live_empty"]["latency"] = lat["empty"]
        log(f"  at 1M: {lat['full']}")
        log(f"  empty: {lat['empty']}")
        stack1.down()
        stack2.down()
        a = results["live_1m"]["latency"]["visible"]
        b = results["live_empty"]["latency"]["visible"]
        results["latency_ratio"] = {
            "p50": round(a["p50_ms"] / b["p50_ms"], 2),
            "p99": round(a["p99_ms"] / b["p99_ms"], 2),
            "store_rtt_p50": round(
                results["live_1m"]["latency"]["store_rtt"]["p50_ms"]
                / results["live_empty"]["latency"]["store_rtt"]["p50_ms"],
                2,
            ),
        }
    finally:
        for st in (stack1, stack2):
            if st is not None:
                with contextlib.suppress(Exception):
                    st.down()
        with contextlib.suppress(Exception):
            broker.proc(settings).stop()
        failed = sys.exc_info()[0] is not None
        if not args.keep and not failed:
            shutil.rmtree(home, ignore_errors=True)
        else:  # a failed run keeps its archives' logs for the diagnosis
            log(f"kept {home}")
    results["machine"]["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return results


# ----------------------------------------------------------------------------- report
def _cpu_split(rp: dict[str, Any]) -> str:
    if "cpu_us_per_event_projectors" not in rp:  # a result file from before the projectors
        return ""
    return (
        f": {rp['cpu_us_per_event_projectors']} in the projector processes, "
        f"{rp['cpu_us_per_event_inserting_process']} in the inserting one"
    )


def _ok(value: float, goal: float, below: bool = True) -> str:
    if value != value:  # NaN
        return "-"
    return "yes" if (value < goal if below else value >= goal) else "NO"


def report_rows(r: dict[str, Any]) -> list[list[object]]:
    rows: list[list[object]] = []
    p, rp = r["produce"], r["replay"]
    rows.append(
        [
            "log produced (events, idempotent acks=all lz4)",
            f"{p['events']:,} events in {p['seconds']} s = {p['events_per_s']:,}/s "
            f"({p['studies']:,} studies, {p['series']:,} series, {p['patients']:,} patients; "
            f"{p['mean_event_bytes']:,} B/event, header {p['mean_header_json_bytes']:,} B; "
            f"topic on disk {p['kafka_topic_bytes'] / 1e6:,.0f} MB)",
            "",
            "",
        ]
    )
    rows.append(
        [
            "replay into a fresh index",
            f"{rp['events']:,} events in {rp['seconds']} s = {rp['events_per_s']:,} events/s "
            f"({rp['cpu_us_per_event']} us CPU/event{_cpu_split(rp)}; load avg "
            f"{rp['load_avg_before_after'][0]} -> {rp['load_avg_before_after'][1]})",
            ">= 20,000/s",
            _ok(rp["events_per_s"], 20000, below=False),
        ]
    )
    rows.append(
        [
            "index size on disk",
            f"{rp['index_du_bytes_as_replayed'] / 1e6:,.0f} MB (du) as replayed, of which "
            f"{rp['index_active_bytes_as_replayed'] / 1e6:,.0f} MB in "
            f"{rp['active_parts_as_replayed']} active parts; "
            f"{rp['index_active_bytes_optimized'] / 1e6:,.0f} MB in "
            f"{rp['active_parts_optimized']} parts after OPTIMIZE FINAL "
            f"({rp['optimize_final_seconds']} s)",
            "",
            "",
        ]
    )
    for key, label in (
        ("search_inprocess", "in-process, optimized"),
        ("search_inprocess_as_replayed", "in-process, as replayed"),
        ("search_cfind", "C-FIND SCP"),
    ):
        for name, s in r.get(key, {}).items():
            if name not in QUERY_LABELS:
                continue
            study = name.startswith("study")
            rows.append(
                [
                    f"{QUERY_LABELS[name]} [{label}]",
                    f"p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms "
                    + (f"(SQL p50 {s['sql_p50_ms']} ms; " if "sql_p50_ms" in s else "(")
                    + f"n={s['n']}, {s['matches_mean']} matches avg)",
                    "p50 < 20 ms, p99 < 100 ms" if study else "",
                    ("yes" if s["p50_ms"] < 20 and s["p99_ms"] < 100 else "NO") if study else "",
                ]
            )
    for key, label in (("live_1m", "at 1M"), ("live_empty", "empty archive")):
        if key not in r:
            continue
        lat = r[key]["latency"]
        v, s = lat["visible"], lat["store_rtt"]
        rows.append(
            [
                f"C-STORE response -> visible to C-FIND, {label}",
                f"p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms (n={v['n']}, "
                f"{lat['polls_mean']} polls avg; C-STORE RTT p50 {s['p50_ms']} ms, "
                f"p99 {s['p99_ms']} ms; {lat['failures']} failed)",
                "p50 < 250 ms, p99 < 1 s",
                "yes" if v["p50_ms"] < 250 and v["p99_ms"] < 1000 else "NO",
            ]
        )
    if "latency_ratio" in r:
        q = r["latency_ratio"]
        rows.append(
            [
                "ingest->visible latency ratio 1M / empty",
                f"p50 x{q['p50']}, p99 x{q['p99']} (C-STORE RTT p50 x{q['store_rtt_p50']})",
                "<= 1.2x",
                "yes" if q["p50"] <= 1.2 and q["p99"] <= 1.2 else "NO",
            ]
        )
    return rows


MD_BEGIN = "<!-- benchmarks/index.py: generated table, begin -->"
MD_END = "<!-- benchmarks/index.py: generated table, end -->"


def markdown(r: dict[str, Any]) -> str:
    """The generated part of our BENCHMARKS.md section (between MD_BEGIN and MD_END)."""
    m = r["machine"]
    body = [
        MD_BEGIN,
        f"Run {r['date']} (git {r['git']}): `python -m benchmarks.index "
        f"--studies {r['params']['studies']} --per-study {r['params']['per_study']} "
        f"--queries {r['params']['queries']}`.",
        f"Machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gib']} GiB RAM "
        f"(`free -g`), Linux {m['kernel']}, Python {m['python']}; load average "
        f"{m['load_avg_at_start']} at start, {m.get('load_avg_at_end', '?')} at end.",
        "",
        table(["measure", "result", "goal", "met"], report_rows(r)),
        "",
        "Search latencies are per query (SQL + building the response identifiers), random values "
        "per query; in-process runs what the C-FIND SCP runs (query.find's SQL, then "
        "`query.find.to_bytes` of every match) on the replayed index (as replayed: "
        "background merges still running; optimized: after OPTIMIZE FINAL); C-FIND is one "
        "association to the running query SCP (network, DIMSE encode/decode included). "
        "Ingest latency: one pynetdicom association (TCP_NODELAY) per archive, instances sent one "
        "at a time, after each success C-FIND IMAGE level (Study Root, Study/Series/SOP Instance "
        "UID) polled every ~5 ms until visible; both archives run at the same time and the "
        "instances alternate between them (same background load). Raw numbers: "
        f"`benchmarks/results/index-{r['date'][:10]}.json`.",
        MD_END,
    ]
    return "\n".join(body)


def update_benchmarks_md(generated: str) -> None:
    """Replace only the generated block of our section (or add the section); text around it in
    the section is kept. Re-reads the file right before writing (others edit other sections)."""
    text = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else "# Benchmarks\n"
    start = text.find(MD_SECTION)
    if start < 0:
        new = text.rstrip("\n") + "\n\n" + MD_SECTION + "\n\n" + generated + "\n"
    else:
        nxt = text.find("\n## ", start + len(MD_SECTION))
        end = len(text) if nxt < 0 else nxt + 1
        section = text[start:end]
        b, e = section.find(MD_BEGIN), section.find(MD_END)
        if b >= 0 and e > b:
            section = section[:b] + generated + section[e + len(MD_END) :]
        else:
            section = MD_SECTION + "\n\n" + generated + "\n" + section[len(MD_SECTION) :]
        new = text[:start] + section + text[end:]
    BENCHMARKS_MD.write_text(new.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.index", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--per-study", type=int, default=100)
    ap.add_argument("--queries", type=int, default=200, help="queries of each kind")
    ap.add_argument("--latency-n", type=int, default=200, help="instances sent per archive")
    ap.add_argument("--seed", type=int, default=4)
    ap.add_argument("--workdir", default="", help="parent of the temp STRATA_HOME")
    ap.add_argument("--keep", action="store_true", help="keep the temp STRATA_HOME")
    ap.add_argument(
        "--markdown",
        choices=("auto", "yes", "no"),
        default="auto",
        help="update BENCHMARKS.md (auto: only for a run of >= 1M events)",
    )
    args = ap.parse_args(argv)
    import logging

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    r = run(args)
    out = table(["measure", "result", "goal", "met"], report_rows(r))
    print(out)
    path = RESULTS_DIR / f"index-{r['date'][:10]}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=2, default=str) + "\n")
    log(f"wrote {path}")
    full = args.studies * args.per_study >= 1_000_000
    if args.markdown == "yes" or (args.markdown == "auto" and full):
        update_benchmarks_md(markdown(r))
        log(f"updated {BENCHMARKS_MD} ({MD_SECTION[3:]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
