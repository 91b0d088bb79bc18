"""The lean ingest SCP (ingest/scp.py on dicomnet/dul.py) against real DICOM peers: pynetdicom
and DCMTK's storescu/echoscu as requestors, the real store service behind it (hot tier on tmp
disk, the SQLite outbox). No Kafka: the relay is not part of the receive path."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import shutil
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)
from pynetdicom import AE, build_role, evt, pdu
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification

from strata.archive.hot import HotTier
from strata.dicomnet import dul
from strata.ingest import statuses
from strata.ingest.config import AEConfig, CallingAE
from strata.ingest.outbox import Outbox
from strata.ingest.scp import Config, StoreServer
from strata.ingest.store import Limits, StoreService
from strata.proto.strata.v1 import events_pb2 as pb
from tests.support.stack import free_port
from tests.support.wait import wait_for

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[dict]:
    hot = HotTier(tmp_path / "hot")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    service = StoreService(
        tier=hot,
        outbox=outbox,
        topic="t",
        quarantine_topic="q",
        quarantine_dir=tmp_path / "quarantine",
        node="n1",
        aes=AEConfig(aes={"CT1": CallingAE("CT1", "north", "General", "")}),
        limits=Limits(max_object_bytes=2_000_000),
    )
    port = free_port()
    server = StoreServer(
        Config(16384, 10.0, 10.0, allow_list=["CT1", "STORESCU", "ECHOSCU"]),
        service,
        hot.incoming,
        ("127.0.0.1", port),
    )
    try:
        yield {"port": port, "hot": hot, "outbox": outbox, "server": server}
    finally:
        server.shutdown()


def assoc(port: int, calling: str = "CT1", contexts=None, roles=None):
    ae = AE(ae_title=calling)
    for cx in contexts or [(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]:
        ae.add_requested_context(*cx)
    return ae.associate("127.0.0.1", port, ae_title="ARCHIVE", ext_neg=roles)


def events(outbox: Outbox) -> list[pb.Envelope]:
    return [pb.Envelope.FromString(p.value) for p in outbox.pending(10_000)]


def ct(tmp: Path, rows: int = 0) -> tuple[Path, pydicom.Dataset]:
    ds = pydicom.dcmread(str(CT))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if rows:  # a bigger object: many P-DATA PDUs at a 16 KB maximum length
        ds.Rows = ds.Columns = rows
        ds.PixelData = bytes(range(256)) * (rows * rows * 2 // 256)
    p = tmp / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(str(p), enforce_file_format=True)
    return p, ds


def test_echo_store_and_the_stored_object_is_the_dataset_as_sent(scp: dict, tmp_path) -> None:
    a = assoc(scp["port"])
    assert a.is_established
    paths = [ct(tmp_path)[0], ct(tmp_path, rows=512)[0]]
    for p in paths:
        st = a.send_c_store(pydicom.dcmread(str(p)))
        assert st.Status == statuses.SUCCESS
    a.release()
    evs = events(scp["outbox"])
    assert len(evs) == 2
    for p, e in zip(paths, evs, strict=True):
        s = e.instance_stored
        stored = scp["hot"].path(s.location.key).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == s.sha256 and len(stored) == s.size_bytes
        sent = pydicom.dcmread(str(p))
        got = pydicom.dcmread(io.BytesIO(stored))
        # the dataset bytes are those on the wire; the file meta is the archive's own
        assert got.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert got.file_meta.MediaStorageSOPInstanceUID == sent.SOPInstanceUID
        assert got.file_meta.SourceApplicationEntityTitle == "CT1"
        assert got.PixelData == sent.PixelData and got.SOPInstanceUID == sent.SOPInstanceUID
        assert s.calling_ae_title == "CT1" and s.called_ae_title == "ARCHIVE"
    assert not list(scp["hot"].incoming.iterdir())  # no spool left


def test_an_object_sent_in_one_huge_pdu_is_streamed(scp: dict, tmp_path) -> None:
    """This node announces no maximum PDU length (STRATA_MAX_PDU=0): pynetdicom then sends a
    whole dataset as one P-DATA-TF. 80 MB of pixels in one PDU is stored (not held in memory
    whole, not refused as oversize by the PDU reader)."""
    hot = scp["hot"]
    server = StoreServer(
        Config(0, 30.0, 10.0),
        dataclasses.replace(scp["server"].service, limits=Limits(max_object_bytes=200_000_000)),
        hot.incoming,
        ("127.0.0.1", port := free_port()),
    )
    try:
        ds = pydicom.dcmread(str(CT))
        ds.SOPInstanceUID = generate_uid()
        ds.Rows, ds.Columns, ds.NumberOfFrames = 512, 512, 160
        ds.PixelData = bytes(range(256)) * (512 * 512 * 2 * 160 // 256)
        a = assoc(port)
        assert a.acceptor.maximum_length == 0
        assert a.send_c_store(ds).Status == statuses.SUCCESS
        a.release()
        s = events(scp["outbox"])[-1].instance_stored
        assert s.size_bytes > 80_000_000
        stored = hot.path(s.location.key)
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == s.sha256
    finally:
        server.shutdown()


def test_negotiation_results(scp: dict) -> None:
    a = assoc(
        scp["port"],
        contexts=[
            (CTImageStorage, [JPEG2000Lossless]),
            (MRImageStorage, ["1.2.3.4.5.6"]),  # unknown transfer syntax
            ("1.2.3.4.999", [ExplicitVRLittleEndian]),  # not a storage SOP class
            (Verification, [ImplicitVRLittleEndian]),
        ],
        roles=[build_role(CTImageStorage, scu_role=True, scp_role=True)],
    )
    assert a.is_established
    by_as = {str(cx.abstract_syntax): cx for cx in a.accepted_contexts}
    assert str(by_as[CTImageStorage].transfer_syntax[0]) == JPEG2000Lossless
    assert by_as[CTImageStorage].as_scu and not by_as[CTImageStorage].as_scp
    rejected = {str(cx.abstract_syntax): cx.result for cx in a.rejected_contexts}
    assert rejected == {MRImageStorage: 4, "1.2.3.4.999": 3}
    assert a.send_c_echo().Status == 0
    assert a.acceptor.maximum_length == 16384
    a.release()
    assert a.is_released


def test_unknown_calling_ae_is_rejected_permanently(scp: dict) -> None:
    # The RJ PDU received, not pynetdicom's is_rejected (which a race in its requestor turns
    # into is_aborted now and then: tests/unit/test_acceptor_robustness.py)
    received: list[object] = []
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    a = ae.associate(
        "127.0.0.1",
        scp["port"],
        ae_title="ARCHIVE",
        evt_handlers=[(evt.EVT_PDU_RECV, lambda e: received.append(e.pdu))],
    )
    assert not a.is_established
    (rj,) = [p for p in received if isinstance(p, pdu.A_ASSOCIATE_RJ)]
    assert (rj.result, rj.source, rj.reason_diagnostic) == (1, 1, 3)


def test_refusals_carry_the_status_and_the_association_goes_on(scp: dict, tmp_path) -> None:
    # an MR dataset sent on the CT context as a CT (by hand: pynetdicom would not)
    _, ds = ct(tmp_path)
    ds.SOPClassUID = MRImageStorage
    s = _raw_association(scp["port"])
    assert _raw_store(s, CTImageStorage, ds) == statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS
    s.sendall(dul.release_rq())
    s.close()
    a = assoc(scp["port"])
    _, big = ct(tmp_path, rows=1024)  # 2 MB of pixels > the 2,000,000 byte limit
    st = a.send_c_store(big)
    assert st.Status == statuses.OUT_OF_RESOURCES_OBJECT_TOO_LARGE
    ok = ct(tmp_path)[1]
    assert a.send_c_store(ok).Status == statuses.SUCCESS
    a.release()
    kinds = [e.WhichOneof("payload") for e in events(scp["outbox"])]
    assert kinds.count("instance_quarantined") == 2 and kinds.count("instance_stored") == 1


def test_duplicate_is_idempotent_and_a_new_version_is_recorded(scp: dict, tmp_path) -> None:
    _, ds = ct(tmp_path)
    a = assoc(scp["port"])
    assert a.send_c_store(ds).Status == 0
    assert a.send_c_store(ds).Status == 0
    ds.StudyDescription = "corrected"
    assert a.send_c_store(ds).Status == 0
    a.release()
    stored = [e.instance_stored for e in events(scp["outbox"])]
    assert len(stored) == 2 and stored[1].supersedes_sha256 == stored[0].sha256


def test_dcmtk_storescu_and_echoscu(scp: dict, tmp_path) -> None:
    if not shutil.which("storescu"):
        pytest.fail("DCMTK storescu is not installed (make deps)")
    files = [str(ct(tmp_path)[0]) for _ in range(5)] + [str(ct(tmp_path, rows=512)[0])]
    r = subprocess.run(
        ["storescu", "-aet", "STORESCU", "-aec", "ARCHIVE", "127.0.0.1", str(scp["port"])] + files,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    r = subprocess.run(
        ["echoscu", "-aet", "ECHOSCU", "-aec", "ARCHIVE", "127.0.0.1", str(scp["port"])],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert len(events(scp["outbox"])) == 6


def _raw_association(port: int) -> socket.socket:
    """An association opened by hand (pynetdicom's encoder), for protocol violations."""
    a = assoc(port)  # learn nothing from it: just prove the port serves
    a.release()
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    rq = pdu.A_ASSOCIATE_RQ()
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context

    prim = A_ASSOCIATE()
    prim.application_context_name = dul.APPLICATION_CONTEXT
    prim.calling_ae_title = "CT1"
    prim.called_ae_title = "ARCHIVE"
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 16384
    prim.user_information = [ml]
    cx = build_context(CTImageStorage, ExplicitVRLittleEndian)
    cx.context_id = 1
    prim.presentation_context_definition_list = [cx]
    rq.from_primitive(prim)
    s.sendall(rq.encode())
    head = s.recv(6)
    assert head[0] == dul.ASSOCIATE_AC
    length = struct.unpack(">L", head[2:6])[0]
    body = b""
    while len(body) < length:
        body += s.recv(length - len(body))
    return s


def _store_rq(sop_class: str, sop_instance: str) -> bytes:
    """A C-STORE-RQ command set (message id 1, a dataset follows)."""
    return dul.encode_command(
        [
            (dul.AFFECTED_SOP_CLASS_UID, sop_class),
            (dul.COMMAND_FIELD, dul.C_STORE_RQ),
            (dul.MESSAGE_ID, 1),
            (dul.PRIORITY, 0),
            (dul.COMMAND_DATASET_TYPE, 0x0000),
            (dul.AFFECTED_SOP_INSTANCE_UID, sop_instance),
        ]
    )


def _raw_store(s: socket.socket, sop_class: str, ds: pydicom.Dataset) -> int:
    """A C-STORE by hand on context 1 (explicit VR little endian): the response status."""
    cmd = _store_rq(sop_class, str(ds.SOPInstanceUID))
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)  # explicit VR little endian
    raw = buf.getvalue()
    body = raw[raw.index(b"\x08\x00\x05\x00") :]  # the dataset after the file meta
    s.sendall(dul.p_data(1, cmd, True, 16384) + dul.p_data(1, body, False, 16384))
    f = s.makefile("rb")
    pdu_type, body = dul.read_pdu(f, 1 << 20)
    assert pdu_type == dul.P_DATA_TF
    (_, _, data), *_ = dul.iter_pdvs(body)
    return dul.us(dul.decode_command(bytes(data)), dul.STATUS)


