"""Nothing a peer sends can stop, fool or exhaust the acceptor (issue #15; docs/network.md).

The real acceptor (the ingest SCP, ``ingest/scp.py`` on ``dicomnet/acceptor.py``) runs
in-process on a free loopback port with the real store service behind it; the peers are raw
sockets writing exactly the bytes under test (bound to 127.0.0.2, 127.0.0.3... where the
per-address cap must tell them apart from the legitimate peer at 127.0.0.1) and pynetdicom
as the legitimate modality. No Kafka: the relay is not part of the receive path.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import (
    CTImageStorage,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from strata.archive.hot import HotTier
from strata.common.settings import Settings
from strata.dicomnet import dul
from strata.dicomnet.requestor import IMPLICIT_LE, Requestor, find_command
from strata.dicomnet.sockets import nodelay
from strata.ingest import statuses
from strata.ingest.config import AEConfig
from strata.ingest.outbox import Outbox
from strata.ingest.scp import Config, StoreServer
from strata.ingest.store import Limits, StoreService
from strata.proto.strata.v1 import events_pb2 as pb
from strata.query.retrieve import HotSource
from strata.query.scp import QueryServer, Services
from tests.support.stack import free_port

CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
IMPL = "1.2.826.0.1.3680043.8.498.1"
FIND = str(StudyRootQueryRetrieveInformationModelFind)



def _serve(tmp: Path, **cfg: object) -> tuple[StoreServer, int, HotTier, Outbox]:
    hot = HotTier(tmp / "hot")
    outbox = Outbox(tmp / "outbox.sqlite")
    service = StoreService(
        tier=hot,
        outbox=outbox,
        topic="t",
        quarantine_topic="q",
        quarantine_dir=tmp / "quarantine",
        node="n1",
        aes=AEConfig(),
        limits=Limits(max_object_bytes=int(cfg.pop("max_object_bytes", 2_000_000))),  # type: ignore[call-overload]
    )
    port = free_port()
    base: dict[str, object] = {"max_pdu": 16384, "network_timeout": 10.0, "acse_timeout": 10.0}
    base.update(cfg)
    server = StoreServer(Config(**base), service, hot.incoming, ("127.0.0.1", port))  # type: ignore[arg-type]
    return server, port, hot, outbox


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dict]:
    server, port, hot, outbox = _serve(
        tmp_path, max_associations=6, max_per_peer=3, artim_timeout=1.0, pdu_timeout=1.0
    )
    try:
        yield {"server": server, "port": port, "hot": hot, "outbox": outbox, "tmp": tmp_path}
    finally:
        server.shutdown()


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    nodelay(s)
    return s


def _rq(calling: str = "CT1", max_length: int = 16384) -> bytes:
    return dul.associate_rq(
        "ARCHIVE",
        calling,
        [
            (1, str(CTImageStorage), [str(ExplicitVRLittleEndian)]),
            (3, str(Verification), [IMPLICIT_LE]),
        ],
        max_length,
        IMPL,
        "FUZZ",
    )


def _read_pdu(s: socket.socket) -> tuple[int, bytes] | None:
    """The next PDU the acceptor sends, or None at EOF / reset."""
    try:
        f = s.makefile("rb")
        return dul.read_pdu(f, 1 << 24)
    except (ConnectionError, OSError):
        return None


def _eof(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True


def _associated(port: int, source: str = "127.0.0.1") -> socket.socket:
    s = _connect(port, source)
    s.sendall(_rq())
    got = _read_pdu(s)
    assert got is not None and got[0] == dul.ASSOCIATE_AC, got
    return s


def _ct(sop: str | None = None, pixels: int = 0) -> pydicom.Dataset:
    ds = pydicom.dcmread(str(CT))
    ds.SOPInstanceUID = sop or generate_uid()
    if pixels:  # about this many bytes of 16-bit pixels
        ds.Rows = ds.Columns = rows = int((pixels / 2) ** 0.5) + 1
        ds.PixelData = b"\1" * (rows * rows * 2)
    return ds


def _store_ok(port: int) -> None:
    """The legitimate modality (127.0.0.1) is served: association, C-STORE, release."""
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    a = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
    assert a.is_established, "the legitimate peer was not served"
    try:
        assert a.send_c_store(_ct()).Status == statuses.SUCCESS
    finally:
        a.release()


def _limit_rj(got: tuple[int, bytes] | None) -> bool:
    return got is not None and got == (
        dul.ASSOCIATE_RJ,
        bytes((0, dul.RJ_TRANSIENT, dul.RJ_SOURCE_PRESENTATION, dul.RJ_LOCAL_LIMIT_EXCEEDED)),
    )


# ----------------------------------------------------------------------------- fair connections


def test_a_peer_over_its_cap_is_rejected_without_a_thread(node: dict) -> None:
    port, server = node["port"], node["server"]
    refused0 = REGISTRY.get_sample_value("strata_ingest_associations_total", {"result": "refused"})
    held = [_connect(port, "127.0.0.2") for _ in range(3)]
    try:
        while server.connections_from("127.0.0.2") < 3:
            select.select([], [], [], 0.01)
        over = _connect(port, "127.0.0.2")
        over.sendall(_rq())
        assert _limit_rj(_read_pdu(over))  # transient: the peer may try again later
        assert _eof(over)  # and the acceptor has closed its side: no thread holds it
        over.close()
        assert server.active() == 3 and server.refused == 1
        refused = REGISTRY.get_sample_value(
            "strata_ingest_associations_total", {"result": "refused"}
        )
        assert refused == (refused0 or 0) + 1
        _store_ok(port)  # another address is served as before
    finally:
        for s in held:
            s.close()


def test_at_the_total_cap_an_idle_connection_of_the_biggest_holder_is_evicted(
    node: dict,
) -> None:
    port, server = node["port"], node["server"]
    held = [_connect(port, src) for src in ("127.0.0.2",) * 3 + ("127.0.0.3",) * 3]
    try:
        while server.active() < 6:
            select.select([], [], [], 0.01)
        _store_ok(port)  # at the cap: a newcomer holding nothing gets a slot
        assert server.evicted >= 1
        ended = select.select(held, [], [], 5.0)[0]
        assert ended, "no idle connection was ended for the newcomer"
        # The evicted one was told: an A-ABORT (or at least the end of the connection).
        got = _read_pdu(ended[0])
        assert got is None or got[0] == dul.ABORT
    finally:
        for s in held:
            s.close()


def test_the_association_request_must_arrive_within_artim(node: dict) -> None:
    """A peer trickling its A-ASSOCIATE-RQ a byte at a time (each byte well within any idle
    timeout) is aborted at the ARTIM deadline (1 s here), long before its request is whole."""
    s = _connect(node["port"], "127.0.0.2")
    rq = _rq()
    sent = 0
    try:
        while sent < len(rq) - 1:
            # a byte every 50 ms: the whole request would take ~10 s
            if select.select([s], [], [], 0.05)[0]:
                break
            s.send(rq[sent : sent + 1])
            sent += 1
        got = _read_pdu(s)
        assert sent < len(rq) - 1, "the trickled request was read whole"
        assert got is None or got[0] == dul.ABORT
    finally:
        s.close()
    _store_ok(node["port"])


def test_a_pdu_must_complete_within_its_deadline(node: dict) -> None:
    """Once a PDU's first byte arrived, the PDU must be whole within the PDU deadline (1 s
    here): a peer trickling a P-DATA-TF cannot hold its slot, though each byte beats the
    10 s idle timeout."""
    s = _associated(node["port"], "127.0.0.2")
    pdata = dul.p_data(3, b"\0" * 400, True, 16384)
    sent = 0
    try:
        while sent < len(pdata) - 1:
            if select.select([s], [], [], 0.05)[0]:
                break
            s.send(pdata[sent : sent + 1])
            sent += 1
        assert sent < len(pdata) - 1, "the trickled PDU was read whole"
        got = _read_pdu(s)
        assert got is not None and got[0] == dul.ABORT
    finally:
        s.close()
    _store_ok(node["port"])


def test_a_rejection_reaches_a_peer_that_sent_more_than_its_request(tmp_path: Path) -> None:
    """The A-ASSOCIATE-RJ reaches a requestor that sent more than its A-ASSOCIATE-RQ and
    waits for the acceptor to close: the acceptor half-closes after the RJ (the peer reads
    it, then EOF at once, where it used to wait the whole 2 s drain for the peer to close
    first) and drains the peer's bytes before it closes, so no reset discards the RJ."""
    server, port, _, _ = _serve(tmp_path, allow_list=["CT1"])
    try:
        s = _connect(port)
        # an unknown caller whose RQ is followed by a P-DATA-TF it sent without waiting
        s.sendall(_rq("INTRUDER") + dul.p_data(1, b"\0" * 300_000, False, 0))
        s.settimeout(1.5)  # less than the acceptor's 2 s drain: it must not wait for us
        got = _read_pdu(s)
        assert got is not None and got[0] == dul.ASSOCIATE_RJ, got
        assert got[1][1:] == bytes((dul.RJ_PERMANENT, 1, dul.RJ_CALLING_AE_NOT_RECOGNIZED))
        assert _eof(s)
        s.close()
    finally:
        server.shutdown()


