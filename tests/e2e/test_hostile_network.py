"""Nothing a peer sends can stop, fool or exhaust the archive (issue #15, docs/network.md),
driven over the network against the running archive: one stack for the module (one ingest
worker, a low STRATA_MAX_OBJECT_BYTES), hostile raw sockets bound to other loopback source
addresses (127.0.0.2, 127.0.0.3, ...) so the per-address cap tells them from the modality at
127.0.0.1, and DCMTK's storescu/echoscu as that modality. After each attack the archive's
promise is checked from outside: ``assert_consistent`` (acknowledged == events == indexed,
SHA-256 of every object) and ``assert_serves`` (a legitimate peer is still served).
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from strata.dicomnet import dul
from strata.ingest import statuses
from tests.support.consistency import assert_consistent, assert_serves
from tests.support.dcmtk import storescu
from tests.support.events import of_type, read_all
from tests.support.stack import Stack, make_stack
from tests.support.synthetic import ct_series

pytestmark = pytest.mark.e2e
MAX_OBJECT = 1_000_000
ACKED: set[str] = set()  # every SOP Instance UID a peer of this module saw acknowledged


@pytest.fixture(scope="module")
def hstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("hostile-home"))
    s.env["STRATA_INGEST_WORKERS"] = "1"
    s.env["STRATA_MAX_OBJECT_BYTES"] = str(MAX_OBJECT)
    s.up()
    try:
        yield s
    finally:
        s.down()


def _connect(port: int, source: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def _rq(calling: str = "HOSTILE", called: str = "STRATA") -> bytes:
    return dul.associate_rq(
        called,
        calling,
        [(1, "1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])],
        16384,
        "1.2.826.0.1.3680043.8.498.1",
        "HOSTILE",
    )


def _answer(s: socket.socket) -> int | None:
    """The type of the next PDU the archive sends, or None when it closes without one."""
    try:
        return dul.read_pdu(s.makefile("rb"), 1 << 24)[0]
    except (ConnectionError, OSError):
        return None


@contextlib.contextmanager
def _hostile() -> Iterator[list[socket.socket]]:
    """Hostile sockets, all closed at the end of the test whatever happens."""
    socks: list[socket.socket] = []
    try:
        yield socks
    finally:
        for s in socks:
            with contextlib.suppress(OSError):
                s.close()


def _store_study(stack: Stack, tmp: Path, n: int) -> tuple[float, list[str]]:
    files = ct_series(tmp, n, patient_id="HOSTILE-NET")
    t0 = time.monotonic()
    code, rsps, out = storescu(stack.settings.ingest_port, stack.settings.ingest_ae_title, files)
    elapsed = time.monotonic() - t0
    assert code == 0 and rsps == ["Success"] * n, out[-3000:]
    ACKED.update(
        str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in files
    )
    return elapsed, [str(f) for f in files]


def _check(stack: Stack, tmp: Path) -> None:
    ACKED.add(assert_serves(stack, tmp))
    assert_consistent(stack, ACKED)


def test_idle_and_trickling_connections_do_not_starve_a_modality(
    hstack: Stack, tmp_path: Path
) -> None:
    """300 idle connections (10 addresses x 30) and 20 trickling ones (2 addresses x 10,
    a byte of their A-ASSOCIATE-RQ every half second) while storescu stores a study from
    127.0.0.1: the study is stored at under 2 s per image."""
    port = hstack.settings.ingest_port
    stop = threading.Event()
    with _hostile() as socks:
        for i in range(300):
            socks.append(_connect(port, f"127.0.0.{2 + i % 10}"))
        tricklers = [_connect(port, f"127.0.0.{12 + i % 2}") for i in range(20)]
        socks += tricklers

        def trickle() -> None:
            rq = _rq()
            for k in range(len(rq)):
                for s in tricklers:
                    with contextlib.suppress(OSError):
                        s.send(rq[k : k + 1])
                if stop.wait(0.5):  # pacing of the attack, not synchronization
                    return

        t = threading.Thread(target=trickle, daemon=True)
        t.start()
        try:
            n = 5
            elapsed, _ = _store_study(hstack, tmp_path / "study", n)
            assert elapsed / n < 2.0, f"{elapsed / n:.2f} s per image under attack"
        finally:
            stop.set()
            t.join()
        # The caps held: most hostile connections were refused with A-ASSOCIATE-RJ
        # (transient, local-limit-exceeded) or ended, not given a thread each.
        deadline = time.monotonic() + 10
        while True:
            ended = [s for s in socks if select.select([s], [], [], 0)[0]]
            if len(ended) >= 300 - 64 or time.monotonic() > deadline:
                break
            select.select([], [], [], 0.05)
        assert len(ended) >= 300 - 64, len(ended)
    _check(hstack, tmp_path)


def test_an_oversize_object_is_refused_and_recorded_without_its_bytes(
    hstack: Stack, tmp_path: Path
) -> None:
    (big,) = ct_series(tmp_path / "big", 1, patient_id="HOSTILE-BIG", rows=1024)
    assert big.stat().st_size > MAX_OBJECT
    sop = str(pydicom.dcmread(str(big), stop_before_pixels=True).SOPInstanceUID)
    quarantined_before = (
        set(os.listdir(hstack.settings.quarantine_dir))
        if (hstack.settings.quarantine_dir.exists())
        else set()
    )
    (small,) = ct_series(tmp_path / "small", 1, patient_id="HOSTILE-SMALL")
    # A C-STORE status, not an A-ABORT: storescu reports the refusal, releases the
    # association in order and (told not to halt) goes on with its next file on it.
    code, rsps, out = storescu(
        hstack.settings.ingest_port,
        hstack.settings.ingest_ae_title,
        [big, small],
        extra=["--no-halt"],
    )
    assert rsps == ["Refused: OutOfResources", "Success"], out[-3000:]
    assert "Releasing Association" in out and "Abort" not in out, out[-3000:]
    ACKED.add(str(pydicom.dcmread(str(small), stop_before_pixels=True).SOPInstanceUID))
    incoming = hstack.settings.hot_dir / ".incoming"
    assert not incoming.exists() or not list(incoming.iterdir()), "a spool file was left"
    after = (
        set(os.listdir(hstack.settings.quarantine_dir))
        if (hstack.settings.quarantine_dir.exists())
        else set()
    )
    assert after == quarantined_before, "the refused bytes were kept"
    deadline = time.monotonic() + 30
    while True:
        q = [
            e
            for e in of_type(
                read_all(hstack.settings, hstack.settings.quarantine_topic),
                "instance_quarantined",
            )
            if e.sop_instance_uid == sop  # type: ignore[attr-defined]
        ]
        if q or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(q) == 1, "no quarantine record of the refusal"
    rec = q[0]
    assert rec.reason == "too-large"  # type: ignore[attr-defined]
    assert rec.dimse_status == statuses.OUT_OF_RESOURCES_OBJECT_TOO_LARGE  # type: ignore[attr-defined]
    assert not rec.location.key  # type: ignore[attr-defined]
    _check(hstack, tmp_path)


def _user_info(sub: bytes) -> bytes:
    body = _rq()[6:]
    pos = 68
    while body[pos] != 0x50:
        pos += 4 + struct.unpack_from(">H", body, pos + 2)[0]
    return dul.pdu(dul.ASSOCIATE_RQ, body[:pos] + struct.pack(">BBH", 0x50, 0, len(sub)) + sub)


MALFORMED = {
    "truncated max-length sub-item": _user_info(struct.pack(">BBH", 0x51, 0, 4) + b"\0\0"),
    "truncated async-ops sub-item": _user_info(
        struct.pack(">BBH", 0x51, 0, 4) + b"\0\0@\0" + struct.pack(">BBH", 0x53, 0, 4) + b"\1"
    ),
    "truncated role-selection sub-item": _user_info(
        struct.pack(">BBH", 0x51, 0, 4)
        + b"\0\0@\0"
        + struct.pack(">BBHH", 0x54, 0, 30, 26)
        + b"1.2.840.1"
    ),
    "A-ASSOCIATE-RQ too short": dul.pdu(dul.ASSOCIATE_RQ, b"\0\1" + b"\0" * 20),
    "PDU length of 4 GiB": struct.pack(">BBL", dul.ASSOCIATE_RQ, 0, 0xFFFFFFFF) + b"\0" * 64,
    "item length past the PDU": _rq()[:80] + b"\x20\x00\xff\xff" + _rq()[84:],
    "unknown PDU type": dul.pdu(0x42, b"\0" * 16),
    "garbage": bytes(range(256)) * 4,
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_association_requests_are_aborted(
    hstack: Stack, tmp_path: Path, name: str
) -> None:
    with _hostile() as socks:
        s = _connect(hstack.settings.ingest_port, "127.0.0.20")
        socks.append(s)
        s.sendall(MALFORMED[name])
        answer = _answer(s)
        assert answer in (dul.ABORT, dul.ASSOCIATE_RJ), (name, answer)
    _check(hstack, tmp_path)


def test_malformed_pdus_on_an_association_are_aborted(hstack: Stack, tmp_path: Path) -> None:
    bad = {
        "PDV length past the PDU": dul.pdu(dul.P_DATA_TF, struct.pack(">LBB", 5000, 1, 3) + b"x"),
        "PDU over the maximum length": struct.pack(">BBL", dul.P_DATA_TF, 0, 64 << 20),
        "PDV on a context never proposed": dul.p_data(77, b"\0" * 16, True, 0),
        "garbage command set": dul.p_data(1, b"\xff" * 40, True, 0),
    }
    with _hostile() as socks:
        for name, data in bad.items():
            s = _connect(hstack.settings.ingest_port, "127.0.0.21")
            socks.append(s)
            s.sendall(_rq())
            assert _answer(s) == dul.ASSOCIATE_AC, name
            s.sendall(data)
            assert _answer(s) == dul.ABORT, name
    _check(hstack, tmp_path)
