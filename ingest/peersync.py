"""Synchronous geo-redundancy (docs/dr.md, "Synchronous mode"): acknowledge an instance only
once the peer site's log holds its InstanceReplicated, i.e. the peer's copier
(processors/replicate.py) fetched the bytes, verified their SHA-256, stored them and recorded
the fact with the source event id.

Two parts, meeting in one small SQLite file beside the outbox (``peer-confirmed.sqlite``):

- the **watcher** (one per ingest node, a thread of the node process): tails the peer's study
  topic (read_committed) and records the source event id of every InstanceReplicated whose
  source is this site, with its read position, in one transaction. It resumes from the recorded
  positions after a restart. On its first start it tails from the end, and a second consumer
  reads the history once (up to those ends), so an instance replicated long ago is known too.
  Positions are offsets in one log: when the peer's topic is another one than the positions
  were read in (its Kafka topic id changed: the peer was rebuilt by ``strata dr rebuild`` in
  a fail-back), they are forgotten and the watcher starts as the first time (confirmations
  already recorded stay: they were true);
- the **gate** (in every worker, and in STOW-RS): after the object and its event are durable
  here, waits until its event id is recorded, polling the file (an indexed read every few
  milliseconds, no lock held: the outbox transaction is committed, other associations go on).

Why a file and not a consumer per worker: one consumer per node however many workers, a
confirmation survives a restart of the node, and a duplicate of an instance confirmed long ago
is answered at once. The poll adds at most ``_POLL_MAX`` to a confirmation that takes the
mirror's and the copier's time (hundreds of milliseconds).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from strata.common.events import decode

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS confirmed (
    event_id TEXT PRIMARY KEY,   -- the InstanceStored event id at this site (source_event_id)
    at_ms    INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS position (   -- the live tail's next offset per partition of the peer
    topic TEXT NOT NULL, part INTEGER NOT NULL, next INTEGER NOT NULL,
    PRIMARY KEY (topic, part)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID;
"""

_POLL_MIN, _POLL_MAX = 0.002, 0.02