def _expect_abort(s: socket.socket) -> None:
    data = b""
    while len(data) < 10:
        chunk = s.recv(10 - len(data))
        if not chunk:
            break
        data += chunk
    assert data[:1] == bytes([dul.ABORT]) and data[8] == dul.ABORT_SOURCE_PROVIDER, data


def test_protocol_violations_abort_only_that_association(scp: dict, tmp_path) -> None:
    # a dataset fragment with no command before it
    s = _raw_association(scp["port"])
    s.sendall(dul.p_data(1, b"\x08\x00\x05\x00CS\x00\x00", False, 0))
    _expect_abort(s)
    s.close()
    # a PDV on a presentation context that was never accepted
    s = _raw_association(scp["port"])
    s.sendall(dul.p_data(9, dul.response(1, 1, CTImageStorage, 0), True, 0))
    _expect_abort(s)
    s.close()
    # an unknown PDU type
    s = _raw_association(scp["port"])
    s.sendall(dul.pdu(0x09, b"\0\0\0\0"))
    _expect_abort(s)
    s.close()
    # the node still serves everyone else
    a = assoc(scp["port"])
    assert a.send_c_store(ct(tmp_path)[1]).Status == 0
    a.release()


def test_cut_mid_dataset_stores_nothing(scp: dict, tmp_path) -> None:
    s = _raw_association(scp["port"])
    cmd = _store_rq(CTImageStorage, generate_uid())
    s.sendall(dul.p_data(1, cmd, True, 16384))
    s.sendall(dul.p_data(1, b"\x08\x00\x16\x00UI\x04\x001.2\0", False, 16384)[:-3])
    # the spool file of the dataset being received exists
    assert wait_for(lambda: list(scp["hot"].incoming.iterdir()), 10, step=0.05)
    s.close()  # cut: no last fragment, no response ever sent
    assert wait_for(lambda: not list(scp["hot"].incoming.iterdir()), 10, step=0.05)
    assert events(scp["outbox"]) == []


def test_command_codec_matches_pydicom() -> None:
    raw = dul.response(dul.C_STORE_RSP, 7, CTImageStorage, 0xA900, "1.2.3", "bad")
    ds = pydicom.dcmread(io.BytesIO(raw), force=True)  # implicit VR little endian, group 0000
    assert ds.CommandGroupLength == len(raw) - 12
    assert ds.CommandField == dul.C_STORE_RSP and ds.MessageIDBeingRespondedTo == 7
    assert ds.Status == 0xA900 and ds.ErrorComment == "bad"
    assert ds.AffectedSOPInstanceUID == "1.2.3" and ds.AffectedSOPClassUID == CTImageStorage
    cmd = dul.decode_command(raw)
    assert dul.us(cmd, dul.STATUS) == 0xA900 and dul.text(cmd, dul.AFFECTED_SOP_INSTANCE_UID) == (
        "1.2.3"
    )
