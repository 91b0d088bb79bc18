"""The router's state as a fold over the study log, and its decisions.

Nothing here does I/O. The router process (service.py) feeds every event of the study topic to
``RouterState.apply`` in log order and acts on what the state says: decide triggers, send due
instances, end resolved routes. Its own events come back through the same log and are what
changes a route's state, so the state after a restart (re-reading from the committed offset) is
the state before it.

The committed offset of a partition is a *low watermark*: it never passes the decision of a
route that is still open, nor an arrival waiting for its study to become stable. Everything a
restarted router needs is therefore after it.
"""

from __future__ import annotations

import json
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field

from strata.processors.index.projection import json_value
from strata.processors.router.rules import Arrival, RouterConfig, explain, select
from strata.proto.strata.v1 import events_pb2 as pb

_NS = uuid.UUID("5d9f2b1c-7f0e-4c55-9a61-3c7f1f9b8e20")

# DICOM JSON tags read from the header for rule conditions.
_BODY_PART = "00180015"
_STUDY_DESCRIPTION = "00081030"


def route_id(trigger_event_id: str, rule: str, destination: str) -> str:
    """Deterministic: the same trigger, rule and destination always give the same route."""
    return str(uuid.uuid5(_NS, f"{trigger_event_id}/{rule}/{destination}"))


def event_id(kind: str, *parts: object) -> str:
    """Deterministic envelope ids for router events (a repeated decision is the same event)."""
    return str(uuid.uuid5(_NS, "/".join([kind, *map(str, parts)])))


def arrival(e: pb.InstanceStored) -> Arrival:
    header = json.loads(e.header_json) if e.header_json else {}
    return Arrival(
        modality=e.modality,
        body_part=json_value(header, _BODY_PART),
        calling_ae=e.calling_ae_title,
        called_ae=e.called_ae_title,
        site=e.calling_ae_site,
        institution=e.calling_ae_institution,
        sop_class=e.sop_class_uid,
        study_description=json_value(header, _STUDY_DESCRIPTION),
    )


def routed(e: pb.InstanceStored) -> pb.RoutedInstance:
    return pb.RoutedInstance(
        sop_instance_uid=e.sop_instance_uid,
        sop_class_uid=e.sop_class_uid,
        series_instance_uid=e.series_instance_uid,
        sha256=e.sha256,
        transfer_syntax_uid=e.transfer_syntax_uid,
        size_bytes=e.size_bytes,
        location=e.location,
    )


@dataclass
class InstanceProgress:
    inst: pb.RoutedInstance
    attempts: int = 0  # since the route was decided or last re-driven
    delivered: bool = False
    rejected: bool = False  # the destination refused it for good
    last_status: int = 0
    last_detail: str = ""
    next_at: float = 0.0  # epoch seconds; 0 = now

    @property
    def settled(self) -> bool:
        return self.delivered or self.rejected


@dataclass
class Route:
    route_id: str
    study_uid: str
    partition: int
    open_offset: int  # offset of the event that opened it (decision or re-drive)
    opened_at: float  # epoch seconds (from that event)
    rule: str
    destination: str
    transcode_to: str
    instances: dict[str, InstanceProgress]
    total_attempts: int = 0
    ending: bool = False  # its end event was produced and is awaited from the log

    def exhausted(self, max_attempts: int) -> list[InstanceProgress]:
        return [p for p in self.instances.values() if not p.settled and p.attempts >= max_attempts]


@dataclass
class Pending:
    """Instances matched by a per-study rule, waiting for the study's StudyStable."""

    partition: int
    offset: int  # of the InstanceStored (holds the partition's watermark)
    inst: pb.RoutedInstance


@dataclass
class Trigger:
    env: pb.Envelope
    partition: int
    offset: int


