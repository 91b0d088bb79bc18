"""The lifecycle journal: the durable record of moves and deletes in progress. One fsync'd
JSON file per action under ``<home>/lifecycle/pending``, written BEFORE its event is produced
and removed once the action is settled (processor.py ``_settle``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from strata.common.fs import fsync_dir

if TYPE_CHECKING:
    from strata.processors.lifecycle.candidates import Candidate

log = logging.getLogger(__name__)


@dataclass
class Pending:
    """A journal entry: an action whose event may be in the log, source not yet deleted."""

    event_id: str
    kind: str  # "move" or "delete"
    study_uid: str
    series_uid: str
    sop_uid: str
    sha256: str
    size_bytes: int
    source_tier: str
    key: str
    target_tier: str  # "" for a delete
    basis_offset: int  # log offset of the index row the decision was made on

    @classmethod
    def of(cls, event_id: str, kind: str, c: Candidate, target_tier: str = "") -> Pending:
        """The entry of a decision on candidate ``c`` (candidates.py)."""
        return cls(
            event_id,
            kind,
            c.study_uid,
            c.series_uid,
            c.sop_uid,
            c.sha256,
            c.size_bytes,
            c.tier,
            c.storage_key,
            target_tier,
            c.log_offset,
        )


class Journal:
    """Pending actions, one fsync'd JSON file each (written before the event is produced)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def add(self, entries: Iterable[Pending]) -> None:
        for p in entries:
            tmp = self.root / f".{p.event_id}.tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(asdict(p), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.root / f"{p.event_id}.json")
        fsync_dir(self.root)

    def remove(self, event_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.root / f"{event_id}.json")

    def entries(self) -> list[Pending]:
        out = []
        for f in sorted(self.root.glob("*.json")):
            try:
                out.append(Pending(**json.loads(f.read_text(encoding="utf-8"))))
            except (ValueError, TypeError) as exc:  # a torn write cannot happen (rename)...
                log.error("unreadable lifecycle journal entry %s: %s", f.name, exc)
        return out
