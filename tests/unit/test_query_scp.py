"""The lean Q/R SCP (query/scp.py on dicomnet/acceptor.py) driven by real requestors
(pynetdicom, DCMTK findscu/getscu/movescu, the archive's own requestor) over loopback. The
index is a fake of the index port (processors/index/port.py) answering searches and locates
with fixed rows (the real chDB index is covered by the e2e tests); objects are real files in a
hot tier directory.
What is checked: statuses and counts of PS3.4 C.4, cancel, failures of sub-operations,
conversion for a destination that takes only implicit VR, concurrency."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from prometheus_client import REGISTRY
from pydicom import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.dsutils import decode, encode, split_dataset
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from strata.common.errors import Unavailable
from strata.dicomnet import dul
from strata.dicomnet.acceptor import Config
from strata.dicomnet.requestor import EXPLICIT_LE, IMPLICIT_LE, Requestor, find_command
from strata.processors.index.port import FindQuery, Located
from strata.processors.index.schema import CARD_COLUMNS
from strata.processors.index.search import build_sql, columns, row_dict
from strata.query.retrieve import HotSource
from strata.query.scp import QueryServer, Services
from tests.support.dcmtk import dcmtk_env
from tests.support.stack import free_port, require_tool
from tests.support.wait import wait_for

CT_FILE = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
FIND = str(StudyRootQueryRetrieveInformationModelFind)
STUDY = "1.2.826.0.1.3680043.10.543.77"


class FakeIndex:
    """A fake of the index port (processors/index/port.py): a STUDY search finds
    ``n_studies`` studies, locate finds the ``located`` rows; ``down`` makes every call fail
    as an unreachable index does."""

    database = "strata"

    def __init__(self) -> None:
        self.n_studies = 3
        self.located: list[tuple[Any, ...]] = []
        self.down = False
        self.delay = 0.0  # seconds every call takes

    def _call(self) -> None:
        time.sleep(self.delay)
        if self.down:
            raise Unavailable("index down")

    def locate(self, keys: dict[str, str], limit: int) -> list[Located]:
        self._call()
        return [Located(*row) for row in self.located]

    def held_syntaxes(self) -> dict[str, frozenset[str]]:
        self._call()
        held: dict[str, set[str]] = {}
        for row in self.located:
            held.setdefault(row[3], set()).add(row[4])
        return {cls: frozenset(ts) for cls, ts in held.items()}

    def search(
        self, q: FindQuery, timeout: float = 0.0, offset: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        self._call()
        cols = columns("STUDY")
        # the selected columns of a STUDY search whose keys need no stored header
        selected = build_sql(FindQuery("STUDY", [], 1), self.database)[2]
        rows = []
        for i in range(self.n_studies):
            row = {c: "" for c in cols}
            row.update(
                patient_id=f"P{i}",
                patient_name=f"Doe^{i}",
                study_uid=f"{STUDY}.{i}",
                study_date="20240101",
                modalities_in_study=["CT"],
                sop_classes_in_study=[str(CTImageStorage)],
                n_series=1,
                n_instances=1,
            )
            row["card"] = json.dumps([row[c] for c in CARD_COLUMNS])
            rows.append(row_dict(selected, tuple(row[c] for c in selected)))
        return rows


@pytest.fixture
def qr(tmp_path: Path) -> Iterator[dict]:
    hot = tmp_path / "hot"
    hot.mkdir()
    ct = pydicom.dcmread(str(CT_FILE))
    stored = []
    for i in range(3):  # three CT objects in the hot tier, one of them missing later
        ct.SOPInstanceUID = f"{STUDY}.0.1.{i}"
        key = f"obj{i}.dcm"
        ct.save_as(str(hot / key), enforce_file_format=True)
        stored.append(
            (
                STUDY + ".0",
                STUDY + ".0.1",
                ct.SOPInstanceUID,
                str(CTImageStorage),
                str(ct.file_meta.TransferSyntaxUID),
                "hot",
                key,
                (hot / key).stat().st_size,
                "",
            )
        )
    index = FakeIndex()
    index.located = stored
    dest_port = free_port()
    port = free_port()
    server = QueryServer(
        Config(16384, 10.0, 10.0),
        Services(
            index,
            HotSource(hot),
            {"DEST": ("127.0.0.1", dest_port), "DOWN": ("127.0.0.1", free_port())},
            "STRATA_QR",
            10000,
            5.0,
        ),
        ("127.0.0.1", port),
    )
    try:
        yield {"port": port, "index": index, "hot": hot, "dest_port": dest_port}
    finally:
        server.shutdown()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _find_rq(msg_id: int, level: str = "STUDY") -> tuple[bytes, bytes]:
    cmd = find_command(FIND, msg_id)
    q = Dataset()
    q.QueryRetrieveLevel = level
    q.PatientID = ""
    q.StudyInstanceUID = ""
    return cmd, encode(q, True, True)


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_find_statuses_and_identifiers_with_pynetdicom(qr: dict) -> None:
    ok0 = _metric("strata_qr_operations_total", op="find", outcome="success")
    failed0 = _metric("strata_qr_operations_total", op="find", outcome="failure")
    matches0 = _metric("strata_qr_find_matches_total")
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", qr["port"], ae_title="STRATA_QR")
    assert assoc.is_established
    try:
        assert assoc.send_c_echo().Status == 0x0000
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = ""
        q.StudyInstanceUID = ""
        q.ModalitiesInStudy = ""
        rsps = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
        assert [s.Status for s, _ in rsps] == [0xFF00] * 3 + [0x0000]
        assert [i.PatientID for _, i in rsps[:3]] == ["P0", "P1", "P2"]
        assert rsps[0][1].ModalitiesInStudy == "CT"
        assert rsps[0][1].QueryRetrieveLevel == "STUDY"

        q.QueryRetrieveLevel = "WARD"  # not a level: identifier does not match SOP class
        ((status, _),) = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
        assert status.Status == 0xA900 and "WARD" in status.ErrorComment

        qr["index"].down = True  # the index unreachable: out of resources, node still up
        q.QueryRetrieveLevel = "STUDY"
        ((status, _),) = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
        assert status.Status == 0xA700
    finally:
        assoc.release()
    assert _metric("strata_qr_operations_total", op="find", outcome="success") == ok0 + 1
    assert _metric("strata_qr_operations_total", op="find", outcome="failure") == failed0 + 2
    assert _metric("strata_qr_find_matches_total") == matches0 + 3


def test_find_cancel_stops_the_responses(qr: dict) -> None:
    # The server looks for a C-CANCEL between responses; it must still have responses to send
    # when the cancel arrives (sent right after the first response). 20,000 responses once all
    # went out first on a quiet machine (Success instead of Cancel); 200,000 take seconds.
    qr["index"].n_studies = 200_000
    with Requestor("127.0.0.1", qr["port"], "CANCELLER", "STRATA_QR", [(FIND, [IMPLICIT_LE])]) as r:
        pc = r.context(FIND)
        cmd, ident = _find_rq(7)
        r.send_message(pc, cmd, ident)
        _, first, _ = r.receive()
        assert dul.us(first, dul.STATUS) == 0xFF00
        cancel = dul.encode_command(
            [
                (dul.COMMAND_FIELD, dul.C_CANCEL_RQ),
                (dul.MESSAGE_ID_BEING_RESPONDED_TO, 7),
                (dul.COMMAND_DATASET_TYPE, dul.NO_DATASET),
            ]
        )
        r.send_message(pc, cancel)
        n = 1
        while True:
            _, rsp, _ = r.receive()
            status = dul.us(rsp, dul.STATUS)
            if status != 0xFF00:
                break
            n += 1
        assert status == 0xFE00  # Matching terminated due to Cancel
        assert n < 200_000
        # the association goes on: a C-ECHO on a new request
        cmd, ident = _find_rq(8, "WARD")
        r.send_message(pc, cmd, ident)
        assert dul.us(r.receive()[1], dul.STATUS) == 0xA900


def test_an_unknown_dimse_command_aborts_only_its_association(qr: dict) -> None:
    r = Requestor("127.0.0.1", qr["port"], "BAD", "STRATA_QR", [(FIND, [EXPLICIT_LE])])
    bogus = dul.encode_command(
        [(dul.COMMAND_FIELD, 0x0130), (dul.MESSAGE_ID, 1), (dul.COMMAND_DATASET_TYPE, 0x0101)]
    )
    r.send_message(r.context(FIND), bogus)
    with pytest.raises(ConnectionError):
        r.receive()  # A-ABORT
    r.close()
    with Requestor("127.0.0.1", qr["port"], "GOOD", "STRATA_QR", [(FIND, [EXPLICIT_LE])]) as ok:
        cmd, ident = _find_rq(1)
        ok.send_message(
            ok.context(FIND), cmd, encode(decode(BytesIO(ident), True, True), False, True)
        )
        statuses = []
        while not statuses or statuses[-1] == 0xFF00:
            statuses.append(dul.us(ok.receive()[1], dul.STATUS))
        assert statuses == [0xFF00] * 3 + [0x0000]


def test_get_counts_failures_and_lists_the_failed_instance(qr: dict) -> None:
    (qr["hot"] / "obj1.dcm").unlink()  # indexed, but its object is gone
    sub_failed0 = _metric("strata_qr_suboperations_total", op="get", result="failed")
    received: list[bytes] = []

    def on_store(event: evt.Event) -> int:
        received.append(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="GETTER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate(
        "127.0.0.1",
        qr["port"],
        ae_title="STRATA_QR",
        ext_neg=[build_role(CTImageStorage, scp_role=True)],
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )
    assert assoc.is_established
    q = Dataset()
    q.QueryRetrieveLevel = "STUDY"
    q.StudyInstanceUID = STUDY + ".0"
    try:
        rsps = [s for s, _ in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet)]
    finally:
        assoc.release()
    pending = [s for s in rsps if s.Status == 0xFF00]
    assert [s.NumberOfRemainingSuboperations for s in pending] == [2, 1]
    final = rsps[-1]
    assert final.Status == 0xB000  # warning: some sub-operations failed
    assert (final.NumberOfCompletedSuboperations, final.NumberOfFailedSuboperations) == (2, 1)
    _, offset = split_dataset(qr["hot"] / "obj0.dcm")
    assert received[0] == (qr["hot"] / "obj0.dcm").read_bytes()[offset:]
    assert len(received) == 2
    assert _metric("strata_qr_suboperations_total", op="get", result="failed") == sub_failed0 + 1


def test_move_converts_for_an_implicit_only_destination_and_reports_down_ones(
    qr: dict, tmp_path: Path
) -> None:
    require_tool("storescp")
    out = tmp_path / "in"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "+xi", "-aet", "DEST", "-od", str(out), str(qr["dest_port"])],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _listening(qr["dest_port"]), 10, "storescp to listen")
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = ae.associate("127.0.0.1", qr["port"], ae_title="STRATA_QR")
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = STUDY + ".0"
        try:
            rsps = [
                s
                for s, _ in assoc.send_c_move(q, "DEST", StudyRootQueryRetrieveInformationModelMove)
            ]
            down = [
                s.Status
                for s, _ in assoc.send_c_move(q, "DOWN", StudyRootQueryRetrieveInformationModelMove)
            ]
            unknown = [
                s.Status
                for s, _ in assoc.send_c_move(
                    q, "NOBODY", StudyRootQueryRetrieveInformationModelMove
                )
            ]
        finally:
            assoc.release()
        assert rsps[-1].Status == 0x0000 and rsps[-1].NumberOfCompletedSuboperations == 3
        got = sorted(out.iterdir())
        assert len(got) == 3
        for p in got:  # received as implicit VR little endian, the same data elements
            ds = pydicom.dcmread(str(p))
            assert ds.file_meta.TransferSyntaxUID == IMPLICIT_LE
            orig = pydicom.dcmread(str(CT_FILE))
            assert ds.PixelData == orig.PixelData and ds.PatientName == orig.PatientName
        assert down == [0xA801] and unknown == [0xA801]
    finally:
        scp.terminate()
        scp.wait(10)


def test_concurrent_associations_do_not_wait_for_each_other(qr: dict) -> None:
    """A long C-FIND on one association; a C-ECHO on another is answered meanwhile."""
    qr["index"].n_studies = 20000
    slow_sent = threading.Event()
    echo_answered = threading.Event()
    slow_done = threading.Event()

    def slow() -> None:
        with Requestor("127.0.0.1", qr["port"], "SLOW", "STRATA_QR", [(FIND, [IMPLICIT_LE])]) as r:
            cmd, ident = _find_rq(1)
            r.send_message(r.context(FIND), cmd, ident)
            slow_sent.set()
            # does not read until the echo is answered: the SCP blocks on a full socket buffer
            echo_answered.wait(30)
            while dul.us(r.receive()[1], dul.STATUS) == 0xFF00:
                pass
        slow_done.set()

    t = threading.Thread(target=slow)
    t.start()
    assert slow_sent.wait(30)
    with Requestor(
        "127.0.0.1", qr["port"], "ECHO", "STRATA_QR", [(str(Verification), [IMPLICIT_LE])]
    ) as r:
        echo = dul.encode_command(
            [
                (dul.AFFECTED_SOP_CLASS_UID, str(Verification)),
                (dul.COMMAND_FIELD, dul.C_ECHO_RQ),
                (dul.MESSAGE_ID, 1),
                (dul.COMMAND_DATASET_TYPE, dul.NO_DATASET),
            ]
        )
        r.send_message(r.context(str(Verification)), echo)
        assert dul.us(r.receive()[1], dul.STATUS) == 0x0000
        assert not slow_done.is_set()
        echo_answered.set()
    t.join(30)
    assert slow_done.is_set()


def test_move_to_a_destination_that_aborts_mid_study(qr: dict) -> None:
    """The destination aborts its association on the second object: it and the rest fail, the
    final response says so with the failed instances, and the requesting association goes on."""
    from pynetdicom import AllStoragePresentationContexts

    stored: list[str] = []

    def on_store(event: evt.Event) -> int:
        stored.append(str(event.request.AffectedSOPInstanceUID))
        if len(stored) == 2:
            event.assoc.abort()  # no response to the second object: A-ABORT instead
        return 0x0000

    dest = AE(ae_title="DEST")
    dest.supported_contexts = AllStoragePresentationContexts
    server = dest.start_server(
        ("127.0.0.1", qr["dest_port"]), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        ae = AE(ae_title="MOVER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", qr["port"], ae_title="STRATA_QR")
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = STUDY + ".0"
        try:
            rsps = list(assoc.send_c_move(q, "DEST", StudyRootQueryRetrieveInformationModelMove))
            echo = assoc.send_c_echo()
        finally:
            assoc.release()
    finally:
        server.shutdown()
    final, ident = rsps[-1]
    assert final.Status in (0xB000, 0xA702)
    assert final.NumberOfCompletedSuboperations == 1
    assert final.NumberOfFailedSuboperations == 2
    assert len(ident.FailedSOPInstanceUIDList) == 2
    assert echo.Status == 0x0000  # the requesting association is still served


def test_an_operation_longer_than_the_network_timeout_completes(qr: dict) -> None:
    """While an operation runs the requestor is silent (it waits for our responses): the
    read timeout then is no idle peer. An operation longer than the network timeout is
    answered, the association serves the next request, and real silence still ends it."""
    index = FakeIndex()
    index.delay = 1.0  # every search takes over three network timeouts
    port = free_port()
    server = QueryServer(
        Config(16384, 0.3, 10.0),
        Services(index, HotSource(qr["hot"]), {}, "STRATA_QR", 10000, 5.0),
        ("127.0.0.1", port),
    )
    try:
        ae = AE(ae_title="FINDER")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", port, ae_title="STRATA_QR")
        assert assoc.is_established
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.PatientID = ""
        for _ in range(2):
            rsps = list(assoc.send_c_find(q, StudyRootQueryRetrieveInformationModelFind))
            assert [s.Status for s, _ in rsps] == [0xFF00] * 3 + [0x0000]
        # idle, with nothing running: the network timeout (0.3 s) ends the association
        assert wait_for(lambda: assoc.is_aborted or not assoc.is_established, 10)
    finally:
        server.shutdown()
