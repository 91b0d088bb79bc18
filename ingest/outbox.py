"""The ingest outbox: a fsync'd local log of events, published to Kafka in order by the relay.

Why: the C-STORE success may go out once the object bytes are durable AND its event is durable.
Writing the event to this SQLite database (WAL, synchronous=FULL: every commit is fsync'd) makes
it durable locally in well under a millisecond; the relay then publishes it with an idempotent
producer, in insertion order, whether Kafka is up now or only later. It also remembers every
(SOP Instance UID, sha256) accepted by this node, which makes a retransmission after a crash an
idempotent duplicate instead of a second event.

Shared by every ingest worker process of a node (SQLite serializes writers across processes).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from strata.common.errors import Unavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,  -- publication order
    event_id   TEXT NOT NULL UNIQUE,
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      BLOB,                               -- NULL once published (space reclaimed)
    sop_uid    TEXT,
    sha256     TEXT,
    created_ms INTEGER NOT NULL,                   -- local time, used only to bound recovery scans
    published  INTEGER NOT NULL DEFAULT 0          -- 0 pending, 1 published, 2 set aside
);
-- The idempotency key of an arrival (same instance, same bytes) is checked by append() inside
-- its write transaction, on outbox_sop: not a UNIQUE index, because an arrival whose object
-- has since gone from every tier is recorded again (ingest/store.py). Older outboxes had one.
DROP INDEX IF EXISTS outbox_arrival;
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (published, seq);
-- The latest version of an instance (new-version detection) without a scan of the history.
CREATE INDEX IF NOT EXISTS outbox_sop ON outbox (sop_uid, seq);
"""


@dataclass(frozen=True)
class Pending:
    seq: int
    event_id: str
    topic: str
    key: str
    value: bytes
    created_ms: int


PENDING, PUBLISHED, SET_ASIDE = 0, 1, 2


@dataclass(frozen=True)
class SetAside:
    """An event the relay moved aside: Kafka refused it for good (e.g. too large). It stays
    here with the error until an operator re-drives it (``strata outbox redrive``)."""

    seq: int
    event_id: str
    topic: str
    key: str
    sop_uid: str | None
    size: int
    created_ms: int
    error: str


@dataclass(frozen=True)
class Appended:
    event_id: str
    new: bool  # False: this (sop, sha256) was accepted before; nothing was added


class Outbox:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        with self._db() as db:
            db.executescript(SCHEMA)
            cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            if "error" not in cols:  # outboxes made before events could be set aside
                db.execute("ALTER TABLE outbox ADD COLUMN error TEXT")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # fsync on every commit: durability
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def append(
        self,
        *,
        event_id: str,
        topic: str,
        key: str,
        value: bytes,
        sop_uid: str | None = None,
        sha256: str | None = None,
        again_after: str = "",
    ) -> Appended:
        """Durably record an event (fsync'd when this returns). With (sop_uid, sha256) given,
        an arrival already recorded is not recorded again, unless ``again_after`` names the
        event id of its latest record: the arrival is then recorded again (its object was
        gone), once, even when several workers receive it at the same time."""
        db = self._db()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                if sop_uid and sha256:
                    row = db.execute(
                        "SELECT event_id FROM outbox WHERE sop_uid=? AND sha256=?"
                        " ORDER BY seq DESC LIMIT 1",
                        (sop_uid, sha256),
                    ).fetchone()
                    if row and row[0] != again_after:
                        db.execute("ROLLBACK")
                        return Appended(row[0], new=False)
                db.execute(
                    "INSERT INTO outbox (event_id, topic, key, value, sop_uid, sha256, created_ms)"
                    " VALUES (?,?,?,?,?,?,?)",
                    (event_id, topic, key, value, sop_uid, sha256, int(time.time() * 1000)),
                )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise Unavailable(f"outbox write failed: {exc}") from exc
        return Appended(event_id, new=True)

    def latest_sha256(self, sop_uid: str) -> str | None:
        row = (
            self._db()
            .execute(
                "SELECT sha256 FROM outbox WHERE sop_uid=? ORDER BY seq DESC LIMIT 1", (sop_uid,)
            )
            .fetchone()
        )
        return row[0] if row else None

    def latest_arrival(self, sop_uid: str) -> tuple[str, str] | None:
        """(sha256, event id) of this instance's latest recorded arrival."""
        row = (
            self._db()
            .execute(
                "SELECT sha256, event_id FROM outbox WHERE sop_uid=? ORDER BY seq DESC LIMIT 1",
                (sop_uid,),
            )
            .fetchone()
        )
        return (row[0], row[1]) if row else None

    def pending(self, limit: int = 500) -> list[Pending]:
        rows = (
            self._db()
            .execute(
                "SELECT seq, event_id, topic, key, value, created_ms FROM outbox"
                " WHERE published=0 ORDER BY seq LIMIT ?",
                (limit,),
            )
            .fetchall()
        )
        return [Pending(*r) for r in rows]

    def mark_published(self, seqs: list[int]) -> None:
        if not seqs:
            return
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "UPDATE outbox SET published=1, value=NULL WHERE seq=?", [(s,) for s in seqs]
        )
        db.execute("COMMIT")

    def set_aside(self, seq: int, error: str) -> bool:
        """Move a pending event aside (it no longer blocks the ones after it)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        cur = db.execute(
            "UPDATE outbox SET published=?, error=? WHERE seq=? AND published=?",
            (SET_ASIDE, error[:500], seq, PENDING),
        )
        db.execute("COMMIT")
        return cur.rowcount == 1

    def set_aside_count(self) -> int:
        return int(
            self._db()
            .execute("SELECT count(*) FROM outbox WHERE published=?", (SET_ASIDE,))
            .fetchone()[0]
        )

    def set_aside_events(self, limit: int = 1000) -> list[SetAside]:
        rows = (
            self._db()
            .execute(
                "SELECT seq, event_id, topic, key, sop_uid, length(value), created_ms, error"
                " FROM outbox WHERE published=? ORDER BY seq LIMIT ?",
                (SET_ASIDE, limit),
            )
            .fetchall()
        )
        return [SetAside(r[0], r[1], r[2], r[3], r[4], r[5] or 0, r[6], r[7] or "") for r in rows]

    def redrive(self, seqs: list[int] | None = None) -> int:
        """Make set-aside events pending again (all, or those of ``seqs``): the relay publishes
        them next, before newer pending events (their order among newer events is lost)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        if seqs is None:
            cur = db.execute(
                "UPDATE outbox SET published=?, error=NULL WHERE published=?",
                (PENDING, SET_ASIDE),
            )
        else:
            cur = db.executemany(
                "UPDATE outbox SET published=?, error=NULL WHERE seq=? AND published=?",
                [(PENDING, s, SET_ASIDE) for s in seqs],
            )
        db.execute("COMMIT")
        return int(cur.rowcount)

    def depth(self) -> int:
        return int(
            self._db().execute("SELECT count(*) FROM outbox WHERE published=0").fetchone()[0]
        )

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest unpublished event was recorded (0 if none)."""
        row = self._db().execute("SELECT min(created_ms) FROM outbox WHERE published=0").fetchone()
        if not row or row[0] is None:
            return 0.0
        return max(0.0, time.time() - row[0] / 1000)

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None
