"""The lifecycle's actions on the tiers: copy an object to its target tier and verify the copy
(SHA-256 over every byte against the ingest sha256), recall a cold object back to hot, and
delete a source once its move is settled (never the only good copy)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from strata.archive.tiers import Tier
from strata.archive.verify import stream_sha256
from strata.common.errors import Conflict, NotFound, StrataError, Unavailable
from strata.processors.lifecycle.candidates import Candidate
from strata.processors.lifecycle.journal import Pending


class TierExecutor:
    """Copy/verify/delete against the tiers (a part of the LifecycleProcessor, processor.py)."""

    tiers: dict[str, Tier]
    incoming: Path | None  # hot tier spool, for recalls back to hot

    def _copy_verified(self, c: Candidate, target: str) -> None:
        """Copy the object to ``target`` and verify the copy against the ingest sha256."""
        src = self.tiers.get(c.tier)
        dst = self.tiers.get(target)
        if src is None or dst is None:
            raise Unavailable(f"tier {c.tier if src is None else target!r} is not configured")
        key = c.storage_key
        if target == "hot":
            self._copy_to_hot(c, src, dst)
        elif c.tier == "hot":
            path = src.path(key)  # type: ignore[attr-defined]
            if path.is_file():
                dst.put_file(key, path, c.sha256)  # type: ignore[attr-defined]
            elif not dst.exists(key):
                raise NotFound(f"object of {c.sop_uid} is in neither the hot nor the {target} tier")
        else:
            raise Conflict(f"no move from {c.tier!r} to {target!r}")
        got, _ = stream_sha256(dst, key)  # read back every byte
        if got != c.sha256:
            with contextlib.suppress(StrataError):
                dst.delete(key)  # a bad copy of a content-addressed key is never kept
            raise Conflict(f"copy of {c.sop_uid} in tier {target!r} does not match its sha256")

    def _copy_to_hot(self, c: Candidate, src: Tier, hot: Tier) -> None:
        if hot.exists(c.storage_key):
            return
        if self.incoming is None:
            raise Unavailable("no hot spool directory for recalls")
        tmp = self.incoming / f"recall-{uuid.uuid4().hex}"
        try:
            digest = src.download_to(c.storage_key, tmp)  # type: ignore[attr-defined]
            if digest != c.sha256:
                raise Conflict(f"cold copy of {c.sop_uid} does not match its sha256")
            hot.put_file(c.storage_key, tmp)  # type: ignore[attr-defined]
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    def _delete_source_after_move(self, p: Pending) -> None:
        target = self._tier(p.target_tier)
        size = target.size(p.key)
        if size != p.size_bytes:  # never delete the only good copy
            raise Unavailable(
                f"target copy of {p.sop_uid} in {p.target_tier!r} has {size} bytes, "
                f"expected {p.size_bytes}: source kept"
            )
        self._tier(p.source_tier).delete(p.key)

    def _tier(self, name: str) -> Tier:
        t = self.tiers.get(name)
        if t is None:
            raise Unavailable(f"tier {name!r} is not configured")
        return t
