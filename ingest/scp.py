"""The ingest SCP: C-ECHO and C-STORE over DIMSE (pynetdicom).

Handlers are plain functions; the C-STORE handler's return value is the status, and it is
success only when the store service says the durability contract holds. Metrics hang off the
outcome and off notification events.
"""

from __future__ import annotations

import logging
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, _config, evt
from pynetdicom import transport as _transport

from common.dimse import set_nodelay
from ingest import metrics
from ingest.store import Received, StoreService

log = logging.getLogger(__name__)
VERIFICATION = "1.2.840.10008.1.1"


def handle_echo(event: evt.Event) -> int:
    return 0x0000


def on_accepted(event: evt.Event) -> None:
    metrics.ASSOCIATIONS.labels("accepted").inc()


def on_rejected(event: evt.Event) -> None:
    metrics.ASSOCIATIONS.labels("rejected").inc()
    log.warning("association rejected for calling AE %s", event.assoc.requestor.ae_title.strip())


def _called_ae(assoc: Any) -> str:
    rq = assoc.requestor.primitive
    return str(rq.called_ae_title if rq is not None else assoc.acceptor.ae_title).strip()


def make_store_handler(service: StoreService) -> Any:
    def handle_store(event: evt.Event) -> Dataset:
        t0 = time.perf_counter()
        req = event.request
        assoc = event.assoc
        rx = Received(
            path=Path(event.dataset_path),
            sop_class_uid=str(req.AffectedSOPClassUID),
            sop_instance_uid=str(req.AffectedSOPInstanceUID),
            transfer_syntax_uid=str(event.context.transfer_syntax),
            calling_ae=assoc.requestor.ae_title.strip(),
            # The AE title the modality addressed (the A-ASSOCIATE-RQ's), which routing rules
            # match on; acceptor.ae_title is only this node's own title.
            called_ae=_called_ae(assoc),
            peer_address=f"{assoc.requestor.address}:{assoc.requestor.port}",
        )
        outcome = service.store(rx)
        rsp = Dataset()
        rsp.Status = outcome.status
        if outcome.ok:
            metrics.INSTANCES.labels("duplicate" if outcome.duplicate else "stored").inc()
            if outcome.event is not None:
                metrics.BYTES.inc(outcome.event.instance_stored.size_bytes)
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
            rsp.ErrorComment = outcome.comment[:64]
        metrics.STORE_SECONDS.observe(time.perf_counter() - t0)
        return rsp

    return handle_store


def build_ae(
    ae_title: str, max_pdu: int, timeouts: dict[str, float], allow_list: list[str] | None = None
) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_pdu_size = max_pdu
    ae.network_timeout = timeouts["network"]
    ae.acse_timeout = timeouts["acse"]
    ae.dimse_timeout = timeouts["dimse"]
    ae.maximum_associations = 64
    if allow_list is not None:
        # Unknown calling AE -> A-ASSOCIATE-RJ, permanent, "calling AE title not recognized".
        ae.require_calling_aet = allow_list
    ae.add_supported_context(VERIFICATION, ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), ALL_TRANSFER_SYNTAXES)
    return ae


def configure_receive(incoming: Path) -> None:
    """Spool C-STORE datasets to files as they arrive (no in-memory copy of the object), in the
    tier's incoming directory so the final move is a rename on the same filesystem."""
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.LOG_RESPONSE_IDENTIFIERS = False
    _config.LOG_REQUEST_IDENTIFIERS = False
    tempfile.tempdir = str(incoming)


def enable_reuseport() -> None:
    """Let several worker processes listen on one port; the kernel spreads connections.
    pynetdicom builds its server socket itself, so the option is set in its bind step."""
    original = _transport.AssociationServer.server_bind
    if getattr(original, "_strata_reuseport", False):
        return

    def server_bind(self: Any) -> None:
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        original(self)

    server_bind._strata_reuseport = True  # type: ignore[attr-defined]
    _transport.AssociationServer.server_bind = server_bind  # type: ignore[method-assign]


def handlers(service: StoreService) -> list[Any]:
    return [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_ACCEPTED, on_accepted),
        (evt.EVT_REJECTED, on_rejected),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, make_store_handler(service)),
    ]
