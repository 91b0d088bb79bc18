"""The quarantine: refused objects' bytes, kept for inspection within a quota and a retention.

A refused object is moved (renamed) into the quarantine directory under its sha256 and made
durable there: the file is fsync'd, then the directory. The quota bounds what a hostile peer
can make the node keep: when keeping the bytes would exceed ``max_bytes``, they are discarded
and only the record (the InstanceQuarantined event: reason, identifiers, size, sha256) stays,
saying so (``bytes_dropped``). Bytes older than ``retention_s`` are deleted by the sweep that
measures the use.

Shared by the worker processes of a node: each measures the directory (a scan, at most every
``rescan_s`` seconds; the quarantine is the refusal path, never the store path) and adds what
it kept since.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from strata.common.fs import fsync_dir, fsync_file

OVER_QUOTA = "quarantine-over-quota"


@dataclass(frozen=True)
class Usage:
    files: int
    bytes: int


@dataclass
class Quarantine:
    root: Path
    max_bytes: int = 10 * 1024**3
    retention_s: float = 30 * 86400.0
    rescan_s: float = 5.0
    _used: int = field(default=-1, init=False, repr=False)
    _scanned_at: float = field(default=-1e9, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def sweep(self, now: float | None = None, delete: bool = True) -> Usage:
        """Delete bytes past the retention (unless not ``delete``); measure what is left."""
        now = time.time() if now is None else now
        files = used = 0
        removed = False
        try:
            entries = list(os.scandir(self.root))
        except FileNotFoundError:
            return Usage(0, 0)
        for e in entries:
            if not e.is_file(follow_symlinks=False) or e.name.startswith("."):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if delete and now - st.st_mtime > self.retention_s:
                try:
                    os.unlink(e.path)
                    removed = True
                except FileNotFoundError:
                    pass
                continue
            files += 1
            used += st.st_size
        if removed:
            fsync_dir(self.root)
        return Usage(files, used)

    def used(self) -> int:
        with self._lock:
            now = time.monotonic()
            if now - self._scanned_at > self.rescan_s:
                self._used = self.sweep().bytes
                self._scanned_at = now
            return self._used

    def keep(self, src: Path, name: str, size: int) -> str:
        """Move ``src`` to ``name`` in the quarantine durably. Returns "" when kept (or already
        there), else why the bytes were dropped (``src`` is then left to the caller)."""
        dst = self.root / name
        if dst.exists():
            return ""
        if self.used() + size > self.max_bytes:
            return OVER_QUOTA
        self.root.mkdir(parents=True, exist_ok=True)
        fsync_file(src)
        try:
            os.rename(src, dst)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            tmp = self.root / f".{name}.partial"
            shutil.copyfile(src, tmp)
            fsync_file(tmp)
            os.rename(tmp, dst)
        fsync_dir(self.root)
        with self._lock:
            self._used += size
        return ""