# ------------------------------------------------------------------- limits while receiving


def test_an_oversize_object_is_refused_while_received_and_nothing_is_kept(node: dict) -> None:
    ae = AE(ae_title="CT1")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    a = ae.associate("127.0.0.1", node["port"], ae_title="ARCHIVE")
    assert a.is_established
    ds = _ct(pixels=3_000_000)  # over the 2 MB limit
    try:
        st_ = a.send_c_store(ds)
        assert st_.Status == statuses.OUT_OF_RESOURCES_OBJECT_TOO_LARGE
        # the association goes on
        assert a.send_c_store(_ct()).Status == statuses.SUCCESS
    finally:
        a.release()
    assert not list(node["hot"].incoming.iterdir()), "a spool file was left"
    assert not (node["tmp"] / "quarantine").exists() or not list(
        (node["tmp"] / "quarantine").iterdir()
    ), "the refused bytes were kept"
    evs = [pb.Envelope.FromString(r.value) for r in node["outbox"].pending(1000)]
    q = [e.instance_quarantined for e in evs if e.WhichOneof("payload") == "instance_quarantined"]
    assert len(q) == 1
    assert q[0].reason == "too-large" and q[0].sop_instance_uid == ds.SOPInstanceUID
    assert q[0].dimse_status == statuses.OUT_OF_RESOURCES_OBJECT_TOO_LARGE
    assert not q[0].location.key and q[0].size_bytes > 2_000_000
    stored = [e for e in evs if e.WhichOneof("payload") == "instance_stored"]
    assert len(stored) == 1  # only the small one


