"""The hot tier: objects on a local filesystem.

Durability: an object is durable only after its bytes are fsync'd, it was renamed into place
and the directory entries were fsync'd. ``put_file`` returns only then.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from common.errors import Invalid, NotFound, Unavailable

TIER = "hot"


class HotTier:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.incoming = root / ".incoming"
        self.incoming.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        p = (self.root / key).resolve()
        if self.root.resolve() not in p.parents:
            raise Invalid(f"key escapes the tier root: {key!r}")
        return p

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def put_file(self, key: str, src: Path) -> bool:
        """Move ``src`` (on the same filesystem, e.g. in ``incoming``) to ``key`` durably.

        Returns False when the key already existed (same content by construction of the key:
        an idempotent duplicate); ``src`` is then removed. Never overwrites an existing key.
        """
        dst = self.path(key)
        try:
            _fsync_file(src)
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                # link() fails if dst exists: the atomic "create if absent" we need.
                os.link(src, dst)
                created = True
            except FileExistsError:
                created = False
            os.unlink(src)
            _fsync_dir_chain(dst.parent, self.root)
            _fsync_dir(src.parent)
        except OSError as exc:
            raise Unavailable(f"hot tier write failed: {exc.strerror}") from exc
        return created

    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        try:
            f = open(self.path(key), "rb")  # noqa: SIM115 - returned through the context manager
        except FileNotFoundError as exc:
            raise NotFound(f"no object at {key!r} in the hot tier") from exc
        with f:
            yield f


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir_chain(leaf: Path, root: Path) -> None:
    """fsync ``leaf`` and each parent up to ``root``: new directories must be durable too."""
    d = leaf
    root = root.resolve()
    while True:
        _fsync_dir(d)
        if d.resolve() == root or d.parent == d:
            break
        d = d.parent
