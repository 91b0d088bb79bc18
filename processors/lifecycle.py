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
import json
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram

from archive.lifecycle import Decision, InstanceFacts, Policy, decide, load_policy
from archive.tiers import Tier
from archive.verify import stream_sha256
from common import kafka
from common.errors import Conflict, NotFound, StrataError, Unavailable
from common.events import SCHEMA_VERSION, SOFTWARE_VERSION, timestamp
from common.fs import fsync_dir
from processors.index import audit as audit_index
from processors.index.port import CANDIDATE_COLUMNS, Index
from proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

MOVED = Counter("strata_lifecycle_moved_total", "Objects moved between tiers", ["target"])
MOVED_BYTES = Counter("strata_lifecycle_moved_bytes_total", "Bytes moved between tiers")
DELETED = Counter("strata_lifecycle_deleted_total", "Instances deleted at end of retention")
FAILED = Counter("strata_lifecycle_failures_total", "Lifecycle actions that failed", ["step"])
PASS_SECONDS = Histogram("strata_lifecycle_pass_seconds", "Duration of a lifecycle pass")

# uuid5 namespace of lifecycle event ids (deterministic: a redone decision has the same id).
_NS = uuid.UUID("6f1c3e2a-3d7b-5c59-9a41-7d2f0b8e6a15")
_EPOCH = datetime.fromtimestamp(0, UTC)
_CHUNK = 1 << 20


# Columns read for a candidate: the facts the policy needs and what rebuilds its InstanceStored.
_COLS = CANDIDATE_COLUMNS


@dataclass(frozen=True)
class Candidate:
    study_uid: str
    series_uid: str
    sop_uid: str
    sha256: str
    size_bytes: int
    tier: str
    storage_key: str
    modality: str
    calling_ae_title: str
    received_at: datetime
    log_offset: int
    sop_class_uid: str
    patient_id: str
    issuer_of_patient_id: str
    transfer_syntax_uid: str
    called_ae_title: str
    ingest_node: str
    header_json: str
    last_accessed_at: datetime | None = None
    held: bool = False

    def facts(self) -> InstanceFacts:
        return InstanceFacts(
            tier=self.tier,
            modality=self.modality,
            calling_ae_title=self.calling_ae_title,
            size_bytes=self.size_bytes,
            received_at=self.received_at,
            last_accessed_at=self.last_accessed_at,
            held=self.held,
        )

    def instance_stored(self, supersedes: str = "") -> pb.InstanceStored:
        """The InstanceStored facts the index row was derived from (same columns again)."""
        e = pb.InstanceStored(
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_uid,
            series_instance_uid=self.series_uid,
            study_instance_uid=self.study_uid,
            patient=pb.PatientRef(
                patient_id=self.patient_id, issuer_of_patient_id=self.issuer_of_patient_id
            ),
            modality=self.modality,
            transfer_syntax_uid=self.transfer_syntax_uid,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            location=pb.StorageLocation(tier=self.tier, key=self.storage_key),
            calling_ae_title=self.calling_ae_title,
            called_ae_title=self.called_ae_title,
            ingest_node=self.ingest_node,
            header_json=self.header_json,
            supersedes_sha256=supersedes,
        )
        if self.received_at > _EPOCH:
            e.received_at.CopyFrom(timestamp(self.received_at))
        return e


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


@dataclass
class PassResult:
    moved: int = 0
    moved_bytes: int = 0
    deleted: int = 0
    settled: int = 0
    dropped: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


def event_id(kind: str, c: Candidate, source: str, target: str) -> str:
    return str(
        uuid.uuid5(
            _NS,
            f"{kind}/{c.study_uid}/{c.series_uid}/{c.sop_uid}/{c.sha256}/{source}>{target}"
            f"/{c.log_offset}",
        )
    )


def wrap(payload: Any, study_uid: str, eid: str, node: str, at: datetime) -> pb.Envelope:
    name = type(payload).__name__
    env = pb.Envelope(
        event_id=eid,
        event_type=name,
        schema_version=SCHEMA_VERSION,
        occurred_at=timestamp(at),
        producer=pb.Producer(service="processors", node=node, version=SOFTWARE_VERSION),
        study_instance_uid=study_uid,
    )
    for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields:
        if f.message_type is not None and f.message_type.name == name:
            getattr(env, f.name).CopyFrom(payload)
            return env
    raise TypeError(f"{name} is not an envelope payload")


# ----------------------------------------------------------------------------- selection


def candidates(
    index: Index, policy: Policy, now: datetime, skip: set[str], limit: int
) -> list[tuple[Candidate, Decision]]:
    """Instances with an action due at ``now`` (at most ``limit``), oldest arrivals first."""
    rows = index.lifecycle_candidates(policy, now, sorted(skip), limit)
    out = []
    n = len(_COLS)
    for r in rows:
        accessed = _aware(r[n]) if r[n] else None
        c = _candidate(r, accessed if accessed and accessed > _EPOCH else None, bool(r[n + 1]))
        d = decide(policy, c.facts(), now)  # the authoritative decision (SQL only prefilters)
        if d is not None:
            out.append((c, d))
    return out


