"""Storage verification: is every indexed object in its recorded tier, with the sha256 recorded
at ingest? And repair from another good copy when one exists.

Every check streams the object's bytes through SHA-256 (no trust in sizes, ETags or stored
metadata). A repair restores the SAME bytes (the candidate copy must hash to the recorded
sha256) under the same content-addressed key: it puts back what the key always named, it never
writes other content there (docs/design.md, section 1.4).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from strata.archive.tiers import Tier
from strata.common.errors import NotFound, StrataError, Unavailable

_CHUNK = 1 << 20


@dataclass(frozen=True)
class Recorded:
    """An indexed object: where the index says its bytes are, and what they hash to."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sha256: str
    size_bytes: int
    tier: str
    key: str


@dataclass(frozen=True)
class Finding:
    obj: Recorded
    problem: str  # "missing", "checksum-mismatch", "tier-unknown", "unavailable"
    detail: str = ""
    repaired_from: str = ""  # "hot", "cold", "recall-cache" when repaired


def stream_sha256(tier: Tier, key: str) -> tuple[str, int]:
    """(sha256 hex, size) of the object's bytes, read through once."""
    h = hashlib.sha256()
    n = 0
    with tier.open(key) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            n += len(chunk)
    return h.hexdigest(), n


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check(tiers: dict[str, Tier], obj: Recorded) -> Finding | None:
    """None when the object is in its recorded tier with its recorded sha256."""
    tier = tiers.get(obj.tier)
    if tier is None:
        return Finding(obj, "tier-unknown", f"tier {obj.tier!r} is not configured here")
    try:
        digest, size = stream_sha256(tier, obj.key)
    except NotFound:
        return Finding(obj, "missing", f"no object in the {obj.tier} tier")
    except (Unavailable, OSError) as exc:
        return Finding(obj, "unavailable", str(exc))
    if digest != obj.sha256:
        return Finding(obj, "checksum-mismatch", f"{size} bytes hashing to {digest[:16]}...")
    return None


class Repairer:
    """Restores a bad object from another copy whose bytes hash to the recorded sha256:
    the same key in another tier, or the recall cache."""

    def __init__(self, tiers: dict[str, Tier], recall_cache: Path | None, scratch: Path) -> None:
        self.tiers = tiers
        self.recall_cache = recall_cache
        self.scratch = scratch

    def repair(self, f: Finding) -> Finding:
        obj = f.obj
        target = self.tiers.get(obj.tier)
        if target is None or f.problem not in ("missing", "checksum-mismatch"):
            return f
        for name, good in self._good_copies(obj):
            try:
                self._restore(target, obj, good)
            except StrataError as exc:
                return Finding(obj, f.problem, f"{f.detail}; repair from {name} failed: {exc}")
            finally:
                if good.parent == self.scratch:
                    with contextlib.suppress(FileNotFoundError):
                        good.unlink()
            if check(self.tiers, obj) is None:
                return Finding(obj, f.problem, f.detail, repaired_from=name)
            return Finding(obj, f.problem, f"{f.detail}; restored copy does not verify")
        return Finding(obj, f.problem, f"{f.detail}; no other good copy")

    def _good_copies(self, obj: Recorded) -> Iterator[tuple[str, Path]]:
        """(name, local file) of copies whose bytes hash to the recorded sha256."""
        for name, tier in sorted(self.tiers.items()):
            if name == obj.tier:
                continue
            path = getattr(tier, "path", None)
            try:
                if path is not None:  # a local tier: hash in place
                    p = path(obj.key)
                    if p.is_file() and file_sha256(p) == obj.sha256:
                        yield name, p
                    continue
                tmp = self._scratch_file()
                digest = tier.download_to(obj.key, tmp)  # type: ignore[attr-defined]
                if digest == obj.sha256:
                    yield name, tmp
                else:
                    tmp.unlink()
            except (StrataError, OSError):
                continue
        if self.recall_cache is not None:
            p = self.recall_cache / f"{obj.sha256}.dcm"
            if p.is_file() and file_sha256(p) == obj.sha256:
                yield "recall-cache", p

    def _scratch_file(self) -> Path:
        self.scratch.mkdir(parents=True, exist_ok=True)
        return self.scratch / f"repair-{uuid.uuid4().hex}"

    def _restore(self, target: Tier, obj: Recorded, good: Path) -> None:
        target.delete(obj.key)  # the bad bytes (absent is fine)
        incoming = getattr(target, "incoming", None)
        if incoming is not None:  # the hot tier moves a spool file into place
            tmp = Path(incoming) / f"repair-{uuid.uuid4().hex}"
            shutil.copyfile(good, tmp)
            try:
                target.put_file(obj.key, tmp)  # type: ignore[attr-defined]
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
        else:
            target.put_file(obj.key, good, obj.sha256)  # type: ignore[attr-defined]
