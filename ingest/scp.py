"""The ingest SCP: C-ECHO and C-STORE acceptor on the lean upper layer (``dicomnet/dul.py``).

One thread per association reads whole PDUs from a buffered socket and streams each C-STORE
dataset straight into a Part 10 spool file in the hot tier's incoming directory, hashing it on
the way; when the last fragment arrives the store service (``ingest/store.py``) makes the
object and its event durable and says which status to answer. No reactor, no polling, no
dataset objects on the wire path: the association costs what its bytes cost.

Negotiation is what the archive stores: the Verification SOP class and every storage SOP
class pynetdicom knows, each with any transfer syntax it knows (the requestor's order decides).
An allow-list of calling AE titles rejects unknown callers with A-ASSOCIATE-RJ (permanent,
service-user, calling AE title not recognized). Anything PS3.8 does not allow aborts the
association (A-ABORT, service-provider) and leaves the node serving the others.

Limits hold while receiving: a dataset that grows past ``max_object_bytes`` stops being
written at once (its spool file removed); the rest of its fragments are read and discarded,
then the C-STORE is answered A720 (object too large) and an InstanceQuarantined records the
refusal with no bytes kept. DCMTK's storescu reports that status and goes on with its next
file, where an A-ABORT would end its whole run. A peer that goes on sending far past the limit
(over ``_DISCARD_FACTOR`` times it) is aborted.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from pynetdicom import ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts

from strata.common import audit
from strata.dicomnet import acceptor, dul
from strata.dicomnet.acceptor import IMPLEMENTATION_UID, IMPLEMENTATION_VERSION, Config
from strata.ingest import metrics, statuses
from strata.ingest.store import Received, StoreService

log = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"
ABSTRACT_SYNTAXES = frozenset(
    [VERIFICATION] + [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
)
TRANSFER_SYNTAXES = frozenset(str(ts) for ts in ALL_TRANSFER_SYNTAXES)
_DISCARD_FACTOR = 4  # an oversize dataset is read and discarded up to this many times the limit


def negotiate(rq: dul.AssociateRQ) -> None:
    """Set each presentation context's result (PS3.8 9.3.3.2) in place."""
    for pc in rq.contexts:
        if pc.abstract_syntax not in ABSTRACT_SYNTAXES:
            pc.result = dul.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED
            continue
        ts = next((t for t in pc.transfer_syntaxes if t in TRANSFER_SYNTAXES), "")
        if ts:
            pc.result, pc.transfer_syntax = dul.PC_ACCEPTANCE, ts
        else:
            pc.result = dul.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED


def respond(service: StoreService, rx: Received) -> tuple[int, str]:
    """Store ``rx`` and account for it: (status, error comment)."""
    t0 = time.perf_counter()
    outcome = service.store(rx)
    audit.note_stored(outcome)  # into the association's audit record (per study)
    if outcome.ok:
        metrics.INSTANCES.labels("duplicate" if outcome.duplicate else "stored").inc()
        if outcome.event is not None:
            metrics.BYTES.inc(outcome.event.instance_stored.size_bytes)
        comment = ""
    else:
        metrics.INSTANCES.labels("refused").inc()
        metrics.REFUSED.labels(outcome.reason or "other").inc()
        log.warning(
            "refused sop=%s from %s: 0x%04X %s",
            rx.sop_instance_uid,
            rx.calling_ae,
            outcome.status,
            outcome.comment,
        )
        comment = outcome.comment[:64]
    metrics.STORE_SECONDS.observe(time.perf_counter() - t0)
    return outcome.status, comment


class _Spool:
    """One C-STORE dataset being received: a Part 10 file in the incoming directory."""

    def __init__(self, incoming: Path, meta: bytes) -> None:
        self.path = incoming / f"rx-{uuid.uuid4().hex}"
        self._f = open(self.path, "wb", buffering=1 << 18)  # noqa: SIM115 - closed in finish
        self._h = hashlib.sha256(meta)
        self.size = len(meta)
        self._f.write(meta)

    def write(self, data: memoryview) -> None:
        self._f.write(data)
        self._h.update(data)
        self.size += len(data)

    def finish(self) -> str:
        self._f.close()
        return self._h.hexdigest()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self._f.close()
        self.path.unlink(missing_ok=True)


