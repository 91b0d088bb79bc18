"""The events the lifecycle writes to the study topic: TierTransitioned and InstanceDeleted
(``Emitter``, with deterministic event ids: a redone decision carries the same id) and
StudyAccessed (``AccessRecorder``, at most one per study per window). Envelopes are built by
common/events.py ``envelope`` like every other producer's."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from strata.common import kafka
from strata.common.events import envelope, timestamp
from strata.processors.index.port import Index
from strata.processors.lifecycle.candidates import Candidate
from strata.processors.lifecycle.journal import Pending
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

# uuid5 namespace of lifecycle event ids (deterministic: a redone decision has the same id).
_NS = uuid.UUID("6f1c3e2a-3d7b-5c59-9a41-7d2f0b8e6a15")


def event_id(kind: str, c: Candidate, source: str, target: str) -> str:
    return str(
        uuid.uuid5(
            _NS,
            f"{kind}/{c.study_uid}/{c.series_uid}/{c.sop_uid}/{c.sha256}/{source}>{target}"
            f"/{c.log_offset}",
        )
    )


def wrap(payload: Any, study_uid: str, eid: str, node: str, at: datetime) -> pb.Envelope:
    """A processors event's envelope (common/events.py), with its id and time fixed."""
    return envelope(
        payload, study_uid=study_uid, service="processors", node=node, occurred_at=at, event_id=eid
    )


class Emitter:
    """The lifecycle's events (a part of the LifecycleProcessor, processor.py)."""

    node: str

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
            p = Pending.of(eid, "delete", c)
            out.append((p, wrap(d, c.study_uid, eid, self.node, now)))
        return out


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