class Confirmations:
    """The file of event ids the peer confirmed (shared by the node's processes)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._local = threading.local()
        self._db().executescript(SCHEMA)

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")  # a lost confirmation is re-read from the peer
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
        return db

    def has(self, event_id: str) -> bool:
        return (
            self._db().execute("SELECT 1 FROM confirmed WHERE event_id=?", (event_id,)).fetchone()
            is not None
        )

    def record(
        self, event_ids: Iterable[str], positions: dict[tuple[str, int], int] | None = None
    ) -> None:
        """Record confirmations and (for the live tail) the next offsets, in one transaction:
        positions never run ahead of the confirmations read before them."""
        now = int(time.time() * 1000)
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "INSERT OR IGNORE INTO confirmed (event_id, at_ms) VALUES (?,?)",
                [(e, now) for e in event_ids],
            )
            for (topic, part), nxt in (positions or {}).items():
                db.execute(
                    "INSERT OR REPLACE INTO position (topic, part, next) VALUES (?,?,?)",
                    (topic, part, nxt),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def positions(self) -> dict[tuple[str, int], int]:
        rows = self._db().execute("SELECT topic, part, next FROM position").fetchall()
        return {(t, int(p)): int(n) for t, p, n in rows}

    def get_meta(self, k: str) -> str | None:
        row = self._db().execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
        return row[0] if row else None

    def set_meta(self, k: str, v: str) -> None:
        self._db().execute("INSERT OR REPLACE INTO meta (k, v) VALUES (?,?)", (k, v))

    def forget_positions(self) -> None:
        """Positions and the history mark dropped (the peer's log is another one now)."""
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        db.execute("DELETE FROM position")
        db.execute("DELETE FROM meta WHERE k='history'")
        db.execute("COMMIT")

    def count(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM confirmed").fetchone()[0])


class Gate:
    """What the store service waits on in sync mode (ingest/store.py)."""

    def __init__(self, confirmations: Confirmations, timeout: float, peer_site: str) -> None:
        self.confirmations = confirmations
        self.timeout = timeout
        self.peer_site = peer_site or "the second site"

    def wait(self, event_id: str, timeout: float | None = None) -> bool:
        """True once the peer confirmed ``event_id``; False after ``timeout`` seconds."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        step = _POLL_MIN
        while True:
            if self.confirmations.has(event_id):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(step, left))
            step = min(step * 2, _POLL_MAX)


def confirmed_ids(values: Iterable[bytes | None], site: str) -> list[str]:
    """Source event ids of the InstanceReplicated events among ``values`` whose source is
    ``site`` (other events and undecodable records are not the watcher's to judge)."""
    out = []
    for raw in values:
        try:
            env = decode(raw or b"")
        except Exception:
            continue
        if env.WhichOneof("payload") != "instance_replicated":
            continue
        rep = env.instance_replicated
        if rep.source_event_id and (not site or rep.source_site == site):
            out.append(rep.source_event_id)
    return out


class Watcher:
    """Tails the peer's study topic into ``Confirmations`` (a thread of the ingest node)."""

    def __init__(self, settings: Any, confirmations: Confirmations) -> None:
        self.settings = settings
        self.confirmations = confirmations
        self.peer_reachable = False
        self._stop = threading.Event()
        self._history_started = False

    def start(self) -> None:
        threading.Thread(target=self._run, name="dr-sync-watch", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def _consumer(self, group: str) -> Any:
        from strata.common import kafka

        return kafka.consumer(
            kafka.peer(self.settings),
            group,
            "dr-sync-watch",
            {
                "auto.offset.reset": "earliest",
                "fetch.wait.max.ms": 10,  # a confirmation is waited for: do not batch it up
                "log_level": 3,
            },
        )

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._tail()
            except Exception as exc:  # the peer's Kafka is down or the topic is not there yet
                self.peer_reachable = False
                log.warning("sync watcher: peer log not readable (%s); retrying", exc)
                self._stop.wait(2.0)

    def _tail(self) -> None:
        from confluent_kafka import OFFSET_END, TopicPartition

        from strata.common import kafka

        topic = self.settings.study_topic
        c = self._consumer(f"strata-dr-sync-{self.settings.node_name}")
        try:
            md = c.list_topics(topic, timeout=10)
            meta = md.topics.get(topic)
            if meta is None or meta.error is not None or not meta.partitions:
                raise RuntimeError(f"topic {topic} not at the peer")
            parts = sorted(meta.partitions)
            self._same_log(topic)
            known = self.confirmations.positions()
            if not any(t == topic for t, _p in known):
                # First start: tail from the end now; read the history once beside it.
                ends = {}
                for p in parts:
                    ends[p] = kafka.end_offset(c, TopicPartition(topic, p), timeout=10)
                self.confirmations.record([], {(topic, p): e for p, e in ends.items()})
                known = self.confirmations.positions()
            if not self._history_started and self.confirmations.get_meta("history") != "done":
                self._history_started = True
                ends = {p: known.get((topic, p), 0) for p in parts}
                threading.Thread(
                    target=self._history, args=(ends,), name="dr-sync-history", daemon=True
                ).start()
            c.assign([TopicPartition(topic, p, known.get((topic, p), OFFSET_END)) for p in parts])
            self.peer_reachable = True
            checked = time.monotonic()
            while not self._stop.is_set():
                # poll(): returns with the first record (consume() with a batch size waits for
                # the batch or the timeout); then what else is there, without waiting
                first = c.poll(0.2)
                msgs = [first, *c.consume(500, 0)] if first is not None else []
                if not msgs:
                    if time.monotonic() - checked > 5.0:  # idle: is the peer still there?
                        checked = time.monotonic()
                        try:
                            c.list_topics(topic, timeout=2)
                            self.peer_reachable = True
                        except Exception:
                            self.peer_reachable = False
                    continue
                self.peer_reachable = True
                ok = [m for m in msgs if not m.error()]
                nxt = {(m.topic() or topic, m.partition() or 0): (m.offset() or 0) + 1 for m in ok}
                self.confirmations.record(
                    confirmed_ids((m.value() for m in ok), self.settings.dr_site), nxt
                )
        finally:
            c.close()

    def _same_log(self, topic: str) -> None:
        """Forget the positions if they were read in another incarnation of the peer's topic
        (a rebuilt peer: its offsets restart, and a position in the old log would skip or
        repeat records of the new one)."""
        from confluent_kafka import TopicCollection

        from strata.common import kafka

        a = kafka.admin(kafka.peer(self.settings), "dr-sync-watch")
        desc = a.describe_topics(TopicCollection([topic]), request_timeout=10)[topic].result(15)
        tid = str(desc.topic_id)
        was = self.confirmations.get_meta("peer_topic_id")
        if was is not None and was != tid:
            log.warning(
                "sync watcher: the peer's %s is another log now (topic id %s, was %s: rebuilt); "
                "reading it from the start",
                topic, tid, was,
            )  # fmt: skip
            self.confirmations.forget_positions()
            self._history_started = False
        self.confirmations.set_meta("peer_topic_id", tid)

    def _history(self, ends: dict[int, int]) -> None:
        """Read the peer's topic from its beginning up to ``ends`` (where the tail started)."""
        from confluent_kafka import TopicPartition

        topic = self.settings.study_topic
        c = self._consumer(f"strata-dr-sync-history-{self.settings.node_name}")
        todo = {p for p, e in ends.items() if e > 0}
        try:
            c.assign([TopicPartition(topic, p, 0) for p in todo])
            while todo and not self._stop.is_set():
                msgs = [m for m in c.consume(1000, 0.5) if not m.error()]
                ids = confirmed_ids(
                    (m.value() for m in msgs if (m.offset() or 0) < ends[m.partition() or 0]),
                    self.settings.dr_site,
                )
                if ids:
                    self.confirmations.record(ids)
                for m in msgs:
                    p = m.partition() or 0
                    if p in todo and (m.offset() or 0) + 1 >= ends[p]:
                        todo.discard(p)
                        c.incremental_unassign([TopicPartition(topic, p)])
                if not msgs:  # a partition ending with transaction markers: ask the position
                    for tp in c.position([TopicPartition(topic, p) for p in todo]):
                        if tp.offset >= ends[tp.partition]:
                            todo.discard(tp.partition)
            if not todo:
                self.confirmations.set_meta("history", "done")
        except Exception as exc:
            log.warning("sync watcher: history not read (%s); read again at the next start", exc)
        finally:
            c.close()
