"""The query/retrieve SCP: C-ECHO, C-FIND, C-MOVE and C-GET (Patient Root and Study Root
information models) on the lean upper layer (``dicomnet/acceptor.py``).

Each association has two threads: the acceptor's reads PDUs and assembles DIMSE messages
(a C-CANCEL-RQ marks the running operation cancelled at once; the C-STORE-RSPs of C-GET
sub-operations are handed to it), a worker runs the operations one after another and writes
the responses. A C-FIND response identifier is written straight from the index row
(``query.find.to_bytes``); a C-MOVE/C-GET sub-operation sends the stored object's dataset
bytes unchanged from its file, whichever tier holds it (``query.retrieve``), when the peer
accepted its transfer syntax, else the object transcoded (``archive.transcode``, in its process
pool, a study's objects in parallel) to a syntax the peer accepted. Statuses follow PS3.4
C.4.1.1.4 (find), C.4.2.1.5 (move) and C.4.3.1.4 (get).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from pydicom import Dataset
from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts
from pynetdicom.dsutils import decode, encode
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from strata.archive import transcode
from strata.common import audit
from strata.common.errors import DeadlineExceeded, Invalid, NotFound, Unavailable
from strata.dicomnet import acceptor, dul
from strata.dicomnet.requestor import (
    EXPLICIT_BE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    Requestor,
    send_store,
    store_command,
)
from strata.processors.index.port import Index
from strata.query import audit as qaudit
from strata.query.find import find_rows, parse_identifier, to_bytes
from strata.query.retrieve import Located, ObjectSource, local_paths, locate

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
SUCCESS = 0x0000
WARNING = 0xB000
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700
SUB_OPERATIONS_FAILED = 0xA702  # Refused: out of resources, unable to perform sub-operations
MOVE_DESTINATION_UNKNOWN = 0xA801

FIND = {
    str(PatientRootQueryRetrieveInformationModelFind),
    str(StudyRootQueryRetrieveInformationModelFind),
}
MOVE = {
    str(PatientRootQueryRetrieveInformationModelMove),
    str(StudyRootQueryRetrieveInformationModelMove),
}
GET = {
    str(PatientRootQueryRetrieveInformationModelGet),
    str(StudyRootQueryRetrieveInformationModelGet),
}
SERVICES = FIND | MOVE | GET | {str(Verification)}
STORAGE = frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)
# Identifiers are read and written in these (pynetdicom's decoder/encoder; the first two
# also by query.find.to_bytes).
IDENTIFIER_SYNTAXES = (IMPLICIT_LE, EXPLICIT_LE, EXPLICIT_BE)
TRANSFER_SYNTAXES = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)
UNCOMPRESSED = (EXPLICIT_LE, IMPLICIT_LE)
# Syntaxes every object the archive can decode can be sent in.
UNIVERSAL = frozenset(
    {EXPLICIT_LE, IMPLICIT_LE, transcode.DEFLATED_LE, *transcode.LOSSLESS_TARGETS}
)
_OPS = {
    dul.C_ECHO_RSP: "echo",
    dul.C_FIND_RSP: "find",
    dul.C_MOVE_RSP: "move",
    dul.C_GET_RSP: "get",
}
ASSOCIATIONS = Counter("strata_qr_associations_total", "Q/R associations by result", ["result"])
OPERATIONS = Counter(
    "strata_qr_operations_total",
    "Q/R operations by service and outcome (final status class)",
    ["op", "outcome"],
)
OPERATION_SECONDS = Histogram(
    "strata_qr_operation_seconds",
    "Q/R operation time, request to final response",
    ["op"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
MATCHES = Counter("strata_qr_find_matches_total", "C-FIND matches returned")
SUB_OPERATIONS = Counter(
    "strata_qr_suboperations_total",
    "C-MOVE/C-GET C-STORE sub-operations by result",
    ["op", "result"],
)


@dataclass
class Services:
    """What the Q/R SCP answers from: the index, the object source and the C-MOVE
    destinations (AE title -> host, port)."""

    index: Index
    source: ObjectSource
    destinations: dict[str, tuple[str, int]]
    ae_title: str
    find_limit: int
    sub_association_timeout: float = 30.0
    query_timeout: float = 0.0  # s, the server's limit on one C-FIND (0 = none)
    max_pending: int = 16  # requests / C-STORE-RSPs one association may have queued
    # C-MOVE destinations reached over DICOM TLS: AE title -> client context (dicomnet/tls.py)
    move_tls: dict[str, Any] = field(default_factory=dict)


class QueryServer(acceptor.Server):
    def __init__(self, cfg: acceptor.Config, services: Services, address: Any) -> None:
        self.services = services
        self.held = HeldSyntaxes(services.index)
        super().__init__(cfg, address, QueryAssociation)

    def handshake_refused(self, peer: str, why: str) -> None:
        audit.tls_refused(peer, why)


def negotiate(rq: dul.AssociateRQ, held: Callable[[str], frozenset[str]] | None = None) -> None:
    """Q/R and verification in a syntax identifiers are read in; storage SOP classes only
    where the requestor proposes the SCP role (C-GET: this node sends). A storage context gets
    the requestor's first syntax that objects of its class are held in (``held``: they go out
    unchanged), else its first one every object can be transcoded to (uncompressed, or a
    lossless compressed syntax this node encodes), else its first known one."""
    for pc in rq.contexts:
        ts = ""
        if pc.abstract_syntax in SERVICES:
            ts = next((t for t in pc.transfer_syntaxes if t in IDENTIFIER_SYNTAXES), "")
        elif pc.abstract_syntax in STORAGE and rq.roles.get(pc.abstract_syntax, (0, 0))[1]:
            known = [t for t in pc.transfer_syntaxes if t in TRANSFER_SYNTAXES]
            stored = held(pc.abstract_syntax) if held is not None and known else frozenset()
            universal = [t for t in known if t in UNIVERSAL and _producible(t)]
            ts = next((t for t in known if t in stored), "") or (universal or known or [""])[0]
        else:
            pc.result = dul.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
            continue
        if ts:
            pc.result, pc.transfer_syntax = dul.PC_ACCEPTANCE, ts
        else:
            pc.result = dul.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED


def _producible(ts: str) -> bool:
    return ts in UNCOMPRESSED or ts == transcode.DEFLATED_LE or ts in transcode.encodable()


class HeldSyntaxes:
    """The transfer syntaxes the archive holds objects of each SOP class in (from the index,
    refreshed at most every ``ttl`` seconds; empty while the index is unavailable)."""

    def __init__(self, index: Index, ttl: float = 30.0) -> None:
        self.index, self.ttl = index, ttl
        self._at = -ttl
        self._by_class: dict[str, frozenset[str]] = {}
        self._lock = threading.Lock()

    def __call__(self, sop_class: str) -> frozenset[str]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    self._by_class = self.index.held_syntaxes()
                    self._at = time.monotonic()
                except Exception as exc:  # noqa: BLE001 - negotiation goes on without it
                    log.warning("held transfer syntaxes unknown: %s", exc)
            return self._by_class.get(sop_class, frozenset())


class _Stop(Exception):
    """The association is gone: the operation ends without a response."""


class StoreChannel(Protocol):
    """Where C-STORE sub-operations go: the C-MOVE sub-association, or (C-GET) the
    requesting association itself."""

    max_pdu: int
    broken: bool

    def context(self, abstract: str, transfer_syntaxes: tuple[str, ...] | None = None) -> int: ...

    def syntaxes(self, abstract: str) -> dict[str, int]: ...

    def send(self, data: bytes | bytearray) -> None: ...

    def store_status(self, message_id: int) -> int: ...


class QueryAssociation(acceptor.Association):
    full_duplex = True  # the worker writes responses while the acceptor thread reads
    server: QueryServer

    def __init__(self, sock: socket.socket, peer: tuple[str, int], server: QueryServer) -> None:
        super().__init__(sock, peer, server)
        self.services = server.services
        self._assembler = dul.MessageAssembler()
        self._work: queue.Queue[tuple[dul.PresentationContext, dict[int, bytes], Any] | None]
        self._work = queue.Queue()
        self._store_rsps: queue.Queue[dict[int, bytes] | None] = queue.Queue()
        self._open: set[int] = set()  # message ids of operations queued or running
        self._cancelled: set[int] = set()
        self._running = False
        self._started = 0.0
        self._gone = threading.Event()
        self._audit_op: qaudit.QrOperation | None = None  # the running operation's audit record
        self._worker = threading.Thread(target=self._work_loop, name="qr-worker", daemon=True)
        self._worker.start()

    # ---------------------------------------------------------------- acceptor hooks
    def negotiate(self, rq: dul.AssociateRQ) -> None:
        negotiate(rq, self.server.held)

    def role_reply(self, sop_class: str, scu: int, scp: int) -> tuple[int, int]:
        if sop_class in STORAGE:
            return 0, scp & 1  # the requestor receives C-GET sub-operations; never sends
        return scu & 1, 0

    def counted(self, outcome: str) -> None:
        ASSOCIATIONS.labels(outcome).inc()

    def rejected(self, rq: dul.AssociateRQ, reason: int) -> None:
        audit.association_rejected(self.peer, rq.calling_ae, rq.called_ae, reason, self.sock)

    def busy(self) -> bool:
        return self._running or not self._work.empty()

    def before_release(self) -> None:
        self._work.join()  # every operation requested before the release is answered

    def ended(self) -> None:
        self._gone.set()
        self._store_rsps.put(None)
        self._work.put(None)

    def pdv(self, pc_id: int, mch: int, data: memoryview) -> None:
        pc = self.contexts.get(pc_id)
        if pc is None:
            raise dul.ProtocolError(f"presentation context {pc_id} was not accepted")
        message = self._assembler.feed(pc_id, mch, data)
        if message is None:
            return
        _, cmd, dataset = message
        field = dul.us(cmd, dul.COMMAND_FIELD)
        if field == dul.C_CANCEL_RQ:
            cancelled = dul.us(cmd, dul.MESSAGE_ID_BEING_RESPONDED_TO)
            if cancelled in self._open:  # a cancel for a finished operation is ignored
                self._cancelled.add(cancelled)
        elif field == dul.C_STORE_RSP:
            if self._store_rsps.qsize() >= self.services.max_pending:
                raise dul.ProtocolError("too many unsolicited C-STORE responses", 0)
            self._store_rsps.put(cmd)
        elif field in (dul.C_ECHO_RQ, dul.C_FIND_RQ, dul.C_MOVE_RQ, dul.C_GET_RQ):
            if self._work.qsize() >= self.services.max_pending:
                raise dul.ProtocolError("too many outstanding requests", 0)
            self._open.add(dul.us(cmd, dul.MESSAGE_ID, 0))
            self._work.put((pc, cmd, dataset))
        else:
            raise dul.ProtocolError(f"DIMSE command 0x{field:04X} is not served here", 0)

    # ---------------------------------------------------------------- worker
    def _work_loop(self) -> None:
        while True:
            item = self._work.get()
            try:
                if item is None:
                    return
                self._running = True
                self._started = time.perf_counter()
                self._operate(*item)
            except _Stop:
                self._gone.set()
            except Exception as exc:
                if isinstance(exc, OSError):  # the requestor is gone, or silent too long
                    log.warning("Q/R association from %s: %s", self.peer, exc)
                else:
                    log.exception("Q/R operation from %s failed: aborting", self.peer)
                self._gone.set()
                self.send(dul.abort(), quiet=True)
                with contextlib.suppress(OSError):
                    self.sock.shutdown(socket.SHUT_RDWR)
            finally:
                self._running = False
                self._work.task_done()

    def _operate(self, pc: dul.PresentationContext, cmd: dict[int, bytes], data: Any) -> None:
        if self._gone.is_set():
            return
        field = dul.us(cmd, dul.COMMAND_FIELD)
        msg_id = dul.us(cmd, dul.MESSAGE_ID, 0)
        if field == dul.C_ECHO_RQ:
            self._respond(pc, dul.C_ECHO_RSP, msg_id, SUCCESS)
            return
        rsp_field = {dul.C_FIND_RQ: dul.C_FIND_RSP, dul.C_MOVE_RQ: dul.C_MOVE_RSP}.get(
            field, dul.C_GET_RSP
        )
        services = {dul.C_FIND_RQ: FIND, dul.C_MOVE_RQ: MOVE, dul.C_GET_RQ: GET}[field]
        if pc.abstract_syntax not in services:
            self._respond(pc, rsp_field, msg_id, 0x0122, comment="SOP class not supported")
            return
        implicit, little = pc.transfer_syntax == IMPLICIT_LE, pc.transfer_syntax != EXPLICIT_BE
        try:
            identifier = decode(BytesIO(data or b""), implicit, little) if data else None
        except Exception:  # noqa: BLE001 - whatever pydicom cannot read is the peer's error
            identifier = None
        if identifier is None:
            self._respond(
                pc,
                rsp_field,
                msg_id,
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                comment="missing or undecodable identifier",
            )
            return
        self._audit_op = qaudit.qr_begin(self, cmd, pc.abstract_syntax, identifier)
        try:
            if field == dul.C_FIND_RQ:
                self._find(pc, msg_id, identifier, implicit, little)
            elif field == dul.C_MOVE_RQ:
                self._move(pc, cmd, msg_id, identifier)
            else:
                self._get(pc, msg_id, identifier)
        finally:
            qaudit.qr_end(self._audit_op)  # its one audit event (the final status, or aborted)
            self._open.discard(msg_id)
            self._cancelled.discard(msg_id)

    def _respond(self, pc: dul.PresentationContext, *args: Any, **kwargs: Any) -> None:
        """One response (``_message``'s arguments) in one write."""
        self._write(self._message(pc, *args, **kwargs))

    def _message(
        self,
        pc: dul.PresentationContext,
        field: int,
        msg_id: int,
        status: int,
        identifier: bytes | None = None,
        comment: str = "",
        counts: tuple[int, ...] = (),
        with_dataset: bool = False,
    ) -> bytes | bytearray:
        """A response's PDUs: its command set, and its identifier when given (a command set
        announcing a dataset without one: ``with_dataset``)."""
        with_dataset = with_dataset or identifier is not None
        if status != PENDING:  # the final response: the operation's outcome
            op = _OPS.get(field, "other")
            OPERATIONS.labels(op, _outcome(status)).inc()
            OPERATION_SECONDS.labels(op).observe(time.perf_counter() - self._started)
            qaudit.qr_final(self._audit_op, status)
        elements: list[tuple[int, int | str]] = [
            (dul.AFFECTED_SOP_CLASS_UID, pc.abstract_syntax),
            (dul.COMMAND_FIELD, field),
            (dul.MESSAGE_ID_BEING_RESPONDED_TO, msg_id),
            (dul.COMMAND_DATASET_TYPE, dul.HAS_DATASET if with_dataset else dul.NO_DATASET),
            (dul.STATUS, status),
        ]
        if comment:
            elements.append((dul.ERROR_COMMENT, comment[:64]))
        # counts: (completed, failed, warning[, remaining])
        for tag, n in zip(
            (dul.COMPLETED, dul.FAILED, dul.WARNING, dul.REMAINING), counts, strict=False
        ):
            elements.append((tag, n))
        out = dul.p_data(pc.id, dul.encode_command(elements), True, self.peer_max)
        if identifier is not None:
            out += dul.p_data(pc.id, identifier, False, self.peer_max)
        return out

    # ---------------------------------------------------------------- C-FIND
    def _find(
        self,
        pc: dul.PresentationContext,
        msg_id: int,
        identifier: Dataset,
        implicit: bool,
        little: bool,
    ) -> None:
        rsp = dul.C_FIND_RSP
        try:
            q = parse_identifier(identifier, self.services.find_limit)
        except Exception as exc:  # noqa: BLE001 - Invalid, or a value pydicom cannot convert
            self._respond(pc, rsp, msg_id, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(exc))
            return
        try:
            rows = find_rows(self.services.index, q, self.services.query_timeout)
        except Invalid as exc:
            self._respond(pc, rsp, msg_id, UNABLE_TO_PROCESS, comment=str(exc))
            return
        except DeadlineExceeded:
            log.warning("C-FIND cut at the %.1f s time limit", self.services.query_timeout)
            self._respond(
                pc, rsp, msg_id, OUT_OF_RESOURCES, comment="search exceeded the time limit"
            )
            return
        except Unavailable as exc:
            log.error("C-FIND failed: %s", exc)
            self._respond(pc, rsp, msg_id, OUT_OF_RESOURCES, comment="index unavailable")
            return
        # Pending responses are written in batches (one message per P-DATA-TF still:
        # pynetdicom's receiver reads one message per PDU), their command set built once. The
        # first batch is small and each next one twice as large, up to 64 KB: the requestor
        # starts decoding the first matches while the rest are encoded, instead of waiting
        # for all of them (80 matches are ~36 KB: the last ~2 ms of the search).
        pending = self._message(pc, rsp, msg_id, PENDING, with_dataset=True)
        out = bytearray()
        flush_at = 4096
        for row in rows:
            if msg_id in self._cancelled:
                out += self._message(pc, rsp, msg_id, CANCEL)
                break
            try:
                identifier_bytes = to_bytes(q, row, implicit, little)
            except Exception as exc:  # noqa: BLE001 - a stored value pydicom cannot encode
                log.error("C-FIND: a match cannot be encoded: %s", exc)
                out += self._message(pc, rsp, msg_id, UNABLE_TO_PROCESS, comment="unencodable")
                break
            out += pending
            out += dul.p_data(pc.id, identifier_bytes, False, self.peer_max)
            MATCHES.inc()
            if len(out) >= flush_at:
                self._write(out)
                out = bytearray()
                flush_at = min(flush_at * 2, 1 << 16)
        else:
            out += self._message(pc, rsp, msg_id, SUCCESS)
        self._write(out)

    def _write(self, data: bytes | bytearray) -> None:
        if self._gone.is_set():
            raise _Stop
        self.send(data)

    # ---------------------------------------------------------------- C-MOVE / C-GET
    def _locate(
        self, pc: dul.PresentationContext, rsp: int, msg_id: int, identifier: Dataset
    ) -> list[Located] | None:
        try:
            level, keys = _retrieve_request(identifier)
            return locate(self.services.index, level, keys)
        except Invalid as exc:
            self._respond(pc, rsp, msg_id, IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, comment=str(exc))
        except Unavailable as exc:
            log.error("retrieve failed: %s", exc)
            self._respond(pc, rsp, msg_id, OUT_OF_RESOURCES, comment="index unavailable")
        return None

    def _move(
        self, pc: dul.PresentationContext, cmd: dict[int, bytes], msg_id: int, identifier: Dataset
    ) -> None:
        rsp = dul.C_MOVE_RSP
        dest_ae = dul.text(cmd, dul.MOVE_DESTINATION)
        dest = self.services.destinations.get(dest_ae)
        if dest is None:
            log.warning("C-MOVE to unknown destination %s", dest_ae)
            self._respond(pc, rsp, msg_id, MOVE_DESTINATION_UNKNOWN, comment="unknown AE")
            return
        locs = self._locate(pc, rsp, msg_id, identifier)
        if locs is None:
            return
        if not locs:
            self._respond(pc, rsp, msg_id, SUCCESS, counts=(0, 0, 0))
            return
        try:
            sub = Requestor(
                dest[0],
                dest[1],
                self.services.ae_title,
                dest_ae,
                contexts_for(locs),
                timeout=self.services.sub_association_timeout,
                tls=self.services.move_tls.get(dest_ae),
            )
        except (OSError, ConnectionError, dul.ProtocolError) as exc:
            log.error("C-MOVE: no association with %s at %s:%d: %s", dest_ae, *dest, exc)
            self._respond(pc, rsp, msg_id, MOVE_DESTINATION_UNKNOWN, comment="destination down")
            return
        channel = _SubAssociation(sub)
        try:
            self._sub_operations(pc, rsp, msg_id, locs, channel, self.rq.calling_ae)  # type: ignore[union-attr]
        finally:
            if channel.broken:
                sub.abort()
            else:
                sub.release()

    def _get(self, pc: dul.PresentationContext, msg_id: int, identifier: Dataset) -> None:
        locs = self._locate(pc, dul.C_GET_RSP, msg_id, identifier)
        if locs is None:
            return
        self._sub_operations(pc, dul.C_GET_RSP, msg_id, locs, _SameAssociation(self), "")

    def _sub_operations(
        self,
        pc: dul.PresentationContext,
        rsp: int,
        msg_id: int,
        locs: list[Located],
        channel: StoreChannel,
        originator: str,
    ) -> None:
        qaudit.qr_located(self._audit_op, locs, self.services.index)
        completed = failed = warning = 0
        failed_uids: list[str] = []
        remaining = len(locs)
        prepared = _prepared(local_paths(self.services.source, locs), channel)
        try:
            for i, (loc, path, pc_id, payload) in enumerate(prepared):
                if msg_id in self._cancelled:
                    self._respond(
                        pc, rsp, msg_id, CANCEL, counts=(completed, failed, warning, remaining)
                    )
                    return
                status = -1
                if isinstance(path, (NotFound, Unavailable)):  # missing, or its cold tier down
                    log.error("retrieve: %s", path)
                elif isinstance(path, Exception):
                    raise path
                elif not channel.broken and pc_id and payload is not None:
                    sub_id = (msg_id + i) % 65535 + 1
                    try:
                        status = store(channel, loc, pc_id, payload, sub_id, originator, msg_id)
                    except (OSError, dul.ProtocolError) as exc:
                        if isinstance(channel, _SameAssociation):
                            raise  # the requesting association itself failed
                        log.error("C-MOVE sub-association failed: %s", exc)
                        channel.broken = True  # this and every later sub-operation fail
                remaining -= 1
                if status == SUCCESS:
                    completed += 1
                    result = "completed"
                elif _is_warning(status):
                    warning += 1
                    result = "warning"
                else:
                    failed += 1
                    failed_uids.append(loc.sop_uid)
                    result = "failed"
                SUB_OPERATIONS.labels(_OPS[rsp], result).inc()
                if remaining:
                    self._respond(
                        pc, rsp, msg_id, PENDING, counts=(completed, failed, warning, remaining)
                    )
        finally:
            prepared.close()  # a cancelled or failed retrieve: transcodes not started dropped
        if not failed and not warning:
            self._respond(pc, rsp, msg_id, SUCCESS, counts=(completed, failed, warning))
            return
        final = SUB_OPERATIONS_FAILED if failed == len(locs) else WARNING
        if rsp == dul.C_GET_RSP:
            # The C-GET requestor reads the failed instances off its own C-STORE sub-operations;
            # an identifier after the final C-GET-RSP is left unread by DCMTK's getscu
            # (DcmSCU), which then fails its release ("DUL P-Data PDU arrived"): the final
            # response carries the counts only, and nothing follows it.
            log.warning("C-GET: %d of %d sub-operations failed", failed, len(locs))
            self._respond(pc, rsp, msg_id, final, counts=(completed, failed, warning))
            return
        ds = Dataset()
        ds.FailedSOPInstanceUIDList = failed_uids
        implicit, little = pc.transfer_syntax == IMPLICIT_LE, pc.transfer_syntax != EXPLICIT_BE
        self._respond(
            pc,
            rsp,
            msg_id,
            final,
            encode(ds, implicit, little),
            counts=(completed, failed, warning),
        )


def _outcome(status: int) -> str:
    if status == SUCCESS:
        return "success"
    if status == CANCEL:
        return "cancel"
    return "warning" if _is_warning(status) else "failure"


def _is_warning(status: int) -> bool:
    return status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF


class _SubAssociation:
    """C-MOVE: sub-operations over an association to the move destination."""

    def __init__(self, requestor: Requestor) -> None:
        self.requestor = requestor
        self.max_pdu = requestor.peer_max
        self.broken = False

    def context(self, abstract: str, transfer_syntaxes: tuple[str, ...] | None = None) -> int:
        return self.requestor.context(abstract, transfer_syntaxes)

    def syntaxes(self, abstract: str) -> dict[str, int]:
        """Accepted transfer syntax -> context id for ``abstract`` (in proposal order)."""
        out: dict[str, int] = {}
        for pc_id, (a, ts) in sorted(self.requestor.accepted.items()):
            if a == abstract:
                out.setdefault(ts, pc_id)
        return out

    def send(self, data: bytes | bytearray) -> None:
        try:
            self.requestor.send(data)
        except OSError:
            self.broken = True
            raise

    def store_status(self, message_id: int) -> int:
        try:
            while True:
                _pc, cmd, _ = self.requestor.receive()
                if dul.us(cmd, dul.COMMAND_FIELD) == dul.C_STORE_RSP and (
                    dul.us(cmd, dul.MESSAGE_ID_BEING_RESPONDED_TO) == message_id
                ):
                    return dul.us(cmd, dul.STATUS)
        except (OSError, ConnectionError, dul.ProtocolError):
            self.broken = True
            raise


class _SameAssociation:
    """C-GET: sub-operations over the requesting association, on the storage contexts it
    proposed with the SCP role; the reader thread hands over their C-STORE-RSPs."""

    broken = False

    def __init__(self, assoc: QueryAssociation) -> None:
        self.assoc = assoc
        self.max_pdu = assoc.peer_max

    def context(self, abstract: str, transfer_syntaxes: tuple[str, ...] | None = None) -> int:
        for pc in self.assoc.contexts.values():
            if pc.abstract_syntax == abstract and (
                transfer_syntaxes is None or pc.transfer_syntax in transfer_syntaxes
            ):
                return pc.id
        return 0

    def syntaxes(self, abstract: str) -> dict[str, int]:
        """Accepted transfer syntax -> context id for ``abstract`` (in proposal order)."""
        out: dict[str, int] = {}
        for pc_id, pc in sorted(self.assoc.contexts.items()):
            if pc.abstract_syntax == abstract and pc.result == dul.PC_ACCEPTANCE:
                out.setdefault(pc.transfer_syntax, pc_id)
        return out

    def send(self, data: bytes | bytearray) -> None:
        if self.assoc._gone.is_set():
            raise _Stop
        self.assoc.send(data)

    def store_status(self, message_id: int) -> int:
        while True:
            try:
                cmd = self.assoc._store_rsps.get(timeout=self.assoc.cfg.network_timeout)
            except queue.Empty:
                raise TimeoutError("no C-STORE-RSP from the C-GET requestor") from None
            if cmd is None:
                raise _Stop
            if dul.us(cmd, dul.MESSAGE_ID_BEING_RESPONDED_TO) == message_id:
                return dul.us(cmd, dul.STATUS)


def store(
    channel: StoreChannel,
    loc: Located,
    pc_id: int,
    payload: Path | Future[bytes],
    msg_id: int,
    originator: str,
    originator_msg_id: int,
) -> int:
    """One C-STORE sub-operation on context ``pc_id``: the stored file's dataset bytes, or the
    transcoded ones (-1 when the object cannot be transcoded: nothing is sent). Returns the
    peer's status."""
    data: Path | bytes
    if isinstance(payload, Future):
        try:
            data = payload.result()
        except Exception as exc:  # noqa: BLE001 - a codec failure is this object's failure
            log.warning("retrieve: %s cannot be transcoded: %s", loc.sop_uid, exc)
            return -1
    else:
        data = payload
    send_store(
        channel.send,
        pc_id,
        store_command(loc.sop_class_uid, loc.sop_uid, msg_id, originator, originator_msg_id),
        channel.max_pdu,
        data,
    )
    return channel.store_status(msg_id)


Prepared = tuple[Located, Path | Exception, int, Path | Future[bytes] | None]


def plan(channel: StoreChannel, loc: Located) -> tuple[int, str]:
    """The context and transfer syntax an object goes out in over ``channel`` (its stored
    syntax when accepted, else the first accepted one it can be transcoded to), or (0, "")."""
    accepted = channel.syntaxes(loc.sop_class_uid)
    target = transcode.choose(loc.transfer_syntax_uid, accepted)
    return (accepted[target], target) if target else (0, "")


def _prepared(
    paths: Iterator[tuple[Located, Path | Exception]], channel: StoreChannel
) -> Generator[Prepared, None, None]:
    """Each object with its path, its context and its payload (the file, or the future of its
    transcoded bytes): objects to transcode are submitted ahead, up to twice the transcoding
    pool's workers, so they decode in parallel while earlier ones are sent."""
    window: deque[Prepared] = deque()
    ahead = 1
    try:
        for loc, path in paths:
            pc_id, target = 0, ""
            payload: Path | Future[bytes] | None = None
            if not isinstance(path, Exception) and not channel.broken:
                pc_id, target = plan(channel, loc)
                if not pc_id:
                    log.warning(
                        "retrieve: no accepted context can carry %s (%s, stored in %s)",
                        loc.sop_uid,
                        loc.sop_class_uid,
                        loc.transfer_syntax_uid,
                    )
                elif target == loc.transfer_syntax_uid:
                    payload = path
                else:
                    payload = transcode.submit(path, target)
                    ahead = 2 * transcode.workers()
            window.append((loc, path, pc_id, payload))
            while len(window) > ahead:
                yield window.popleft()
        while window:
            yield window.popleft()
    finally:
        for item in window:
            if isinstance(item[3], Future):
                item[3].cancel()


def _retrieve_request(identifier: Dataset) -> tuple[str, dict[str, str]]:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    keys = {}
    for kw in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):
        v = identifier.get(kw)
        if v is None:
            continue
        keys[kw] = (
            "\\".join(str(x) for x in v)
            if not isinstance(v, str) and hasattr(v, "__iter__")
            else str(v)
        )
        # PS3.4 C.4.2.2.1/C.4.3.2.1: retrieve keys are unique keys, single values or UID
        # lists, never wildcards (a '*' would otherwise reach the index as a pattern).
        if "*" in keys[kw] or "?" in keys[kw]:
            raise Invalid(f"{kw} holds a wildcard: retrieve keys are unique keys")
    return level, keys


def contexts_for(locs: list[Located]) -> list[tuple[str, list[str]]]:
    """Presentation contexts for a C-MOVE sub-association: one per stored (SOP class,
    transfer syntax), so each object can go out as stored, plus the uncompressed syntaxes of
    each class for a destination that takes none of those (converted then). At most 128."""
    stored: dict[str, set[str]] = {}
    for loc in locs:
        stored.setdefault(loc.sop_class_uid, set()).add(loc.transfer_syntax_uid)
    out: list[tuple[str, list[str]]] = []
    fallback: list[tuple[str, list[str]]] = []
    for cls, syntaxes in sorted(stored.items()):
        out += [(cls, [ts]) for ts in sorted(syntaxes)]
        fallback.append((cls, list(UNCOMPRESSED)))
    return (out + fallback)[:128]
