"""Tier access for readers: how a reader gets an object's bytes from where the index says it is
(``Located``: its tier and content-addressed key). ``HotSource`` reads the hot tier in place;
``TieredSource`` reads any tier, hot in place and cold through the checksum-verified recall
cache (archive/recall.py), trying the other tiers when a move raced the read. Used by the
retrieve paths of the index node (query/retrieve.py: C-MOVE, C-GET, gRPC, WADO-RS) and by the
router (processors/router/service.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from strata.archive.keys import UnsafeKey, check_key, key_path
from strata.archive.recall import RecallCache
from strata.archive.tiers import Tier
from strata.common.errors import Conflict, NotFound, Unavailable

if TYPE_CHECKING:  # a location read from the index (processors/index/port.py)
    from strata.processors.index.port import Located

log = logging.getLogger(__name__)


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
