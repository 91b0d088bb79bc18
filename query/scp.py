"""The query/retrieve SCP: C-ECHO and C-FIND (Patient Root and Study Root information models).

The C-FIND handler yields (status, identifier) pairs as pynetdicom expects; statuses follow
PS3.4 C.4.1.1.4.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from common.errors import Invalid, Unavailable
from query.find import Index, find, parse_identifier

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700


def set_nodelay(event: evt.Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_find_handler(index: Index, limit: int) -> Any:
    def handle_find(event: evt.Event) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        try:
            q = parse_identifier(event.identifier, limit)
        except Invalid as exc:
            yield _failure(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, str(exc))
            return
        try:
            for ds in find(index, q):
                if event.is_cancelled:
                    yield CANCEL, None
                    return
                yield PENDING, ds
        except Invalid as exc:
            yield _failure(UNABLE_TO_PROCESS, str(exc))
            return
        except Unavailable as exc:
            log.error("C-FIND failed: %s", exc)
            yield _failure(OUT_OF_RESOURCES, "index unavailable")
            return

    return handle_find


def _failure(status: int, comment: str) -> tuple[Dataset, None]:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds, None


def build_ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 32
    ae.add_supported_context(Verification)
    ae.add_supported_context(PatientRootQueryRetrieveInformationModelFind)
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    return ae


def handlers(index: Index, limit: int) -> list[tuple[Any, Any]]:
    return [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_C_ECHO, lambda event: 0x0000),
        (evt.EVT_C_FIND, make_find_handler(index, limit)),
    ]
