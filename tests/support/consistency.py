"""The archive's promise, checked from outside: acknowledged == events == indexed.

Hostile-input tests call ``assert_consistent`` after each attack: every instance a peer saw
acknowledged has exactly one current InstanceStored event in the log, every such event is
answered by C-FIND at IMAGE level (the index), and every object's bytes in the hot tier match
the SHA-256 and size its event recorded. ``assert_serves`` checks the node still serves a
legitimate modality (C-ECHO and a C-STORE of a fresh instance that becomes queryable).
"""

from __future__ import annotations

import hashlib
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import pydicom

from strata.proto.strata.v1 import events_pb2
from tests.support.dcmtk import dcmtk_env, findscu, storescu
from tests.support.events import read_all
from tests.support.stack import Stack, require_tool
from tests.support.synthetic import ct_series


def stored_events(stack: Stack) -> list[events_pb2.InstanceStored]:
    """Every InstanceStored in the study topic (the log as an auditor reads it)."""
    events = read_all(stack.settings)
    return [e.instance_stored for e in events if e.WhichOneof("payload") == "instance_stored"]


def indexed_sops(stack: Stack, study_uid: str) -> set[str]:
    rsps = findscu(
        stack.settings.qr_port,
        stack.settings.qr_ae_title,
        "IMAGE",
        {"StudyInstanceUID": study_uid, "SOPInstanceUID": ""},
    )
    return {str(r.SOPInstanceUID) for r in rsps}


def assert_consistent(stack: Stack, acked_sops: set[str], timeout: float = 30.0) -> None:
    """acknowledged == events == indexed, and every object's SHA-256 matches its event.

    ``acked_sops``: the SOP Instance UIDs the test's peers saw acknowledged (all runs so far).
    The index may lag the log briefly, so the index comparison is retried until ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        events = stored_events(stack)
        by_sop: dict[str, list[events_pb2.InstanceStored]] = defaultdict(list)
        for e in events:
            by_sop[e.sop_instance_uid].append(e)
        missing = acked_sops - set(by_sop)
        studies: dict[str, set[str]] = defaultdict(set)
        for e in events:
            studies[e.study_instance_uid].add(e.sop_instance_uid)
        unindexed = {
            sop for study, sops in studies.items() for sop in sops - indexed_sops(stack, study)
        }
        if (not missing and not unindexed) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not missing, f"{len(missing)} acknowledged instances have no InstanceStored event"
    assert not unindexed, f"{len(unindexed)} logged instances are not answered by C-FIND"
    for sop, evs in by_sop.items():
        e = evs[-1]  # the current version; earlier versions keep their own objects
        data = (stack.settings.hot_dir / e.location.key).read_bytes()
        assert len(data) == e.size_bytes, f"{sop}: object size differs from its event"
        assert hashlib.sha256(data).hexdigest() == e.sha256, f"{sop}: object SHA-256 differs"


def assert_serves(stack: Stack, work: Path | None = None, timeout: float = 10.0) -> str:
    """The node still serves a legitimate modality: C-ECHO, then a C-STORE that is answered
    Success and becomes queryable. Returns the stored SOP Instance UID."""
    require_tool("echoscu")
    r = subprocess.run(
        [
            "echoscu",
            "-aet",
            "MODALITY",
            "-aec",
            stack.settings.ingest_ae_title,
            "127.0.0.1",
            str(stack.settings.ingest_port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, f"C-ECHO to the ingest node failed: {r.stdout}{r.stderr}"
    with tempfile.TemporaryDirectory(dir=work) as d:
        (f,) = ct_series(Path(d), 1, patient_id="LEGIT-PEER")
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
        code, statuses, out = storescu(
            stack.settings.ingest_port, stack.settings.ingest_ae_title, [f]
        )
        assert code == 0 and statuses == ["Success"], f"legitimate C-STORE failed:\n{out[-2000:]}"
    sop, study = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID)
    deadline = time.monotonic() + timeout
    while sop not in indexed_sops(stack, study):
        assert time.monotonic() < deadline, "the legitimate instance never became queryable"
        time.sleep(0.2)
    return sop
