"""The retrieve feature: which stored objects a C-MOVE/C-GET (or gRPC) request names, and how
their bytes are sent unchanged.

Retrieved bytes are the stored bytes: the object is streamed from its file without decoding
and re-encoding (pynetdicom would otherwise rewrite every element), so what a workstation
receives is byte-identical, dataset for dataset, to what the modality sent.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom import Dataset
from pydicom.dataset import FileMetaDataset

from common.dimse import nodelay
from common.errors import Invalid, NotFound
from query.matching import ATTRIBUTES, LEVELS, MatchError, Params, condition

# Keys a retrieve may carry (PS3.4 C.4.2.1.4: unique keys; PatientID for Patient Root).
_RETRIEVE_KEYS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class Index(Protocol):
    database: str

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True)
class Located:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    tier: str
    storage_key: str
    size_bytes: int
    sha256: str


def locate(index: Index, level: str, keys: dict[str, str], limit: int = 65535) -> list[Located]:
    """Instances named by a retrieve identifier (unique keys down to ``level``)."""
    if level not in LEVELS:
        raise Invalid(f"QueryRetrieveLevel {level!r} is not one of {', '.join(LEVELS)}")
    params = Params()
    conds = []
    for kw in _RETRIEVE_KEYS:
        raw = keys.get(kw, "")
        if not raw.strip():
            continue
        try:
            c = condition(ATTRIBUTES[kw], raw, params)
        except MatchError as exc:
            raise Invalid(str(exc)) from exc
        if c:
            conds.append(c)
    needed = {
        "PATIENT": "PatientID",
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }[level]
    if not keys.get(needed, "").strip():
        raise Invalid(f"a {level} retrieve needs {needed}")
    rows = index.query(
        f"""SELECT study_uid, series_uid, sop_uid, sop_class_uid, transfer_syntax_uid, tier,
                   storage_key, size_bytes, sha256
            FROM {index.database}.instances FINAL
            WHERE {" AND ".join(conds)}
            ORDER BY study_uid, series_uid, instance_number, sop_uid
            LIMIT {int(limit) + 1}""",
        params.values,
    )
    if len(rows) > limit:
        raise Invalid(f"more than {limit} instances match: narrow the request")
    return [Located(*(str(v) if i != 7 else int(v) for i, v in enumerate(r))) for r in rows]


class ObjectSource(Protocol):
    def local_path(self, loc: Located) -> Path: ...


@dataclass
class HotSource:
    """Objects in the hot tier (cold-tier recall plugs in here with the same interface)."""

    root: Path

    def local_path(self, loc: Located) -> Path:
        if loc.tier != "hot":
            raise NotFound(f"object of {loc.sop_uid} is in tier {loc.tier!r}, not readable here")
        p = self.root / loc.storage_key
        if not p.is_file():
            raise NotFound(f"object of {loc.sop_uid} is missing from the hot tier")
        return p

    def chunks(self, loc: Located, size: int = 1 << 20) -> Iterator[bytes]:
        with open(self.local_path(loc), "rb") as f:
            while chunk := f.read(size):
                yield chunk


class StoredInstance(Dataset):
    """What a C-MOVE/C-GET handler yields: the identity of a stored object plus its file.
    ``install_raw_send`` makes pynetdicom send the file's dataset bytes as they are."""

    def __init__(self, loc: Located, path: Path) -> None:
        super().__init__()
        self.SOPClassUID = loc.sop_class_uid
        self.SOPInstanceUID = loc.sop_uid
        meta = FileMetaDataset()
        meta.TransferSyntaxUID = loc.transfer_syntax_uid
        meta.MediaStorageSOPClassUID = loc.sop_class_uid
        meta.MediaStorageSOPInstanceUID = loc.sop_uid
        self.file_meta = meta
        object.__setattr__(self, "_strata_path", path)


def install_raw_send() -> None:
    """Patch pynetdicom (in this process) so that (1) a StoredInstance is sent from its file
    without decoding, and (2) every outgoing socket has TCP_NODELAY (pynetdicom never sets it:
    C-MOVE sub-associations crawl at ~18 instances/s with Nagle's algorithm on)."""
    from pynetdicom import _config
    from pynetdicom.association import Association
    from pynetdicom.transport import AssociationSocket

    if getattr(Association.send_c_store, "_strata", False):
        return
    _config.STORE_SEND_CHUNKED_DATASET = True
    original_send = Association.send_c_store

    def send_c_store(self: Any, dataset: Any, *args: Any, **kwargs: Any) -> Any:
        path = getattr(dataset, "_strata_path", None)
        if path is None:
            return original_send(self, dataset, *args, **kwargs)
        try:
            return original_send(self, path, *args, **kwargs)
        except ValueError as exc:
            if "presentation context" not in str(exc):
                raise
            # The peer accepted the SOP class only in another transfer syntax: decode and let
            # pynetdicom convert (uncompressed <-> uncompressed). Bytes then differ by design.
            from pydicom import dcmread

            return original_send(self, dcmread(path), *args, **kwargs)

    send_c_store._strata = True  # type: ignore[attr-defined]
    Association.send_c_store = send_c_store  # type: ignore[method-assign]

    original_create = AssociationSocket._create_socket

    def create_socket(self: Any, address: Any) -> socket.socket:
        sock = original_create(self, address)
        nodelay(sock)
        return sock

    AssociationSocket._create_socket = create_socket  # type: ignore[method-assign]


def parse_destinations(spec: str) -> dict[str, tuple[str, int]]:
    """'AE1=host:port,AE2=host:port' -> {AE: (host, port)} (C-MOVE destinations)."""
    out: dict[str, tuple[str, int]] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        try:
            ae, addr = item.split("=", 1)
            host, port = addr.rsplit(":", 1)
            out[ae.strip()] = (host.strip(), int(port))
        except ValueError as exc:
            raise Invalid(f"bad C-MOVE destination {item!r}: expected AE=host:port") from exc
    return out