def test_a_large_object_streams_at_the_default_max_pdu(tmp_path: Path) -> None:
    """The finite default (1 MiB) keeps large objects streaming: 24 MB in 1 MiB PDUs."""
    default = Settings().max_pdu
    assert 0 < default <= 4 << 20
    server, port, hot, outbox = _serve(tmp_path, max_pdu=default, max_object_bytes=100_000_000)
    try:
        ae = AE(ae_title="CT1")
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        a = ae.associate("127.0.0.1", port, ae_title="ARCHIVE")
        assert a.acceptor.maximum_length == default
        assert a.send_c_store(_ct(pixels=24_000_000)).Status == statuses.SUCCESS
        a.release()
        (e,) = [pb.Envelope.FromString(r.value) for r in outbox.pending(10)]
        assert e.instance_stored.size_bytes > 24_000_000
    finally:
        server.shutdown()


def test_an_endless_command_set_is_aborted(node: dict) -> None:
    s = _associated(node["port"])
    try:
        chunk = dul.p_data(1, b"\0" * 8000, True, 16384, last=False)
        for _ in range(10):  # 80 KB of command fragments, never the last one
            s.sendall(chunk)
        got = _read_pdu(s)
        assert got is not None and got[0] == dul.ABORT
    finally:
        s.close()


# ----------------------------------------------------------------------------- malformed PDUs


