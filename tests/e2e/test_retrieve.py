"""Retrieve with real workstation tools: DCMTK movescu (to a DCMTK storescp), getscu, and
pynetdicom SCUs. What is retrieved must be byte-identical to what was stored."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import (
    CTImageStorage,
    MRImageStorage,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from tests.support.dcmtk import dcmtk_env, findscu, storescu
from tests.support.stack import Stack, free_port, make_stack, require_tool
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
SAMPLES = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "rtplan.dcm"]
SYNTAX_FLAG = {"JPEG2000.dcm": ["-xw"], "SC_rgb_rle.dcm": ["-xr"]}


def dataset_bytes(path: Path) -> bytes:
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


@pytest.fixture(scope="module")
def rstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    require_tool("storescp")
    home = tmp_path_factory.mktemp("retrieve-home")
    dest_dir = tmp_path_factory.mktemp("storescp-in")
    dest_port = free_port()
    scp = subprocess.Popen(
        ["storescp", "+B", "+xa", "-aet", "WORKSTATION", "-od", str(dest_dir), str(dest_port)],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    s = make_stack(home)
    s.env["STRATA_MOVE_DESTINATIONS"] = f"WORKSTATION=127.0.0.1:{dest_port},DEAD=127.0.0.1:9"
    s.up()
    for name in SAMPLES:
        code, rsp, out = storescu(
            s.settings.ingest_port,
            s.settings.ingest_ae_title,
            [TEST_FILES / name],
            SYNTAX_FLAG.get(name, []),
        )
        assert rsp == ["Success"], out
    # Acknowledged means the bytes are in the hot tier already; the index follows the log.
    stored = {
        _sop_of(p): p for p in s.settings.hot_dir.rglob("*.dcm") if ".incoming" not in p.parts
    }
    assert sorted(stored) == sorted(str(_uids(name).SOPInstanceUID) for name in SAMPLES)
    for name in SAMPLES:
        ds = _uids(name)
        wait_for(
            lambda ds=ds: findscu(
                s.settings.qr_port,
                s.settings.qr_ae_title,
                "IMAGE",
                {
                    "StudyInstanceUID": str(ds.StudyInstanceUID),
                    "SOPInstanceUID": str(ds.SOPInstanceUID),
                },
            ),
            30,
            f"{name} to be indexed",
        )
    try:
        yield {"stack": s, "dest_dir": dest_dir, "dest_port": dest_port, "stored": stored}
    finally:
        s.down()
        scp.terminate()
        scp.wait(10)


def _sop_of(p: Path) -> str:
    return p.name.rsplit(".", 2)[0]


def _uids(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(str(TEST_FILES / name), stop_before_pixels=True)


def test_movescu_study_to_storescp_is_byte_identical(rstack: dict) -> None:
    s: Stack = rstack["stack"]
    ct = _uids("CT_small.dcm")
    r = subprocess.run(
        [
            "movescu",
            "-S",
            "-aet",
            "WORKSTATION",
            "-aec",
            s.settings.qr_ae_title,
            "-aem",
            "WORKSTATION",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={ct.StudyInstanceUID}",
            "127.0.0.1",
            str(s.settings.qr_port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    got = {
        str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID): p
        for p in rstack["dest_dir"].iterdir()
    }
    assert str(ct.SOPInstanceUID) in got
    stored = rstack["stored"][str(ct.SOPInstanceUID)]
    assert dataset_bytes(got[str(ct.SOPInstanceUID)]) == dataset_bytes(stored)


def test_movescu_compressed_series_keeps_its_syntax(rstack: dict) -> None:
    s: Stack = rstack["stack"]
    j2k = _uids("JPEG2000.dcm")
    r = subprocess.run(
        [
            "movescu",
            "-S",
            "-aet",
            "WORKSTATION",
            "-aec",
            s.settings.qr_ae_title,
            "-aem",
            "WORKSTATION",
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={j2k.StudyInstanceUID}",
            "-k",
            f"SeriesInstanceUID={j2k.SeriesInstanceUID}",
            "127.0.0.1",
            str(s.settings.qr_port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    files = [
        p
        for p in rstack["dest_dir"].iterdir()
        if str(pydicom.dcmread(str(p), stop_before_pixels=True).SOPInstanceUID)
        == str(j2k.SOPInstanceUID)
    ]
    assert files
    got = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    assert got.file_meta.TransferSyntaxUID == j2k.file_meta.TransferSyntaxUID
    assert dataset_bytes(files[0]) == dataset_bytes(rstack["stored"][str(j2k.SOPInstanceUID)])


def test_unknown_move_destination_is_refused(rstack: dict) -> None:
    s: Stack = rstack["stack"]
    ct = _uids("CT_small.dcm")
    ae = AE(ae_title="WORKSTATION")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = ae.associate("127.0.0.1", s.settings.qr_port, ae_title=s.settings.qr_ae_title)
    assert assoc.is_established
    q = pydicom.Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = ct.StudyInstanceUID
    try:
        statuses = [
            st.Status
            for st, _ in assoc.send_c_move(q, "NOBODY", StudyRootQueryRetrieveInformationModelMove)
        ]
    finally:
        assoc.release()
    assert statuses[-1] == 0xA801  # Refused: Move Destination unknown


def test_getscu_series_is_byte_identical(rstack: dict, tmp_path: Path) -> None:
    require_tool("getscu")
    s: Stack = rstack["stack"]
    mr = _uids("MR_small.dcm")
    r = subprocess.run(
        [
            "getscu",
            "-S",
            "+B",
            "-aet",
            "GETTER",
            "-aec",
            s.settings.qr_ae_title,
            "-od",
            str(tmp_path),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={mr.StudyInstanceUID}",
            "-k",
            f"SeriesInstanceUID={mr.SeriesInstanceUID}",
            "127.0.0.1",
            str(s.settings.qr_port),
        ],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    files = list(tmp_path.iterdir())
    assert len(files) == 1
    assert dataset_bytes(files[0]) == dataset_bytes(rstack["stored"][str(mr.SOPInstanceUID)])


def test_pynetdicom_get_and_move_counts(rstack: dict) -> None:
    s: Stack = rstack["stack"]
    ct = _uids("CT_small.dcm")
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="PYGET")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    ae.add_requested_context(MRImageStorage)
    roles = [build_role(CTImageStorage, scp_role=True), build_role(MRImageStorage, scp_role=True)]
    assoc = ae.associate(
        "127.0.0.1",
        s.settings.qr_port,
        ae_title=s.settings.qr_ae_title,
        ext_neg=roles,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    q = pydicom.Dataset()
    q.QueryRetrieveLevel = "IMAGE"
    q.StudyInstanceUID = ct.StudyInstanceUID
    q.SeriesInstanceUID = ct.SeriesInstanceUID
    q.SOPInstanceUID = ct.SOPInstanceUID
    try:
        rsps = [st for st, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    final = rsps[-1]
    assert final.Status == 0x0000
    assert final.NumberOfCompletedSuboperations == 1 and final.NumberOfFailedSuboperations == 0
    assert received == [dataset_bytes(rstack["stored"][str(ct.SOPInstanceUID)])]

    # C-MOVE to a destination that is down: the sub-association fails, with a failure status
    ae2 = AE(ae_title="WORKSTATION")
    ae2.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    a2 = ae2.associate("127.0.0.1", s.settings.qr_port, ae_title=s.settings.qr_ae_title)
    try:
        st = [
            x.Status
            for x, _ in a2.send_c_move(q, "DEAD", StudyRootQueryRetrieveInformationModelMove)
        ]
    finally:
        a2.release()
    assert st[-1] == 0xA801
