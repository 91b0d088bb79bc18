"""The association requestor on the lean upper layer (``common/dul.py``): what the archive
needs to open an association to a peer (C-MOVE sub-associations, benchmark clients), send
DIMSE messages and read the answers. Synchronous: one outstanding operation at a time."""

from __future__ import annotations

import contextlib
import socket
from collections import deque
from typing import Any

from common import dul
from common.acceptor import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION
from common.dimse import nodelay

IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
_MAX_SEND_PDU = 1 << 20  # the largest P-DATA-TF sent when the peer allows any length


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
    ) -> None:
        if not contexts or len(contexts) > 128:
            raise ValueError("an association proposes 1 to 128 presentation contexts")
        self.sock = socket.create_connection((host, port), timeout=timeout)
        nodelay(self.sock)
        self._f = self.sock.makefile("rb", buffering=1 << 18)
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
        self._pending: deque[tuple[int, dict[int, bytes], bytes | None]] = deque()

    def context(self, abstract: str, transfer_syntaxes: tuple[str, ...] | None = None) -> int:
        """An accepted context for ``abstract`` (in one of ``transfer_syntaxes``), or 0."""
        for pc_id, (a, ts) in self.accepted.items():
            if a == abstract and (transfer_syntaxes is None or ts in transfer_syntaxes):
                return pc_id
        return 0

    def send(self, data: bytes) -> None:
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