def _user_info(sub: bytes) -> bytes:
    return struct.pack(">BBH", 0x50, 0, len(sub)) + sub


def _rq_with_user_info(sub: bytes) -> bytes:
    """A valid A-ASSOCIATE-RQ whose user information item carries ``sub`` as is."""
    body = _rq()[6:]
    pos = 68
    while body[pos] != 0x50:  # walk the variable items to the user information item
        pos += 4 + struct.unpack_from(">H", body, pos + 2)[0]
    return dul.pdu(dul.ASSOCIATE_RQ, body[:pos] + _user_info(sub))


TRUNCATED_SUB_ITEMS = {
    # item header says 4 bytes of value; the user information item ends after 2
    "max-length": struct.pack(">BBH", 0x51, 0, 4) + b"\0\0",
    "async-ops": struct.pack(">BBH", 0x51, 0, 4)
    + b"\0\0@\0"
    + struct.pack(">BBH", 0x53, 0, 4)
    + b"\0",
    "role-selection": struct.pack(">BBH", 0x51, 0, 4)
    + b"\0\0@\0"
    + struct.pack(">BBHH", 0x54, 0, 30, 26)
    + str(CTImageStorage).encode()[:10],
    "role-selection-short": struct.pack(">BBH", 0x51, 0, 4)
    + b"\0\0@\0"
    + struct.pack(">BBHH", 0x54, 0, 4, 26)
    + b"\1\1",
}


@pytest.mark.parametrize("name", sorted(TRUNCATED_SUB_ITEMS))
def test_a_truncated_sub_item_is_aborted_not_a_traceback(
    node: dict, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    s = _connect(node["port"])
    try:
        s.sendall(_rq_with_user_info(TRUNCATED_SUB_ITEMS[name]))
        got = _read_pdu(s)
        assert got is not None and got[0] == dul.ABORT, got
        assert got[1][2] == dul.ABORT_SOURCE_PROVIDER
    finally:
        s.close()
    _store_ok(node["port"])
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert any("aborted" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- fuzz


def _answer(s: socket.socket) -> int | None:
    """The acceptor's answer: a PDU type, or None when it closed without one."""
    got = _read_pdu(s)
    return None if got is None else got[0]


@st.composite
def sub_item(draw: st.DrawFn) -> bytes:
    """A user information sub-item (PS3.7 D.3.3, PS3.8 D.1) whose value is about the size
    its type wants and whose declared length is off by a little, or not."""
    t = draw(st.sampled_from([0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x58, 0x99]))
    if t in (0x51, 0x53):  # maximum length, asynchronous operations: 4 bytes
        value = draw(st.binary(max_size=5))
        declared = draw(st.sampled_from([4, len(value)]))
    elif t == 0x54:  # role selection: UID length, UID, SCU role, SCP role
        uid = draw(st.binary(max_size=26))
        n = len(uid) + draw(st.integers(-2, 2))
        value = struct.pack(">H", max(n, 0)) + uid + draw(st.binary(max_size=2))
        declared = draw(st.sampled_from([len(value), 4 + len(uid), len(value) + 2]))
    else:
        value = draw(st.binary(max_size=8))
        declared = max(len(value) + draw(st.sampled_from([0, -1, 1, 4])), 0)
    return struct.pack(">BBH", t, 0, declared) + value


_rq_bytes = _rq()
_edits = st.lists(
    st.tuples(st.integers(0, len(_rq_bytes) - 1), st.integers(0, 255)), min_size=1, max_size=8
)
rq_fuzz = st.one_of(
    st.binary(min_size=1, max_size=300),  # garbage
    st.builds(lambda n: _rq_bytes[:n], st.integers(1, len(_rq_bytes) - 1)),  # cut short
    st.builds(  # bytes overwritten, in headers and lengths too
        lambda edits: bytes(
            _apply(bytearray(_rq_bytes), edits)  # type: ignore[arg-type]
        ),
        _edits,
    ),
    st.builds(  # user information sub-items, their declared lengths near the true ones
        lambda subs: _rq_with_user_info(b"".join(subs)), st.lists(sub_item(), max_size=3)
    ),
)
pdata_fuzz = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.builds(  # P-DATA-TF framing around arbitrary PDVs
        lambda pdvs: dul.pdu(
            dul.P_DATA_TF,
            b"".join(struct.pack(">LBB", n, pc, mch) + v for n, pc, mch, v in pdvs),
        ),
        st.lists(
            st.tuples(
                st.integers(0, 300),
                st.sampled_from([1, 3, 5]),
                st.integers(0, 3),
                st.binary(max_size=200),
            ),
            min_size=1,
            max_size=3,
        ),
    ),
)


def _apply(b: bytearray, edits: list[tuple[int, int]]) -> bytearray:
    for pos, x in edits:
        b[pos] = x
    return b


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp = tmp_path_factory.mktemp("fuzz")
    server, port, hot, outbox = _serve(tmp, artim_timeout=2.0, pdu_timeout=2.0)
    try:
        yield {"server": server, "port": port}
    finally:
        server.shutdown()


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _no_errors() -> Iterator[None]:
    h = _Errors()
    logging.getLogger().addHandler(h)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(h)
    assert not h.records, [r.getMessage() for r in h.records]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=rq_fuzz)