def _candidate(
    r: tuple[Any, ...], last_accessed_at: datetime | None = None, held: bool = False
) -> Candidate:
    """A Candidate from a row of the _COLS columns."""
    return Candidate(
        study_uid=str(r[0]),
        series_uid=str(r[1]),
        sop_uid=str(r[2]),
        sha256=str(r[3]),
        size_bytes=int(r[4]),
        tier=str(r[5]),
        storage_key=str(r[6]),
        modality=str(r[7]),
        calling_ae_title=str(r[8]),
        received_at=_aware(r[9]),
        log_offset=int(r[10]),
        sop_class_uid=str(r[11]),
        patient_id=str(r[12]),
        issuer_of_patient_id=str(r[13]),
        transfer_syntax_uid=str(r[14]),
        called_ae_title=str(r[15]),
        ingest_node=str(r[16]),
        header_json=str(r[17]),
        last_accessed_at=last_accessed_at,
        held=held,
    )


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- the processor


class LifecycleProcessor:
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
                    Pending(
                        eid,
                        "move",
                        c.study_uid,
                        c.series_uid,
                        c.sop_uid,
                        c.sha256,
                        c.size_bytes,
                        c.tier,
                        c.storage_key,
                        target,
                        c.log_offset,
                    ),
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

    def _moved_event(
        self, c: Candidate, target: str, rule: str, eid: str, now: datetime, supersedes: str
    ) -> pb.Envelope:
        tt = pb.TierTransitioned(
            sop_instance_uid=c.sop_uid,
            series_instance_uid=c.series_uid,
            sha256=c.sha256,
            size_bytes=c.size_bytes,
            source=pb.StorageLocation(tier=c.tier, key=c.storage_key),
            target=pb.StorageLocation(tier=target, key=c.storage_key),
            policy=rule,
            reason="recalled on access" if rule == "recall" else f"lifecycle rule {rule}",
            study_instance_uid=c.study_uid,
            instance=c.instance_stored(supersedes),
        )
        return wrap(tt, c.study_uid, eid, self.node, now)

    def _fill_supersedes(self, index: Index, events: list[tuple[Pending, pb.Envelope]]) -> None:
        """The embedded InstanceStored keeps its version link (instance_versions column)."""
        moves = [env for p, env in events if p.kind == "move"]
        if not moves:
            return
        rows = index.version_links(
            [e.study_instance_uid for e in moves],
            [e.tier_transitioned.sop_instance_uid for e in moves],
        )
        sup = {(str(s), str(h)): str(x) for s, h, x in rows}
        for env in moves:
            tt = env.tier_transitioned
            tt.instance.supersedes_sha256 = sup.get((tt.sop_instance_uid, tt.sha256), "")

    def _delete_events(
        self, index: Index, deletes: list[tuple[Candidate, str]], now: datetime
    ) -> list[tuple[Pending, pb.Envelope]]:
        rows = index.series_instance_counts(sorted({c.study_uid for c, _ in deletes}))
        left_series = {(str(s), str(se)): int(n) for s, se, n in rows}
        left_study: dict[str, int] = {}
        for (s, _), n in left_series.items():
            left_study[s] = left_study.get(s, 0) + n
        out = []
        for c, rule in deletes:
            k = (c.study_uid, c.series_uid)
            left_series[k] = left_series.get(k, 1) - 1
            left_study[c.study_uid] = left_study.get(c.study_uid, 1) - 1
            eid = event_id("delete", c, c.tier, "")
            d = pb.InstanceDeleted(
                sop_instance_uid=c.sop_uid,
                series_instance_uid=c.series_uid,
                sha256=c.sha256,
                location=pb.StorageLocation(tier=c.tier, key=c.storage_key),
                policy=rule,
                reason=f"end of retention (rule {rule})",
                study_instance_uid=c.study_uid,
                series_emptied=left_series[k] <= 0,
                study_emptied=left_study[c.study_uid] <= 0,
            )
            p = Pending(
                eid,
                "delete",
                c.study_uid,
                c.series_uid,
                c.sop_uid,
                c.sha256,
                c.size_bytes,
                c.tier,
                c.storage_key,
                "",
                c.log_offset,
            )
            out.append((p, wrap(d, c.study_uid, eid, self.node, now)))
        return out

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


def _mtime(path: Path | None) -> float:
    try:
        return path.stat().st_mtime if path is not None else 0.0
    except OSError:
        return 0.0


# ----------------------------------------------------------------------------- access events


class AccessRecorder:
    """StudyAccessed events, at most one per study per window (so 'N days after last access'
    rules are a function of the log, and the log is not flooded by every retrieve)."""

    def __init__(
        self,
        bootstrap: kafka.Cluster,
        topic: str,
        node: str,
        window_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self.node = node
        self.window = window_seconds
        self._clock = clock
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()
        self._producer = kafka.producer(bootstrap, "access")

    def record(self, study_uid: str, via: str) -> None:
        t = self._clock()
        with self._lock:
            last = self._last.get(study_uid)
            if last is not None and t - last < self.window:
                return
            self._last[study_uid] = t
            if len(self._last) > 100_000:
                self._last = {s: v for s, v in self._last.items() if t - v < self.window}
        now = datetime.now(UTC)
        ev = pb.StudyAccessed(via=via, accessed_at=timestamp(now))
        env = wrap(ev, study_uid, str(uuid.uuid4()), self.node, now)

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                log.warning("StudyAccessed not delivered: %s", err)

        try:
            self._producer.produce(
                self.topic,
                key=study_uid.encode(),
                value=env.SerializeToString(),
                on_delivery=delivered,
            )
            self._producer.poll(0)
        except BufferError:
            log.warning("StudyAccessed dropped: producer queue full")

    def flush(self, timeout: float = 5.0) -> None:
        self._producer.flush(timeout)
