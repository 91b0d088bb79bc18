"""The retrieve feature: which stored objects a C-MOVE/C-GET (or gRPC) request names, and how
their bytes are sent unchanged.

Retrieved bytes are the stored bytes: the object is streamed from its file without decoding
and re-encoding (``dicomnet/requestor.send_store``), so what a workstation receives is
byte-identical, dataset for dataset, to what the modality sent.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from archive.keys import UnsafeKey, check_key, key_path
from archive.recall import RecallCache
from archive.tiers import Tier
from common.errors import Conflict, Invalid, NotFound, Unavailable
from query.matching import ATTRIBUTES, LEVELS, MatchError, Params, condition

log = logging.getLogger(__name__)

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
    return [
        Located(
            study_uid=str(study),
            series_uid=str(series),
            sop_uid=str(sop),
            sop_class_uid=str(sop_class),
            transfer_syntax_uid=str(syntax),
            tier=str(tier),
            storage_key=str(key),
            size_bytes=int(size),
            sha256=str(sha),
        )
        for study, series, sop, sop_class, syntax, tier, key, size, sha in rows
    ]


class ObjectSource(Protocol):
    def local_path(self, loc: Located) -> Path: ...

    def chunks(self, loc: Located, size: int = 1 << 20) -> Iterator[bytes]: ...


@dataclass
class HotSource:
    """Objects in the hot tier (cold-tier recall plugs in here with the same interface)."""

    root: Path

    def local_path(self, loc: Located) -> Path:
        if loc.tier != "hot":
            raise NotFound(f"object of {loc.sop_uid} is in tier {loc.tier!r}, not readable here")
        p = key_path(self.root, loc.storage_key)
        if not p.is_file():
            raise NotFound(f"object of {loc.sop_uid} is missing from the hot tier")
        return p

    def chunks(self, loc: Located, size: int = 1 << 20) -> Iterator[bytes]:
        with open(self.local_path(loc), "rb") as f:
            while chunk := f.read(size):
                yield chunk


class TieredSource:
    """Objects in any tier: hot ones read in place, others (cold) through the recall cache.

    The index says where an object is; a move deletes its source only after the index shows
    the new place, but a reader may hold a location read a moment earlier, so a miss in the
    recorded tier tries the others (keys are the same in every tier: content-addressed).
    Every served object counts as an access of its study (``on_access``), and a recalled one
    may be promoted back to hot (``on_recall``)."""

    def __init__(
        self,
        hot_root: Path,
        remote: dict[str, Tier],
        cache: RecallCache,
        via: str = "",
        on_access: Callable[[str, str], None] | None = None,
        on_recall: Callable[[Located], None] | None = None,
    ) -> None:
        self.hot_root = hot_root
        self.remote = remote
        self.cache = cache
        self.via = via
        self.on_access = on_access
        self.on_recall = on_recall

    def with_via(self, via: str) -> TieredSource:
        """The same source, recording accesses as made through ``via`` (c-get, grpc...)."""
        return TieredSource(
            self.hot_root, self.remote, self.cache, via, self.on_access, self.on_recall
        )

    def local_path(self, loc: Located) -> Path:
        try:
            check_key(loc.storage_key)  # a recorded key is untrusted: never resolved unchecked
        except UnsafeKey as exc:
            log.error("object of %s not served: %s", loc.sop_uid, exc)
            raise UnsafeKey(f"object of {loc.sop_uid} has an unsafe storage key") from exc
        order = [loc.tier] + ["hot", *sorted(self.remote)]
        tried: list[str] = []
        errors: list[str] = []
        for tier in order:
            if tier in tried:
                continue
            tried.append(tier)
            if tier == "hot":
                try:
                    p = key_path(self.hot_root, loc.storage_key)
                except UnsafeKey as exc:  # a symbolic link out of the tier
                    log.error("object of %s not served: %s", loc.sop_uid, exc)
                    raise UnsafeKey(f"object of {loc.sop_uid} has an unsafe storage key") from exc
                if p.is_file():
                    self._accessed(loc)
                    return p
                continue
            remote = self.remote.get(tier)
            if remote is None:
                continue
            try:
                p = self.cache.get(remote, loc.storage_key, loc.sha256)
            except NotFound:
                continue
            except (Conflict, Unavailable) as exc:
                errors.append(str(exc))
                continue
            self._accessed(loc)
            if self.on_recall is not None and tier == loc.tier:
                self.on_recall(loc)
            return p
        if errors:
            raise Unavailable(f"object of {loc.sop_uid} cannot be recalled: {errors[0]}")
        raise NotFound(f"object of {loc.sop_uid} is missing from tier {loc.tier!r}")

    def chunks(self, loc: Located, size: int = 1 << 20) -> Iterator[bytes]:
        with open(self.local_path(loc), "rb") as f:
            while chunk := f.read(size):
                yield chunk

    def _accessed(self, loc: Located) -> None:
        if self.on_access is not None:
            try:
                self.on_access(loc.study_uid, self.via)
            except Exception as exc:  # an access record never fails a retrieve
                log.warning("study access not recorded: %s", exc)


def local_paths(
    source: ObjectSource, locs: list[Located], ahead: int = 8, workers: int = 4
) -> Iterator[tuple[Located, Path | Exception]]:
    """Each object with its local path (or why it has none), in order. Up to ``ahead`` objects
    are made local concurrently, so recalling a cold study overlaps with sending it instead of
    fetching one object after another (hot objects cost a stat)."""
    if not locs:
        return
    with ThreadPoolExecutor(max(1, min(workers, ahead)), thread_name_prefix="recall") as pool:
        todo = iter(locs)
        window: deque[tuple[Located, Future[Path]]] = deque(
            (loc, pool.submit(source.local_path, loc)) for loc in islice(todo, ahead)
        )
        try:
            while window:
                loc, fut = window.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    window.append((nxt, pool.submit(source.local_path, nxt)))
                try:
                    yield loc, fut.result()
                except Exception as exc:  # noqa: BLE001 - the caller decides per object
                    yield loc, exc
        finally:
            for _, f in window:  # a cancelled retrieve: fetches not started are dropped
                f.cancel()


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
