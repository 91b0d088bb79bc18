"""The association requestor on the lean upper layer (``dicomnet/dul.py``): what the archive
needs to open an association to a peer (C-MOVE sub-associations, benchmark clients), send
DIMSE messages and read the answers. Synchronous: one outstanding operation at a time."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

from strata.dicomnet import dul
from strata.dicomnet.acceptor import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION
from strata.dicomnet.sockets import nodelay

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
_MAX_SEND_PDU = 1 << 20  # the largest P-DATA-TF sent when the peer allows any length
_PAYLOAD_IN_MEMORY = 4 << 20  # objects up to this size are sent from one read
_CHUNK = 1 << 20


class AssociationRejected(ConnectionError):
    def __init__(self, result: int, source: int, reason: int) -> None:
        super().__init__(f"association rejected (result {result}, source {source}, {reason})")
        self.result, self.source, self.reason = result, source, reason


class Requestor:
    """An established association to ``host:port`` proposing ``contexts`` (abstract syntax,
    transfer syntaxes), each as its own presentation context."""

    def __init__(
        self,
        host: str,
        port: int,
        calling_ae: str,
        called_ae: str,
        contexts: list[tuple[str, list[str]]],
        roles: dict[str, tuple[int, int]] | None = None,
        timeout: float = 30.0,
        max_pdu: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """``tls``: DICOM TLS (dicomnet/tls.client_context), the peer's certificate verified
        for ``host``; None: plain TCP."""
        if not contexts or len(contexts) > 128:
            raise ValueError("an association proposes 1 to 128 presentation contexts")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        nodelay(self.sock)
        if tls is not None:
            try:
                self.sock = tls.wrap_socket(self.sock, server_hostname=host)
            except BaseException:
                with contextlib.suppress(OSError):
                    self.sock.close()
                raise
        self._f = cast(BinaryIO, self.sock.makefile("rb", buffering=1 << 18))
        self.max_pdu = max_pdu
        proposed = [(2 * i + 1, a, list(ts)) for i, (a, ts) in enumerate(contexts)]
        try:
            self.sock.sendall(
                dul.associate_rq(
                    called_ae,
                    calling_ae,
                    proposed,
                    max_pdu,
                    IMPLEMENTATION_UID,
                    IMPLEMENTATION_VERSION,
                    roles,
                )
            )
            pdu_type, body = dul.read_pdu(self._f, 1 << 16)
            if pdu_type == dul.ASSOCIATE_RJ and len(body) >= 4:
                raise AssociationRejected(body[1], body[2], body[3])
            if pdu_type != dul.ASSOCIATE_AC:
                raise ConnectionError(f"association not accepted (PDU type 0x{pdu_type:02X})")
            ac = dul.parse_associate_ac(body)
        except BaseException:
            self.close()
            raise
        self.peer_max = min(ac.max_length or _MAX_SEND_PDU, _MAX_SEND_PDU)
        # accepted context id -> (abstract syntax, transfer syntax)
        self.accepted: dict[int, tuple[str, str]] = {
            pc_id: (abstract, ac.contexts[pc_id][1])
            for pc_id, abstract, _ in proposed
            if ac.contexts.get(pc_id, (1, ""))[0] == dul.PC_ACCEPTANCE
        }
        self._assembler = dul.MessageAssembler(64 << 20)
        self.lost = False  # set by a user when the association broke mid-operation
        self._pending: deque[tuple[int, dict[int, bytes], bytes | None]] = deque()

    def context(self, abstract: str, transfer_syntaxes: tuple[str, ...] | None = None) -> int:
        """An accepted context for ``abstract`` (in one of ``transfer_syntaxes``), or 0."""
        for pc_id, (a, ts) in self.accepted.items():
            if a == abstract and (transfer_syntaxes is None or ts in transfer_syntaxes):
                return pc_id
        return 0

    def send(self, data: bytes | bytearray) -> None:
        self.sock.sendall(data)

    def send_message(self, pc_id: int, command: bytes, dataset: bytes | None = None) -> None:
        out = dul.p_data(pc_id, command, True, self.peer_max)
        if dataset is not None:
            out += dul.p_data(pc_id, dataset, False, self.peer_max)
        self.sock.sendall(out)

    def receive(self) -> tuple[int, dict[int, bytes], bytes | None]:
        """The next whole DIMSE message from the peer (A-ABORT/A-RELEASE: ConnectionError)."""
        while not self._pending:
            pdu_type, body = dul.read_pdu(self._f, 0)
            if pdu_type != dul.P_DATA_TF:
                raise ConnectionError(f"association ended by the peer (PDU 0x{pdu_type:02X})")
            for pc_id, mch, data in dul.iter_pdvs(body):
                done = self._assembler.feed(pc_id, mch, data)
                if done is not None:
                    self._pending.append(done)
        return self._pending.popleft()

    def store(
        self, pc_id: int, sop_class: str, sop_instance: str, dataset: bytes | Path, msg_id: int
    ) -> tuple[int, str]:
        """One C-STORE on context ``pc_id``: (status, error comment) of the peer's response."""
        send_store(
            self.send, pc_id, store_command(sop_class, sop_instance, msg_id), self.peer_max, dataset
        )
        while True:
            _pc, cmd, _ = self.receive()
            if dul.us(cmd, dul.COMMAND_FIELD) == dul.C_STORE_RSP and (
                dul.us(cmd, dul.MESSAGE_ID_BEING_RESPONDED_TO) == msg_id
            ):
                return dul.us(cmd, dul.STATUS), dul.text(cmd, dul.ERROR_COMMENT)

    def release(self) -> None:
        try:
            self.sock.sendall(dul.release_rq())
            while True:
                pdu_type, _ = dul.read_pdu(self._f, 0)
                if pdu_type in (dul.RELEASE_RP, dul.ABORT):
                    break
        except (OSError, ConnectionError, dul.ProtocolError):
            pass
        finally:
            self.close()

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.sendall(dul.abort(dul.ABORT_SOURCE_USER))
        self.close()

    def close(self) -> None:
        for c in (self._f, self.sock):
            with contextlib.suppress(OSError):
                c.close()

    def __enter__(self) -> Requestor:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.release()
        else:
            self.abort()