def test_fuzzed_association_requests(fuzz_node: dict, data: bytes) -> None:
    with _no_errors():
        s = _connect(fuzz_node["port"])
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # all there is: the acceptor must answer or close
            answer = _answer(s)
        finally:
            s.close()
        assert answer in (None, dul.ASSOCIATE_AC, dul.ASSOCIATE_RJ, dul.ABORT)
        if answer is None:  # closed without a word only when no whole PDU ever arrived
            assert len(data) < 6 or len(data) < 6 + struct.unpack(">L", data[2:6])[0]
        _store_ok(fuzz_node["port"])


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=pdata_fuzz)
def test_fuzzed_pdus_on_an_association(fuzz_node: dict, data: bytes) -> None:
    with _no_errors():
        s = _associated(fuzz_node["port"])
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            answer = _answer(s)
        finally:
            s.close()
        # A-ABORT, or a C-STORE/C-ECHO response (P-DATA-TF) for what happened to be valid,
        # or the end of the connection where the bytes stop mid-PDU
        assert answer in (None, dul.P_DATA_TF, dul.RELEASE_RP, dul.ABORT)
        _store_ok(fuzz_node["port"])


def test_the_node_is_quiet_after_the_fuzz(fuzz_node: dict) -> None:
    """No association thread is left behind by the fuzz (each one ended)."""
    deadline = time.monotonic() + 10
    while fuzz_node["server"].active() and time.monotonic() < deadline:
        select.select([], [], [], 0.05)
    assert fuzz_node["server"].active() == 0


# ----------------------------------------------------------------------------- Q/R queues


class _BlockedIndex:
    """A fake of the index port whose every read waits until released: the Q/R worker stays
    busy."""

    database = "strata"

    def __init__(self) -> None:
        self.release = threading.Event()

    def search(self, q: object, timeout: float = 0.0, **kw: object) -> list:
        self.release.wait(30)
        return []

    def locate(self, keys: dict, limit: int) -> list:
        self.release.wait(30)
        return []

    def held_syntaxes(self) -> dict:
        self.release.wait(30)
        return {}


@pytest.fixture
def qr(tmp_path: Path) -> Iterator[dict]:
    index = _BlockedIndex()
    port = free_port()
    server = QueryServer(
        Config(16384, 10.0, 10.0),
        Services(index, HotSource(tmp_path), {}, "STRATA_QR", 100, max_pending=4),
        ("127.0.0.1", port),
    )
    try:
        yield {"port": port, "index": index}
    finally:
        index.release.set()
        server.shutdown()


def _echo_rq(msg_id: int) -> bytes:
    return dul.encode_command(
        [
            (dul.AFFECTED_SOP_CLASS_UID, str(Verification)),
            (dul.COMMAND_FIELD, dul.C_ECHO_RQ),
            (dul.MESSAGE_ID, msg_id),
            (dul.COMMAND_DATASET_TYPE, dul.NO_DATASET),
        ]
    )


