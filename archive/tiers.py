"""The storage-tier contract every tier implements (hot: local filesystem; cold: S3/Ceph RGW).

Keys are immutable (``archive/keys.py``: the sha256 is part of the key), so a tier never
rewrites an object in place: ``put_file`` of an existing key is an idempotent no-op.
Durability: ``put_file`` returns only when the object is durable in that tier (fsync'd, or
acknowledged by the object store).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import BinaryIO, Protocol


class Tier(Protocol):
    name: str  # "hot" or "cold": the value recorded in StorageLocation.tier

    def exists(self, key: str) -> bool: ...

    def size(self, key: str) -> int | None:
        """Size in bytes of the object at ``key``, None when absent."""
        ...

    def open(self, key: str) -> AbstractContextManager[BinaryIO]:
        """The object's bytes (raises common.errors.NotFound when absent)."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object (absent is not an error: deletes are retried after crashes)."""
        ...

    def keys(self, prefix: str = "") -> Iterator[str]: ...