@dataclass
class RouterState:
    config: RouterConfig
    routes: dict[str, Route] = field(default_factory=dict)
    # per study -> (rule, destination, transcode) -> sop -> pending instance
    pending: dict[str, dict[tuple[str, str, str], dict[str, Pending]]] = field(default_factory=dict)
    decided_through: dict[int, int] = field(default_factory=dict)  # partition -> trigger offset
    recently_closed: OrderedDict[str, None] = field(default_factory=OrderedDict)

    # ------------------------------------------------------------------------------ the fold

    def apply(self, env: pb.Envelope, partition: int, offset: int) -> Trigger | None:
        """Fold one event; returns it as a Trigger when it may need a routing decision."""
        kind = env.WhichOneof("payload")
        if kind == "instance_stored":
            self._collect_for_study(env, partition, offset)
            return Trigger(env, partition, offset)
        if kind == "study_stable":
            return Trigger(env, partition, offset)
        if kind == "route_decided":
            d = env.route_decided
            self.decided_through[partition] = max(
                self.decided_through.get(partition, -1), d.trigger_offset
            )
            if d.trigger == "study-stable":
                self._take_pending(env.study_instance_uid, d)
            if (
                d.matched
                and d.route_id not in self.routes
                and d.route_id not in self.recently_closed
            ):
                self._open(env, d, partition, offset)
        elif kind == "route_redriven":
            r = env.route_redriven
            self.recently_closed.pop(r.route_id, None)
            self._open(env, r, partition, offset)
        elif kind == "route_attempted":
            a = env.route_attempted
            route = self.routes.get(a.route_id)
            p = route.instances.get(a.sop_instance_uid) if route else None
            if route and p and not p.settled:
                p.attempts += 1
                route.total_attempts += 1
                p.last_status = a.dimse_status
                p.last_detail = a.detail
                if a.outcome == "delivered":
                    p.delivered = True
                elif a.outcome == "rejected":
                    p.rejected = True
                else:
                    p.next_at = _seconds(a.next_attempt_at)
        elif kind in ("route_delivered", "route_dead_lettered"):
            rid = getattr(env, kind).route_id
            if self.routes.pop(rid, None) is not None:
                self.recently_closed[rid] = None
                while len(self.recently_closed) > 100_000:
                    self.recently_closed.popitem(last=False)
        return None

    def _open(
        self, env: pb.Envelope, r: pb.RouteDecided | pb.RouteRedriven, partition: int, offset: int
    ) -> None:
        """A route opened by a decision or a re-drive (both carry what it sends, and where)."""
        self.routes[r.route_id] = Route(
            r.route_id,
            env.study_instance_uid,
            partition,
            offset,
            _seconds(env.occurred_at),
            r.rule,
            r.destination,
            r.transcode_to,
            {i.sop_instance_uid: InstanceProgress(i) for i in r.instances},
        )

    def _collect_for_study(self, env: pb.Envelope, partition: int, offset: int) -> None:
        rules = [
            r for r in select(self.config, arrival(env.instance_stored)) if r.forward == "study"
        ]
        for rule in rules:
            for dest in rule.to:
                bucket = self.pending.setdefault(env.study_instance_uid, {})
                bucket.setdefault((rule.name, dest, rule.transcode_to), {})[
                    env.instance_stored.sop_instance_uid
                ] = Pending(partition, offset, routed(env.instance_stored))

    def _take_pending(self, study_uid: str, d: pb.RouteDecided) -> None:
        """A per-study decision consumed: its instances are no longer pending."""
        bucket = self.pending.get(study_uid, {})
        waiting = bucket.get((d.rule, d.destination, d.transcode_to), {})
        for i in d.instances:
            p = waiting.get(i.sop_instance_uid)
            if p is not None and p.inst.sha256 == i.sha256:
                del waiting[i.sop_instance_uid]
        for k in [k for k, v in bucket.items() if not v]:
            del bucket[k]
        if not bucket:
            self.pending.pop(study_uid, None)

    # ---------------------------------------------------------------------------- decisions

    def decide(self, t: Trigger) -> list[pb.RouteDecided]:
        """The decisions a trigger calls for ([] when it was decided before or needs none)."""
        if t.offset <= self.decided_through.get(t.partition, -1):
            return []
        env = t.env
        if env.WhichOneof("payload") == "instance_stored":
            e = env.instance_stored
            rules = select(self.config, arrival(e))
            out = [
                pb.RouteDecided(
                    route_id=route_id(env.event_id, rule.name, dest),
                    matched=True,
                    rule=rule.name,
                    destination=dest,
                    trigger="instance",
                    trigger_event_id=env.event_id,
                    trigger_partition=t.partition,
                    trigger_offset=t.offset,
                    transcode_to=rule.transcode_to,
                    instances=[routed(e)],
                    reason=explain(rule),
                )
                for rule in rules
                if rule.forward == "instance"
                for dest in rule.to
            ]
            if not rules:
                out.append(
                    pb.RouteDecided(
                        route_id=route_id(env.event_id, "", ""),
                        matched=False,
                        trigger="instance",
                        trigger_event_id=env.event_id,
                        trigger_partition=t.partition,
                        trigger_offset=t.offset,
                        instances=[routed(e)],
                        reason=f"no rule matched ({len(self.config.rules)} rules)",
                    )
                )
            return out
        # StudyStable: forward what the per-study rules collected, up to the stable offset.
        st = env.study_stable
        out = []
        for (rule, dest, transcode), waiting in sorted(
            self.pending.get(st.study_instance_uid, {}).items()
        ):
            insts = [p.inst for p in waiting.values() if p.offset <= st.through_offset]
            if insts:
                out.append(
                    pb.RouteDecided(
                        route_id=route_id(env.event_id, rule, dest),
                        matched=True,
                        rule=rule,
                        destination=dest,
                        trigger="study-stable",
                        trigger_event_id=env.event_id,
                        trigger_partition=t.partition,
                        trigger_offset=t.offset,
                        transcode_to=transcode,
                        instances=insts,
                        reason=f"rule {rule!r}: study stable after {st.quiet_seconds} s quiet",
                    )
                )
        return out

    # --------------------------------------------------------------------------- watermarks

    def holds(self) -> dict[int, int]:
        """Per partition, the lowest offset a restarted router must re-read."""
        out: dict[int, int] = {}
        for r in self.routes.values():
            out[r.partition] = min(out.get(r.partition, r.open_offset), r.open_offset)
        for bucket in self.pending.values():
            for waiting in bucket.values():
                for p in waiting.values():
                    out[p.partition] = min(out.get(p.partition, p.offset), p.offset)
        return out

    def forget_partition(self, partition: int) -> None:
        """Drop what was folded from a partition (it was revoked, or is re-read from scratch)."""
        self.routes = {k: r for k, r in self.routes.items() if r.partition != partition}
        for study in list(self.pending):
            bucket = self.pending[study]
            for key in list(bucket):
                bucket[key] = {s: p for s, p in bucket[key].items() if p.partition != partition}
                if not bucket[key]:
                    del bucket[key]
            if not bucket:
                del self.pending[study]
        self.decided_through.pop(partition, None)


def _seconds(ts: object) -> float:
    return ts.seconds + ts.nanos / 1e9  # type: ignore[attr-defined]