class Association(acceptor.Association):
    server: StoreServer

    def __init__(self, sock: socket.socket, peer: tuple[str, int], server: StoreServer) -> None:
        super().__init__(sock, peer, server)
        self._cmd = bytearray()
        self._request: dict[int, bytes] | None = None
        self._spool: _Spool | None = None
        self._rx_pc = 0
        self._limit = server.service.limits.max_object_bytes
        self._oversize = 0  # bytes of the dataset being discarded (0: none)
        self._audit: audit.Transfers | None = None

    def negotiate(self, rq: dul.AssociateRQ) -> None:
        negotiate(rq)
        who = audit.who_dicom(rq.calling_ae, rq.called_ae, self.sock)
        self._audit = audit.begin_transfers("dicom", self.peer, who)

    def counted(self, outcome: str) -> None:
        metrics.ASSOCIATIONS.labels(outcome).inc()

    def rejected(self, rq: dul.AssociateRQ, reason: int) -> None:
        audit.association_rejected(self.peer, rq.calling_ae, rq.called_ae, reason, self.sock)

    def ended(self) -> None:
        if self._spool is not None:  # never acknowledged: never stored
            self._spool.discard()
        audit.end_transfers(self._audit)  # one audit event per study of the association

    def between_messages(self) -> bool:
        return self._request is None and not self._cmd

    # ---------------------------------------------------------------- DIMSE
    def pdv(self, pc_id: int, mch: int, data: memoryview) -> None:
        pc = self.contexts.get(pc_id)
        if pc is None:
            raise dul.ProtocolError(f"presentation context {pc_id} was not accepted")
        if mch & 0x01:  # command fragment
            if self._request is not None:
                raise dul.ProtocolError("command while a dataset was expected")
            self._cmd += data
            if len(self._cmd) > dul.MAX_COMMAND_BYTES:
                raise dul.ProtocolError("command set too large")
            if mch & 0x02:
                cmd = dul.decode_command(self._cmd)
                self._cmd = bytearray()
                self._command(pc, cmd)
            return
        # dataset fragment
        if self._request is None or pc_id != self._rx_pc:
            raise dul.ProtocolError("dataset without a command on its presentation context")
        spool = self._spool
        if spool is not None:
            spool.write(data)
            if spool.size > self._limit:  # stop writing at once; the rest is discarded
                self._oversize = spool.size
                self._spool = None
                spool.discard()
        elif self._oversize:
            self._oversize += len(data)
            if self._oversize > self._limit * _DISCARD_FACTOR:
                raise dul.ProtocolError("dataset far over the object size limit")
        if mch & 0x02:
            request, self._request = self._request, None
            if self._oversize:
                self._refuse_oversize(pc, request)
            else:
                self._store(pc, request)

    def _command(self, pc: dul.PresentationContext, cmd: dict[int, bytes]) -> None:
        field = dul.us(cmd, dul.COMMAND_FIELD)
        message_id = dul.us(cmd, dul.MESSAGE_ID, 0)
        has_dataset = dul.us(cmd, dul.COMMAND_DATASET_TYPE, dul.NO_DATASET) != dul.NO_DATASET
        if field == dul.C_ECHO_RQ:
            self._reply(pc.id, dul.C_ECHO_RSP, message_id, pc.abstract_syntax, 0x0000)
            return
        if field == dul.C_STORE_RQ:
            sop_class = dul.text(cmd, dul.AFFECTED_SOP_CLASS_UID)
            sop_instance = dul.text(cmd, dul.AFFECTED_SOP_INSTANCE_UID)
            if not has_dataset:
                self._reply(
                    pc.id,
                    dul.C_STORE_RSP,
                    message_id,
                    sop_class,
                    statuses.CANNOT_UNDERSTAND_UNDECODABLE,
                    sop_instance,
                    "C-STORE without a dataset",
                )
                return
            self._request = cmd
            self._rx_pc = pc.id
            meta = dul.file_meta(
                sop_class,
                sop_instance,
                pc.transfer_syntax,
                IMPLEMENTATION_UID,
                IMPLEMENTATION_VERSION,
                self.rq.calling_ae if self.rq else "",
            )
            self._spool = _Spool(self.server.incoming, meta)
            return
        if field == dul.C_CANCEL_RQ:
            return  # nothing cancellable runs here (a C-STORE completes or fails)
        raise dul.ProtocolError(f"DIMSE command 0x{field:04X} is not served by ingest", 0)

    def _store(self, pc: dul.PresentationContext, cmd: dict[int, bytes]) -> None:
        spool, self._spool = self._spool, None
        assert spool is not None and self.rq is not None
        sha = spool.finish()
        sop_class = dul.text(cmd, dul.AFFECTED_SOP_CLASS_UID)
        sop_instance = dul.text(cmd, dul.AFFECTED_SOP_INSTANCE_UID)
        rx = Received(
            path=spool.path,
            # The SOP class of the presentation context: a command naming another one does
            # not match any dataset ("" never equals a SOP Class UID) and is refused.
            sop_class_uid=sop_class if sop_class == pc.abstract_syntax else "",
            sop_instance_uid=sop_instance,
            transfer_syntax_uid=pc.transfer_syntax,
            calling_ae=self.rq.calling_ae,
            # The AE title the modality addressed, which routing rules match on.
            called_ae=self.rq.called_ae,
            peer_address=self.peer,
            size=spool.size,
            sha256=sha,
        )
        try:
            status, comment = respond(self.server.service, rx)
        finally:
            spool.path.unlink(missing_ok=True)  # moved into the tier or quarantine, or refused
        self._reply(
            pc.id,
            dul.C_STORE_RSP,
            dul.us(cmd, dul.MESSAGE_ID, 0),
            sop_class,
            status,
            sop_instance,
            comment,
        )

    def _refuse_oversize(self, pc: dul.PresentationContext, cmd: dict[int, bytes]) -> None:
        """The C-STORE of a dataset over the size limit: nothing was kept (the spool was
        removed when the limit was crossed); the refusal is recorded and answered."""
        assert self.rq is not None
        size, self._oversize = self._oversize, 0
        sop_class = dul.text(cmd, dul.AFFECTED_SOP_CLASS_UID)
        sop_instance = dul.text(cmd, dul.AFFECTED_SOP_INSTANCE_UID)
        status = statuses.OUT_OF_RESOURCES_OBJECT_TOO_LARGE
        comment = f"object over the limit of {self._limit} bytes"
        self.server.service.record_refused(
            Received(
                path=Path(),
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                transfer_syntax_uid=pc.transfer_syntax,
                calling_ae=self.rq.calling_ae,
                called_ae=self.rq.called_ae,
                peer_address=self.peer,
                size=size,
            ),
            status,
            "too-large",
            comment,
        )
        metrics.INSTANCES.labels("refused").inc()
        metrics.REFUSED.labels("too-large").inc()
        log.warning(
            "refused sop=%s from %s: 0x%04X over %d bytes, not kept",
            sop_instance,
            self.rq.calling_ae,
            status,
            self._limit,
        )
        self._reply(
            pc.id,
            dul.C_STORE_RSP,
            dul.us(cmd, dul.MESSAGE_ID, 0),
            sop_class,
            status,
            sop_instance,
            comment[:64],
        )

    def _reply(
        self,
        pc_id: int,
        field: int,
        message_id: int,
        sop_class: str,
        status: int,
        sop_instance: str = "",
        comment: str = "",
    ) -> None:
        cmd = dul.response(field, message_id, sop_class, status, sop_instance, comment)
        self.send(dul.p_data(pc_id, cmd, True, self.peer_max))


class StoreServer(acceptor.Server):
    """The C-STORE acceptor: the listening socket shared by the worker processes
    (SO_REUSEPORT) and one thread per association."""

    def __init__(self, cfg: Config, service: StoreService, incoming: Path, address: Any) -> None:
        self.service = service
        self.incoming = incoming
        super().__init__(cfg, address, Association)

    def connection_counted(self, outcome: str) -> None:
        metrics.ASSOCIATIONS.labels(outcome).inc()  # "refused" at a cap, "evicted"

    def handshake_refused(self, peer: str, why: str) -> None:
        audit.tls_refused(peer, why)
