"""The query/retrieve SCP: C-ECHO and C-FIND (Patient Root and Study Root information models).

The C-FIND handler yields (status, identifier) pairs as pynetdicom expects; statuses follow
PS3.4 C.4.1.1.4.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from common.dimse import set_nodelay
from common.errors import Invalid, NotFound, Unavailable
from query.find import Index, find, parse_identifier
from query.retrieve import Located, ObjectSource, StoredInstance, local_paths, locate

log = logging.getLogger(__name__)

PENDING = 0xFF00
CANCEL = 0xFE00
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
UNABLE_TO_PROCESS = 0xC000
OUT_OF_RESOURCES = 0xA700


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
    return level, keys


def _sub_operations(
    event: evt.Event, locs: list[Located], source: ObjectSource
) -> Iterator[tuple[int, Dataset | None]]:
    for loc, path in local_paths(source, locs):
        if event.is_cancelled:
            yield CANCEL, None
            return
        if isinstance(path, (NotFound, Unavailable)):  # missing, or its cold tier unreachable
            log.error("retrieve: %s", path)
            yield PENDING, Dataset()  # an unsendable dataset: counted as a failed sub-operation
            continue
        if isinstance(path, Exception):
            raise path
        yield PENDING, StoredInstance(loc, path)


def make_move_handler(
    index: Index, source: ObjectSource, destinations: dict[str, tuple[str, int]]
) -> Any:
    def handle_move(event: evt.Event) -> Iterator[Any]:
        dest = destinations.get(str(event.move_destination).strip())
        if dest is None:
            log.warning("C-MOVE to unknown destination %s", str(event.move_destination).strip())
            yield None, None  # -> A801 Refused: Move Destination unknown
            return
        try:
            level, keys = _retrieve_request(event.identifier)
            locs = locate(index, level, keys)
            error = None
        except (Invalid, Unavailable) as exc:
            locs, error = [], exc
        yield dest[0], dest[1], {"contexts": _contexts_for(locs)} if locs else {}
        if error is not None:
            yield from _retrieve_failed(error)
            return
        yield len(locs)
        yield from _sub_operations(event, locs, source)

    return handle_move


def make_get_handler(index: Index, source: ObjectSource) -> Any:
    def handle_get(event: evt.Event) -> Iterator[Any]:
        try:
            level, keys = _retrieve_request(event.identifier)
            locs = locate(index, level, keys)
        except (Invalid, Unavailable) as exc:
            yield from _retrieve_failed(exc)
            return
        yield len(locs)
        yield from _sub_operations(event, locs, source)

    return handle_get


def _retrieve_failed(error: Exception) -> Iterator[Any]:
    """The tail of a C-MOVE/C-GET that cannot start: one sub-operation count, then the failure
    (A900 for a bad identifier, A700 when the index is unavailable)."""
    yield 1
    status = IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS if isinstance(error, Invalid) else OUT_OF_RESOURCES
    yield _failure(status, str(error))


def _contexts_for(locs: list[Located]) -> list[Any]:
    """Presentation contexts for the C-MOVE sub-association: each stored (SOP class, transfer
    syntax) as stored, plus explicit VR little endian for the class (the destination decides)."""
    from pynetdicom.presentation import build_context

    pairs: dict[str, set[str]] = {}
    for loc in locs:
        pairs.setdefault(loc.sop_class_uid, set()).add(loc.transfer_syntax_uid)
    return [build_context(cls, sorted(ts)) for cls, ts in sorted(pairs.items())][:128]


def _failure(status: int, comment: str) -> tuple[Dataset, None]:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds, None


def build_ae(ae_title: str) -> AE:
    ae = AE(ae_title=ae_title)
    ae.maximum_associations = 32
    ae.maximum_pdu_size = 0
    ae.add_supported_context(Verification)
    for model in (
        PatientRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelFind,
        PatientRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelMove,
        PatientRootQueryRetrieveInformationModelGet,
        StudyRootQueryRetrieveInformationModelGet,
    ):
        ae.add_supported_context(model)
    # C-GET sends over the requesting association: we take the SCP role of storage.
    # pynetdicom accepts the first of OUR syntaxes the peer proposed: prefer explicit VR
    # little endian, the syntax most objects are stored in (so they go out unchanged).
    preferred = ["1.2.840.10008.1.2.1"] + [
        ts for ts in ALL_TRANSFER_SYNTAXES if ts != "1.2.840.10008.1.2.1"
    ]
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), preferred, scu_role=False, scp_role=True)
    return ae


def handlers(
    index: Index, limit: int, source: ObjectSource, destinations: dict[str, tuple[str, int]]
) -> list[tuple[Any, Any]]:
    return [
        (evt.EVT_CONN_OPEN, set_nodelay),
        (evt.EVT_C_ECHO, lambda event: 0x0000),
        (evt.EVT_C_FIND, make_find_handler(index, limit)),
        (evt.EVT_C_MOVE, make_move_handler(index, source, destinations)),
        (evt.EVT_C_GET, make_get_handler(index, source)),
    ]
