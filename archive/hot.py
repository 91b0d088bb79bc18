"""The hot tier: objects on a local filesystem.

Durability: an object is durable only after its bytes are fsync'd, it was linked into place
and the directory entries on its path were fsync'd. ``put_file`` returns only then. Directories
already made durable by this process are remembered, so the usual cost is two fsyncs: the
file and its directory.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from strata.archive.keys import key_path
from strata.common.errors import NotFound, Unavailable
from strata.common.fs import fsync_dir as _fsync_dir
from strata.common.fs import fsync_file as _fsync_file

TIER = "hot"
SPOOL = ".incoming"  # the spool directory at the root: never part of the tier


class HotTier:
    """Objects as files under ``root`` (implements ``archive.tiers.Tier``)."""

    name = TIER

    def __init__(self, root: Path, spool: str = "") -> None:
        """``spool``: this node's own spool directory under ``<root>/.incoming`` (nodes that
        share one hot volume must not share, or purge, each other's partial receptions);
        empty = ``.incoming`` itself. The spool is on the tier's filesystem (link() into
        place)."""
        self.root = root.resolve()
        self.incoming = self.root / SPOOL
        if spool:
            if "/" in spool or spool in (".", "..") or "\0" in spool:
                raise ValueError(f"spool directory name {spool!r} is not one path component")
            self.incoming = self.incoming / spool
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._durable_dirs: set[str] = {str(self.root)}
        self._lock = threading.Lock()

    def path(self, key: str) -> Path:
        """The file of ``key``; raises UnsafeKey (a NotFound) for a key that is not a plain
        relative key or resolves outside the root (``archive.keys.key_path``)."""
        return key_path(self.root, key)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def size(self, key: str) -> int | None:
        try:
            st = self.path(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise Unavailable(f"hot tier stat failed: {exc.strerror}") from exc
        return st.st_size

    def delete(self, key: str) -> None:
        """Remove the object durably (its directory is fsync'd); absent is not an error."""
        p = self.path(key)
        try:
            os.unlink(p)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise Unavailable(f"hot tier delete failed: {exc.strerror}") from exc
        try:
            _fsync_dir(str(p.parent))
        except OSError as exc:
            raise Unavailable(f"hot tier delete not made durable: {exc.strerror}") from exc

    def keys(self, prefix: str = "") -> Iterator[str]:
        """Keys starting with ``prefix`` (the spool in ``.incoming`` is not part of the tier)."""
        # Walk only the deepest directory the prefix names, then filter by the full prefix.
        head = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = self.path(head) if head else self.root
        if not start.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(start):
            if dirpath == str(self.root):
                dirnames[:] = [d for d in dirnames if d != SPOOL]
            dirnames.sort()
            rel = os.path.relpath(dirpath, self.root)
            for fn in sorted(filenames):
                key = fn if rel == "." else f"{rel}/{fn}"
                if key.startswith(prefix):
                    yield key

    def put_file(self, key: str, src: Path) -> bool:
        """Move ``src`` (on the same filesystem, e.g. in ``incoming``) to ``key`` durably.

        Returns False when the key already existed (same content by construction of the key:
        an idempotent duplicate); ``src`` is then removed. Never overwrites an existing key.
        """
        dst = self.path(key)
        try:
            _fsync_file(src)
            self._ensure_dir(dst.parent)
            try:
                # link() fails if dst exists: the atomic "create if absent" we need.
                os.link(src, dst)
                created = True
            except FileExistsError:
                created = False
            os.unlink(src)  # the spool entry needs no durability: it is never read again
            # Also when the key existed: the write that created it may have crashed before its
            # directory entry was fsync'd, and this call must not return "durable" before it is.
            _fsync_dir(str(dst.parent))
        except OSError as exc:
            raise Unavailable(f"hot tier write failed: {exc.strerror}") from exc
        return created

    def _ensure_dir(self, d: Path) -> None:
        """Create ``d`` and make every directory entry on its path durable (once)."""
        s = str(d)
        if s in self._durable_dirs:
            return
        missing = []
        p = d
        while str(p) not in self._durable_dirs and p != p.parent:
            missing.append(p)
            p = p.parent
        d.mkdir(parents=True, exist_ok=True)
        # fsync each new directory's parent (its entry) from the top down, then the leaf.
        for m in reversed(missing):
            _fsync_dir(str(m.parent))
        _fsync_dir(s)
        with self._lock:
            self._durable_dirs.update(str(m) for m in missing)
            if len(self._durable_dirs) > 100_000:  # bounded memory; re-fsync is harmless
                self._durable_dirs = {str(self.root)}

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            f = open(self.path(key), "rb")  # noqa: SIM115 - returned through the context manager
        except FileNotFoundError as exc:
            raise NotFound(f"no object at {key!r} in the hot tier") from exc
        with f:
            yield f