def test_qr_requests_queued_past_the_bound_abort_the_association(qr: dict) -> None:
    """A peer cannot queue unbounded work: with one operation running (the index is slow)
    and max_pending (4) more queued, the next request is answered with A-ABORT."""
    contexts = [(FIND, [IMPLICIT_LE]), (str(Verification), [IMPLICIT_LE])]
    r = Requestor("127.0.0.1", qr["port"], "GREEDY", "STRATA_QR", contexts)
    try:
        cmd = find_command(FIND, 1)
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.StudyInstanceUID = ""
        r.send_message(r.context(FIND), cmd, encode(q, True, True))
        echo = r.context(str(Verification))
        for i in range(2, 8):  # the worker is held by the C-FIND: these queue
            r.send_message(echo, _echo_rq(i))
        with pytest.raises(ConnectionError):
            while True:  # no response comes before the abort (the worker is blocked)
                r.receive()
    finally:
        qr["index"].release.set()
        r.close()


def test_unsolicited_store_responses_are_bounded(qr: dict) -> None:
    r = Requestor("127.0.0.1", qr["port"], "NOISY", "STRATA_QR", [(str(Verification), [])])
    try:
        pc = r.context(str(Verification))
        for i in range(6):  # C-STORE-RSPs nobody asked for: nothing consumes them
            r.send_message(pc, dul.response(dul.C_STORE_RSP, i + 1, str(CTImageStorage), 0))
        r.send_message(pc, _echo_rq(99))
        with pytest.raises(ConnectionError):
            r.receive()  # A-ABORT, not the C-ECHO response
    finally:
        r.close()


# ----------------------------------------------------------------------------- the flaky RJ


def test_pynetdicom_reports_a_rejection_it_received_as_an_abort_when_it_is_fast(
    tmp_path: Path,
) -> None:
    """Issue #15 finding 4, the cause found: the A-ASSOCIATE-RJ is not lost on the wire.
    pynetdicom's requestor receives it and closes its socket (reactor thread, PS3.8 AE-4)
    before its ACSE thread, which sent the request, checks that the socket is still
    connected; finding it closed, it aborts and never looks at the RJ already queued for it
    (pynetdicom 3.0 acse._negotiate_as_requestor). The lean acceptor answers fast enough to
    win that race now and then. Here the ACSE thread is held until the RJ has arrived and the
    socket is closed: pynetdicom then always reports an abort, though the RJ came. The e2e
    test of the rejection therefore checks the PDU received, not pynetdicom's flags."""
    from pynetdicom import evt, pdu

    server, port, _, _ = _serve(tmp_path, allow_list=["CT1"])
    received: list[object] = []
    got_rj = threading.Event()

    def on_pdu(event: evt.Event) -> None:
        received.append(event.pdu)  # type: ignore[attr-defined]
        if isinstance(event.pdu, pdu.A_ASSOCIATE_RJ):  # type: ignore[attr-defined]
            got_rj.set()

    def on_requested(event: evt.Event) -> None:  # the ACSE thread, after sending the RQ
        assert got_rj.wait(10)
        sock = event.assoc.dul.socket
        deadline = time.monotonic() + 10
        while sock is not None and sock._is_connected and time.monotonic() < deadline:
            threading.Event().wait(0.005)  # until the reactor has closed the socket (AE-4)

    try:
        ae = AE(ae_title="INTRUDER")
        ae.add_requested_context(Verification)
        a = ae.associate(
            "127.0.0.1",
            port,
            ae_title="ARCHIVE",
            evt_handlers=[(evt.EVT_PDU_RECV, on_pdu), (evt.EVT_REQUESTED, on_requested)],
        )
        rjs = [p for p in received if isinstance(p, pdu.A_ASSOCIATE_RJ)]
        assert len(rjs) == 1 and rjs[0].reason_diagnostic == dul.RJ_CALLING_AE_NOT_RECOGNIZED
        assert a.is_aborted and not a.is_rejected and not a.is_established
    finally:
        server.shutdown()
