"""The lifecycle processor: moves due instances to the cold tier and deletes them at the end of
their retention period, following the policy (``archive/lifecycle.py``).

A decision-maker like the stability processor: it reads the index, acts on the tiers and
emits events (TierTransitioned, InstanceDeleted) to the study topic, keyed by the study, from
an idempotent producer with acks=all. It runs only on a caught-up index.

One pass (``run_once``):

1. Settle. Every move/delete whose event was emitted has a journal entry (an fsync'd file in
   ``<home>/lifecycle/pending``) written BEFORE the event was produced. For each entry: if the
   index shows the event applied (the instance at its target tier, or deleted), the source
   object is deleted now (after checking the target copy is there with its size); if the
   index still shows the instance as it was when decided (same log offset), the event never
   reached the log, and the entry is dropped (the instance is simply due again). Sources are
   thus deleted only after the event is durable AND indexed, so no reader is ever sent to a
   deleted object.
2. Select the due instances from the index (``Index.lifecycle_candidates`` of the index port,
   processors/index/port.py: a prefilter per rule, then the pure
   ``archive.lifecycle.decide``), skipping those with a journal entry.
3. Moves: copy to the target tier (an idempotent put of a content-addressed key), then read
   the copy back and hash it (SHA-256 over every byte, compared with the sha256 recorded at
   ingest); a copy that does not match is deleted and the instance retried later.
4. Journal, then emit the events; wait for Kafka's acknowledgements.

Crash safety. A kill at any point leaves one of: nothing done (redo), a verified copy without
event (the put is a no-op next time), a journal entry without event (dropped by settle), an
event without source deletion (settled next pass). The event id is derived from the instance,
its version, the tiers and the log offset of the row the decision was made on, so a redone
decision carries the same id, and the index counts transitions per event id.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from strata.archive.lifecycle import Policy, load_policy
from strata.archive.tiers import Tier
from strata.common import kafka
from strata.common.errors import StrataError, Unavailable
from strata.processors.index import audit as audit_index
from strata.processors.index.port import Index
from strata.processors.lifecycle.candidates import _COLS, Candidate, _candidate, candidates
from strata.processors.lifecycle.emitter import Emitter, event_id
from strata.processors.lifecycle.executor import TierExecutor
from strata.processors.lifecycle.journal import Journal, Pending
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

MOVED = Counter("strata_lifecycle_moved_total", "Objects moved between tiers", ["target"])
MOVED_BYTES = Counter("strata_lifecycle_moved_bytes_total", "Bytes moved between tiers")
DELETED = Counter("strata_lifecycle_deleted_total", "Instances deleted at end of retention")
FAILED = Counter("strata_lifecycle_failures_total", "Lifecycle actions that failed", ["step"])
PASS_SECONDS = Histogram("strata_lifecycle_pass_seconds", "Duration of a lifecycle pass")


@dataclass
class PassResult:
    moved: int = 0
    moved_bytes: int = 0
    deleted: int = 0
    settled: int = 0
    dropped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


class LifecycleProcessor(TierExecutor, Emitter):
    """One pass at a time; its parts: selection (candidates.py), the tiers (executor.py), the
    events (emitter.py), the journal (journal.py)."""

    def __init__(
        self,
        policy: Policy,
        tiers: dict[str, Tier],
        journal_dir: Path,
        bootstrap: kafka.Cluster,
        topic: str,
        node: str,
        incoming: Path | None = None,
        policy_file: Path | None = None,
    ) -> None:
        self.policy = policy
        self.policy_file = policy_file
        self._policy_mtime = _mtime(policy_file)
        self.tiers = tiers
        self.journal = Journal(journal_dir)
        self.topic = topic
        self.node = node
        self.incoming = incoming  # hot tier spool, for recalls back to hot
        self._producer = kafka.producer(bootstrap, "decisions", "lifecycle")
        self._pool = ThreadPoolExecutor(max(1, policy.workers), thread_name_prefix="lifecycle")
        self._backoff: dict[str, float] = {}  # sop_uid -> monotonic time to retry after
        # Events produced by this process whose delivery Kafka has not yet confirmed or
        # refused: their journal entries are kept even where the index still shows the
        # decision's state, since the event may yet land (a flush that timed out).
        self._unresolved: set[str] = set()
        self.promotions: queue.Queue[tuple[str, str, str]] = queue.Queue(maxsize=10000)
        self._lock = threading.Lock()  # one pass at a time

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._producer.flush(10)

    def request_promotion(self, study_uid: str, series_uid: str, sop_uid: str) -> None:
        """A recalled object should go back to hot (policy 'recall'); done in the next pass."""
        with contextlib.suppress(queue.Full):
            self.promotions.put_nowait((study_uid, series_uid, sop_uid))

    # ---------------------------------------------------------------- one pass

    def run_once(self, index: Index, now: datetime | None = None) -> PassResult:
        """One pass. Call only on a caught-up index (every emitted event applied)."""
        with self._lock, PASS_SECONDS.time():
            self._reload_policy()
            now = now or datetime.now(UTC)
            res = PassResult()
            self._settle(index, res)
            pending = {p.sop_uid for p in self.journal.entries()}
            t = time.monotonic()
            self._backoff = {s: until for s, until in self._backoff.items() if until > t}
            skip = pending | set(self._backoff)
            work: list[tuple[Candidate, str, str]] = []  # (candidate, action, rule)
            for c, d in candidates(index, self.policy, now, skip, self.policy.batch):
                work.append((c, d.action, d.rule))
            work += self._promotion_work(index, skip | {c.sop_uid for c, _, _ in work})
            if not work:
                return res
            self._execute(index, work, now, res)
            return res

    def _reload_policy(self) -> None:
        """Rules, day length and batch size follow edits of the policy file (no restart);
        a file that does not parse is reported and the rules in force stay."""
        m = _mtime(self.policy_file)
        if self.policy_file is None or m == self._policy_mtime:
            return
        self._policy_mtime = m
        try:
            new = load_policy(self.policy_file)
        except StrataError as exc:
            log.error("lifecycle policy not reloaded: %s", exc)
            return
        self.policy = replace(new, workers=self.policy.workers, recall=self.policy.recall)
        log.warning("lifecycle policy reloaded: %d rules", len(new.rules))

    def _promotion_work(self, index: Index, skip: set[str]) -> list[tuple[Candidate, str, str]]:
        wanted: dict[str, tuple[str, str, str]] = {}
        while len(wanted) < self.policy.batch:
            try:
                item = self.promotions.get_nowait()
            except queue.Empty:
                break
            if item[2] not in skip:
                wanted[item[2]] = item
        if not wanted:
            return []
        rows = index.current_instances(
            [w[0] for w in wanted.values()], list(wanted), _COLS, off_tier="hot"
        )
        out = []
        for r in rows:
            out.append((_candidate(r), "hot", "recall"))
        return out

    def _execute(
        self,
        index: Index,
        work: list[tuple[Candidate, str, str]],
        now: datetime,
        res: PassResult,
    ) -> None:
        moves = [(c, target, rule) for c, target, rule in work if target != "delete"]
        deletes = [(c, rule) for c, target, rule in work if target == "delete"]
        events: list[tuple[Pending, pb.Envelope]] = []
        # 1. copy + verify, in parallel
        futures = [(c, t, r, self._pool.submit(self._copy_verified, c, t)) for c, t, r in moves]
        down = False
        for c, target, rule, fut in futures:
            if down:  # a tier is unreachable: the rest waits for the next pass
                fut.cancel()
            try:
                fut.result()
            except StrataError as exc:
                self._failed(c, "copy", exc, res)
                down = down or isinstance(exc, Unavailable)
                continue
            except CancelledError:
                continue
            eid = event_id("move", c, c.tier, target)
            supersedes = ""  # filled below
            events.append(
                (
                    Pending.of(eid, "move", c, target),
                    self._moved_event(c, target, rule, eid, now, supersedes),
                )
            )
        # 2. deletions: which series/studies they empty (the last event of each says so)
        if deletes:
            events += self._delete_events(index, deletes, now)
        if not events:
            return
        self._fill_supersedes(index, events)
        record_deletes = audit_index.deletes_recorder(index, events)  # patients named now
        # 3. journal, then the events (acks=all, idempotent producer)
        self.journal.add(p for p, _ in events)
        failures: list[str] = []

        def delivered_cb(eid: str) -> Callable[[Any, Any], None]:
            def delivered(err: Any, msg: Any) -> None:
                self._unresolved.discard(eid)
                if err is not None:
                    failures.append(str(err))

            return delivered

        for p, env in events:
            self._unresolved.add(p.event_id)
            self._producer.produce(
                self.topic,
                key=p.study_uid.encode(),
                value=env.SerializeToString(),
                on_delivery=delivered_cb(p.event_id),
            )
            self._producer.poll(0)
        left = self._producer.flush(60)
        if failures or left:
            # The journal decides in the next pass (from the index) what did reach the log.
            res.errors.append(f"{len(failures) + left} lifecycle events not acknowledged")
            FAILED.labels("emit").inc(len(failures) + left)
            log.error("lifecycle events not acknowledged: %s", failures[:3])
            return
        for p, _ in events:
            if p.kind == "move":
                res.moved += 1
                res.moved_bytes += p.size_bytes
                MOVED.labels(p.target_tier).inc()
                MOVED_BYTES.inc(p.size_bytes)
            else:
                res.deleted += 1
                DELETED.inc()
        record_deletes()  # the audit trail: one "delete" per study (common/audit.py)

    def _failed(self, c: Candidate, step: str, exc: Exception, res: PassResult) -> None:
        res.failed += 1
        res.errors.append(f"{step} {c.sop_uid}: {exc}")
        FAILED.labels(step).inc()
        # Unavailable (tier down): retry on the next pass; anything else: back off a while.
        if not isinstance(exc, Unavailable):
            self._backoff[c.sop_uid] = time.monotonic() + max(60.0, self.policy.interval_seconds)
        log.debug("lifecycle %s of an instance failed: %s", step, exc)

    # ---------------------------------------------------------------- settle

    def _settle(self, index: Index, res: PassResult) -> None:
        entries = self.journal.entries()
        if not entries:
            return
        rows = index.current_instances(
            [p.study_uid for p in entries],
            [p.sop_uid for p in entries],
            ("study_uid", "series_uid", "sop_uid", "sha256", "tier", "storage_key", "log_offset"),
        )
        now_at = {(str(r[0]), str(r[1]), str(r[2])): r for r in rows}
        # Is a (tier, key) still referenced by a live row? (a re-arrival of identical bytes
        # lands on the same content-addressed key: never delete what the index points at)
        live = {(str(r[4]), str(r[5])) for r in rows}
        for p in entries:
            row = now_at.get((p.study_uid, p.series_uid, p.sop_uid))
            try:
                if row is not None and int(row[6]) == p.basis_offset:
                    if p.event_id in self._unresolved:
                        continue  # its delivery is still open: it may yet reach the log
                    # the index is as it was when decided: the event never reached the log
                    self.journal.remove(p.event_id)
                    res.dropped += 1
                    log.warning(
                        "lifecycle: %s of sop=%s never reached the log; due again",
                        p.kind,
                        p.sop_uid,
                    )
                    continue
                if p.kind == "move":
                    applied = (
                        row is not None
                        and str(row[3]) == p.sha256
                        and str(row[4]) == p.target_tier
                        and str(row[5]) == p.key
                    )
                    if applied:
                        self._delete_source_after_move(p)
                    else:  # e.g. a newer version replaced the row: its source is not ours
                        log.warning(
                            "lifecycle: move of sop=%s settled without deleting its source: "
                            "the index shows tier %s offset %s, not the move",
                            p.sop_uid,
                            row[4] if row is not None else "-",
                            row[6] if row is not None else "-",
                        )
                else:
                    if (p.source_tier, p.key) not in live:
                        self._tier(p.source_tier).delete(p.key)
                self.journal.remove(p.event_id)
                res.settled += 1
            except StrataError as exc:
                res.errors.append(f"settle {p.sop_uid}: {exc}")
                FAILED.labels("settle").inc()
                log.debug("lifecycle: settling a pending action failed: %s", exc)


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0