# --------------------------------------------------------------------------- C-STORE requests


def store_command(
    sop_class: str,
    sop_instance: str,
    msg_id: int,
    originator: str = "",
    originator_msg_id: int = 0,
) -> bytes:
    """A C-STORE-RQ command set (with the C-MOVE originator when given, PS3.7 9.1.1.1)."""
    elements: list[tuple[int, int | str]] = [
        (dul.AFFECTED_SOP_CLASS_UID, sop_class),
        (dul.COMMAND_FIELD, dul.C_STORE_RQ),
        (dul.MESSAGE_ID, msg_id),
        (dul.PRIORITY, 0),
        (dul.COMMAND_DATASET_TYPE, dul.HAS_DATASET),
        (dul.AFFECTED_SOP_INSTANCE_UID, sop_instance),
    ]
    if originator:
        elements += [
            (dul.MOVE_ORIGINATOR_AE, originator),
            (dul.MOVE_ORIGINATOR_MESSAGE_ID, originator_msg_id),
        ]
    return dul.encode_command(elements)


def find_command(sop_class: str, msg_id: int) -> bytes:
    """A C-FIND-RQ command set (an identifier follows, PS3.7 9.1.2.1)."""
    return dul.encode_command(
        [
            (dul.AFFECTED_SOP_CLASS_UID, sop_class),
            (dul.COMMAND_FIELD, dul.C_FIND_RQ),
            (dul.MESSAGE_ID, msg_id),
            (dul.PRIORITY, 0),
            (dul.COMMAND_DATASET_TYPE, dul.HAS_DATASET),
        ]
    )


def send_store(
    send: Callable[[bytearray], None],
    pc_id: int,
    command: bytes,
    max_pdu: int,
    dataset: bytes | Path,
) -> None:
    """A C-STORE-RQ message: ``command``, then the dataset, given as bytes or as a Part 10
    file whose dataset bytes go out as stored (read in 1 MiB pieces when large)."""
    out = dul.p_data(pc_id, command, True, max_pdu)
    if isinstance(dataset, bytes):
        out += dul.p_data(pc_id, dataset, False, max_pdu)
        send(out)
        return
    send(out)  # the command alone: one more segment, no copy of the dataset to join them
    for chunk, last in dataset_chunks(dataset):
        send(dul.p_data(pc_id, chunk, False, max_pdu, last=last))


def dataset_chunks(path: Path) -> Iterator[tuple[bytes | memoryview, bool]]:
    """The dataset bytes of a Part 10 file (after its File Meta Information), in pieces of
    at most 1 MiB (one piece when the object is small), each with "is the last"."""
    with open(path, "rb") as f:
        head = f.read(_PAYLOAD_IN_MEMORY)
        offset = dataset_offset(head, path)
        if len(head) < _PAYLOAD_IN_MEMORY:
            yield memoryview(head)[offset:], True
            return
        f.seek(offset)
        chunk = f.read(_CHUNK)
        while chunk:
            nxt = f.read(_CHUNK)
            yield chunk, not nxt
            chunk = nxt


def dataset_offset(head: bytes, path: Path) -> int:
    """Where the dataset starts in a Part 10 file: after the preamble, 'DICM' and the File
    Meta group, whose length the group length element (0002,0000) gives; without that element
    the meta elements are walked (explicit VR little endian, PS3.10 7.1)."""
    if head[128:132] != b"DICM":
        return 0  # a bare dataset
    if head[132:140] == b"\x02\x00\x00\x00UL" and len(head) >= 144:
        return 144 + struct.unpack_from("<L", head, 140)[0]
    pos = 132
    while pos + 8 <= len(head) and head[pos : pos + 2] == b"\x02\x00":
        vr = head[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            pos += 12 + struct.unpack_from("<L", head, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", head, pos + 6)[0]
    if pos > len(head):
        raise ValueError(f"{path.name}: File Meta Information longer than the file")
    return pos
