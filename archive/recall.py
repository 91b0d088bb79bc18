"""Recall: local copies of objects that live in a remote tier (cold: S3/Ceph), in a bounded
cache directory, so retrieve paths that need a file (C-MOVE/C-GET send from a path, WADO
decodes frames) serve cold objects like hot ones.

Every fetched copy is checked against the sha256 recorded at ingest before it is used, so what
is served is byte-identical to what was stored (a corrupt remote copy is an error, never
served). Files are named by their sha256: identical objects share one entry.

The bound is kept by evicting the least recently used files, but never one used in the last
``min_age`` seconds (a C-MOVE may be about to send it from its path): the cache can exceed its
bound briefly while more than that is in use.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import time
import uuid
from pathlib import Path

from prometheus_client import Histogram

from strata.archive.keys import check_key
from strata.archive.tiers import Tier
from strata.common.errors import Conflict, Invalid, Unavailable

RECALL_SECONDS = Histogram(
    "strata_recall_seconds",
    "Time to make one object of a remote tier available locally (cache hit or fetch)",
    ["tier", "result"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CHUNK = 1 << 20


class RecallCache:
    def __init__(self, root: Path, max_bytes: int, min_age: float = 120.0) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self.min_age = min_age
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".fetch-*"):  # half-fetched files of a previous process
            with contextlib.suppress(OSError):
                stale.unlink()
        self._bytes = sum(f.stat().st_size for f in root.glob("*.dcm"))
        self._lock = threading.Lock()

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def path_of(self, sha256: str) -> Path:
        if not _SHA256.match(sha256):
            raise Invalid("sha256 must be 64 lowercase hex digits")
        return self.root / f"{sha256}.dcm"

    def cached(self, sha256: str) -> Path | None:
        p = self.path_of(sha256)
        try:
            os.utime(p)  # most recently used
        except FileNotFoundError:
            return None
        return p

    def get(self, tier: Tier, key: str, sha256: str) -> Path:
        """A local file with the object's bytes, fetched from ``tier`` when not cached.

        Raises NotFound when the tier has no such object, Conflict when its bytes do not match
        ``sha256``, Unavailable when the tier cannot be reached."""
        check_key(key)
        t0 = time.perf_counter()
        p = self.cached(sha256)
        if p is not None:
            RECALL_SECONDS.labels(tier.name, "hit").observe(time.perf_counter() - t0)
            return p
        p = self.path_of(sha256)
        tmp = self.root / f".fetch-{uuid.uuid4().hex}"
        try:
            digest = _fetch(tier, key, tmp)
            if digest != sha256:
                raise Conflict(f"the {tier.name} copy of {key!r} does not match its sha256")
            size = tmp.stat().st_size
            os.replace(tmp, p)  # concurrent fetches of one object: identical bytes, last wins
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        with self._lock:
            self._bytes += size
        RECALL_SECONDS.labels(tier.name, "fetched").observe(time.perf_counter() - t0)
        if self._bytes > self.max_bytes:
            self.evict()
        return p

    def evict(self) -> int:
        """Remove least recently used files until under the bound; returns bytes removed."""
        with self._lock:
            files = []
            for f in self.root.glob("*.dcm"):
                with contextlib.suppress(FileNotFoundError):
                    st = f.stat()
                    files.append((st.st_mtime, st.st_size, f))
            total = sum(s for _, s, _ in files)
            freed = 0
            young = time.time() - self.min_age
            for mtime, size, f in sorted(files):
                if total - freed <= self.max_bytes or mtime > young:
                    break
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    freed += size
            self._bytes = total - freed
            return freed


def _fetch(tier: Tier, key: str, dst: Path) -> str:
    """Copy the object to ``dst``; returns the sha256 of the bytes written."""
    download = getattr(tier, "download_to", None)
    if download is not None:  # the cold tier streams to a file and hashes on the way
        return str(download(key, dst))
    h = hashlib.sha256()
    try:
        with tier.open(key) as src, open(dst, "wb") as out:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    except OSError as exc:
        raise Unavailable(f"recall of {key!r} failed: {exc}") from exc
    return h.hexdigest()
