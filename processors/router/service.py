"""The router process: consume the study log, decide, send, and record every step as an event.

One thread owns the Kafka consumer, the producer and the state (state.py); sender threads (one
pool per destination, sized by its ``max_associations``) run associations and hand each
instance's outcome back through a queue. The consumer group's committed offset per partition is
the state's low watermark (state.RouterState.holds), committed by hand.

After a (re)assignment the router first catches up: it folds the partition up to the end the
log had at assignment time, acting on nothing, so it knows every decision and every confirmed
delivery recorded after its watermark. Only then does it decide new triggers and send. An
instance is therefore sent again only when no RouteAttempted(delivered) for it reached the log:
the destination never confirmed it, or the router died in the milliseconds between the
destination's C-STORE response and Kafka's acknowledgement of the event recording it.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from strata.common import kafka
from strata.common.events import decode, envelope
from strata.common.kafka import record
from strata.processors.router import sender
from strata.processors.router.rules import Destination, Member, RouterConfig
from strata.processors.router.state import Route, RouterState, Trigger, event_id
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

DECIDED = Counter("strata_router_decisions_total", "Routing decisions", ["matched"])
ATTEMPTS = Counter(
    "strata_router_attempts_total", "C-STORE attempts by outcome", ["destination", "outcome"]
)
ENDED = Counter("strata_router_routes_ended_total", "Routes ended", ["destination", "state"])
OPEN = Gauge("strata_router_open_routes", "Routes not yet delivered or dead-lettered")
IN_FLIGHT = Gauge("strata_router_in_flight", "Instances being sent")
SEND_SECONDS = Histogram(
    "strata_router_send_seconds",
    "Time to send one instance (C-STORE request to response)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

SERVICE = "router"


def backoff(dest: Destination, attempt: int) -> float:
    """Exponential backoff with jitter ("equal jitter": half fixed, half random)."""
    base = min(dest.backoff_max, dest.backoff_initial * (2 ** max(0, attempt - 1)))
    return base / 2 + random.uniform(0, base / 2)  # noqa: S311 - jitter, not security


class _Destination:
    """Runtime of one destination: its sender threads, throttle and pool members' health."""

    def __init__(self, d: Destination) -> None:
        self.d = d
        self.pool = ThreadPoolExecutor(d.max_associations, thread_name_prefix=f"route-{d.name}")
        self.active = 0
        self.throttle = sender.Throttle(d.max_per_second)
        self.member_active = dict.fromkeys(d.pool, 0)
        self.cooldown = dict.fromkeys(d.pool, 0.0)
        self.rr = 0
        self.lock = threading.Lock()

    def pick(self, now: float) -> Member:
        """Least-busy healthy member (round robin among equals); a member that just failed
        is avoided for a few seconds unless every member did."""
        members = list(self.d.pool)
        self.rr = (self.rr + 1) % len(members)
        members = members[self.rr :] + members[: self.rr]
        healthy = [m for m in members if self.cooldown[m] <= now] or sorted(
            members, key=lambda m: self.cooldown[m]
        )[:1]
        return min(healthy, key=lambda m: self.member_active[m])


class Router:
    def __init__(
        self,
        bootstrap: kafka.Cluster,
        topic: str,
        group: str,
        config: RouterConfig,
        local_path: Callable[[pb.RoutedInstance], Path],
        node: str,
    ) -> None:
        self.topic = topic
        self.node = node
        self.config = config
        self.local_path = local_path
        self.state = RouterState(config)
        self.consumer = kafka.consumer(
            bootstrap,
            group,
            "router",
            {
                "auto.offset.reset": "earliest",
                "enable.partition.eof": True,
                "session.timeout.ms": 10000,
                "socket.nagle.disable": True,
            },
        )
        self.producer = kafka.producer(bootstrap, "router")
        self.catching_up: dict[int, int] = {}  # partition -> end offset at assignment
        self.assigned: set[int] = set()
        self.positions: dict[int, int] = {}
        self.committed: dict[int, int] = {}
        self.deferred: list[Trigger] = []
        self.in_flight: set[tuple[str, str]] = set()
        self.ending: set[str] = set()
        self.results: queue.Queue[sender.Result] = queue.Queue()
        self.dests = {n: _Destination(d) for n, d in config.destinations.items()}
        self.produce_errors = 0
        self._last_commit = 0.0
        self._last_full_scan = 0.0
        self.dirty: set[str] = set()  # routes whose state changed since the last end check
        self._lock = threading.Lock()  # guards the snapshot served over HTTP

    # ------------------------------------------------------------------------- Kafka side

    def _on_assign(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        committed = {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=30)}
        for tp in parts:
            p = tp.partition
            self.state.forget_partition(p)
            self.deferred = [t for t in self.deferred if t.partition != p]
            lo, hi = kafka.watermarks(consumer, tp)
            start = committed.get(p, -1)
            start = lo if start < 0 else start
            self.positions[p] = start
            self.committed[p] = start
            self.assigned.add(p)
            if start < hi:
                self.catching_up[p] = hi
            log.info("router: partition %d assigned, catching up %d -> %d", p, start, hi)
        for tp in parts:
            if tp.offset < 0 and committed.get(tp.partition, -1) < 0:
                tp.offset = OFFSET_BEGINNING
        consumer.assign(parts)

    def _on_revoke(self, consumer: Consumer, parts: list[TopicPartition]) -> None:
        self.commit(force=True)
        for tp in parts:
            self.assigned.discard(tp.partition)
            self.catching_up.pop(tp.partition, None)
            self.state.forget_partition(tp.partition)
        consumer.unassign()

    def _produce(self, payload: Any, study_uid: str, eid: str) -> None:
        env = envelope(payload, study_uid=study_uid, service=SERVICE, node=self.node, event_id=eid)

        def done(err: Any, msg: Any) -> None:
            if err is not None:
                self.produce_errors += 1
                log.error("router: event %s not recorded: %s", env.event_type, err)
                if env.event_type == "RouteAttempted":
                    a = env.route_attempted
                    self.in_flight.discard((a.route_id, a.sop_instance_uid))
                elif env.event_type in ("RouteDelivered", "RouteDeadLettered"):
                    rid = getattr(env, env.WhichOneof("payload")).route_id
                    self.ending.discard(rid)
                    self.dirty.add(rid)

        while True:
            try:
                self.producer.produce(
                    self.topic, env.SerializeToString(), study_uid.encode(), on_delivery=done
                )
                return
            except BufferError:
                self.producer.poll(0.1)

    def _flush(self) -> None:
        """Decisions must be durable before the watermark may pass their triggers."""
        while self.producer.flush(5.0) > 0:
            log.warning("router: waiting for Kafka to acknowledge routing events")

    def commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < 1.0:
            return
        self._last_commit = now
        holds = self.state.holds()
        offsets = []
        for p in self.assigned:
            if p in self.catching_up:
                continue
            wm = min(holds.get(p, self.positions[p]), self.positions[p])
            if wm != self.committed.get(p):
                offsets.append(TopicPartition(self.topic, p, wm))
                self.committed[p] = wm
        if offsets:
            try:
                self.consumer.commit(offsets=offsets, asynchronous=False)
            except Exception as exc:  # noqa: BLE001 - retried at the next tick
                log.warning("router: offset commit failed: %s", exc)
                for tp in offsets:
                    self.committed.pop(tp.partition, None)

    # ------------------------------------------------------------------------- the loop

    def run(self, stop: threading.Event, active: Callable[[], bool] | None = None) -> None:
        """Route until ``stop``. ``active()`` false (a geo-redundancy follower, cli/dr.py
        Role): no routing, and no subscription before it is first true, so the group's offsets
        stay those MirrorMaker 2 syncs from the primary's router; a promoted site starts there
        without a restart."""
        if active is not None and not active():
            log.info("router: idle while this site follows (routing is the primary's)")
            while not active():
                if stop.wait(1.0):
                    self.shutdown()
                    return
            log.info("router: this site is primary: routing")
        self.consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not stop.is_set():
                if active is not None and not active():
                    stop.wait(1.0)  # demoted (a newer epoch names the peer): decide nothing
                    continue
                self.step()
        finally:
            self.shutdown()

    def step(self) -> None:
        decided = False
        for msg in self.consumer.consume(500, timeout=0.05):
            err = msg.error()
            if err is not None:
                eof_part = msg.partition()
                if err.code() == KafkaError._PARTITION_EOF and eof_part is not None:
                    self.catching_up.pop(eof_part, None)
                else:
                    log.warning("router: consume error: %s", err)
                continue
            rec = record(msg)
            p, off = rec.partition, rec.offset
            self.positions[p] = off + 1
            try:
                env = decode(rec.value)
            except Exception:  # noqa: BLE001 - not ours to judge; the index quarantines nothing
                log.error("router: undecodable event at %d/%d skipped", p, off)
                continue
            trig = self._fold(env, p, off)
            if trig is not None:
                if p in self.catching_up:
                    self.deferred.append(trig)
                else:
                    decided |= self._decide(trig)
            if p in self.catching_up and off + 1 >= self.catching_up[p]:
                del self.catching_up[p]
        if not self.catching_up and self.deferred:
            todo, self.deferred = self.deferred, []
            for t in todo:
                decided |= self._decide(t)
        if decided:
            self._flush()
        self._drain_results()
        if not self.catching_up:
            self._end_routes()
            self._dispatch()
        self.producer.poll(0)
        self.commit()
        OPEN.set(len(self.state.routes))
        IN_FLIGHT.set(len(self.in_flight))

    def _fold(self, env: pb.Envelope, p: int, off: int) -> Trigger | None:
        with self._lock:
            trig = self.state.apply(env, p, off)
        kind = env.WhichOneof("payload")
        if kind == "route_attempted":
            a = env.route_attempted
            self.in_flight.discard((a.route_id, a.sop_instance_uid))
            self.dirty.add(a.route_id)
        elif kind in ("route_decided", "route_redriven"):
            self.dirty.add(getattr(env, kind).route_id)
        elif kind in ("route_delivered", "route_dead_lettered"):
            self.ending.discard(getattr(env, kind).route_id)
        return trig

    def _decide(self, t: Trigger) -> bool:
        decisions = self.state.decide(t)
        for d in decisions:
            DECIDED.labels("yes" if d.matched else "no").inc()
            self._produce(d, t.env.study_instance_uid, event_id("decided", d.route_id))
        return bool(decisions)

    def _drain_results(self) -> None:
        while True:
            try:
                r = self.results.get_nowait()
            except queue.Empty:
                return
            key = (r.item.route_id, r.item.inst.sop_instance_uid)
            route = self.state.routes.get(r.item.route_id)
            progress = route.instances.get(key[1]) if route else None
            if r.outcome == "unattempted" or route is None or progress is None:
                self.in_flight.discard(key)
                self.dirty.add(key[0])
                continue
            dest = self.dests[route.destination].d
            attempt = progress.attempts + 1
            a = pb.RouteAttempted(
                route_id=route.route_id,
                sop_instance_uid=key[1],
                attempt=attempt,
                destination=route.destination,
                ae_title=r.member.ae_title if r.member else "",
                address=r.member.address if r.member else "",
                outcome=r.outcome,
                dimse_status=r.status,
                detail=r.detail,
                transfer_syntax_uid=r.transfer_syntax_uid,
            )
            if r.outcome == "retry":
                a.next_attempt_at.FromDatetime(
                    datetime.fromtimestamp(time.time() + backoff(dest, attempt), UTC)
                )
            ATTEMPTS.labels(route.destination, r.outcome).inc()
            self._produce(
                a,
                route.study_uid,
                event_id("attempted", route.route_id, route.open_offset, key[1], attempt),
            )

    def _end_routes(self) -> None:
        """End the routes that can end: only those touched since the last pass, plus every open
        route every few seconds (the maximum age is a matter of time, not of events)."""
        now = time.time()
        if now - self._last_full_scan > 5.0:
            self._last_full_scan = now
            candidates = list(self.state.routes)
        else:
            candidates = list(self.dirty)
        self.dirty.clear()
        for rid in candidates:
            route = self.state.routes.get(rid)
            if route is None or route.route_id in self.ending:
                continue
            if any((route.route_id, s) in self.in_flight for s in route.instances):
                continue
            d = self.dests.get(route.destination)
            if d is None:
                self._dead(
                    route,
                    "unknown-destination",
                    f"destination {route.destination!r} is not configured",
                )
                continue
            undelivered = [p for p in route.instances.values() if not p.delivered]
            if not undelivered:
                self.ending.add(route.route_id)
                ENDED.labels(route.destination, "delivered").inc()
                self._produce(
                    pb.RouteDelivered(
                        route_id=route.route_id,
                        destination=route.destination,
                        instances=len(route.instances),
                        attempts=route.total_attempts,
                    ),
                    route.study_uid,
                    event_id("ended", route.route_id, route.open_offset),
                )
                continue
            open_ = [p for p in undelivered if not p.rejected and p.attempts < d.d.max_attempts]
            if open_ and now - route.opened_at <= d.d.max_age_seconds:
                continue
            if any(p.rejected for p in undelivered):
                reason = "rejected"
            elif open_:
                reason = "max-age"
            else:
                reason = "max-attempts"
            self._dead(route, reason, "")

    def _dead(self, route: Route, reason: str, detail: str) -> None:
        undelivered = [p for p in route.instances.values() if not p.delivered]
        last = next((p for p in undelivered if p.rejected), undelivered[0])
        self.ending.add(route.route_id)
        ENDED.labels(route.destination, "dead-lettered").inc()
        log.warning(
            "router: route %s to %s dead-lettered (%s): %s",
            route.route_id,
            route.destination,
            reason,
            detail or last.last_detail,
        )
        self._produce(
            pb.RouteDeadLettered(
                route_id=route.route_id,
                destination=route.destination,
                sop_instance_uids=[p.inst.sop_instance_uid for p in undelivered],
                reason=reason,
                detail=detail or last.last_detail,
                dimse_status=last.last_status,
                attempts=route.total_attempts,
                delivered=len(route.instances) - len(undelivered),
            ),
            route.study_uid,
            event_id("ended", route.route_id, route.open_offset),
        )

    def _dispatch(self) -> None:
        now = time.time()
        # How many instances each destination can take now (free associations x batch): the
        # scan of open routes (oldest first) stops as soon as every free slot is filled.
        room = {
            n: (rt.d.max_associations - rt.active) * rt.d.batch
            for n, rt in self.dests.items()
            if rt.active < rt.d.max_associations
        }
        if not room:
            return
        work: dict[str, list[sender.Item]] = {}
        for route in self.state.routes.values():
            if not room:
                break
            if route.route_id in self.ending or route.destination not in room:
                continue
            rt = self.dests[route.destination]
            if now - route.opened_at > rt.d.max_age_seconds:
                continue
            items = work.setdefault(route.destination, [])
            if len(items) >= room[route.destination]:
                del room[route.destination]
                continue
            for sop, p in route.instances.items():
                if (
                    p.settled
                    or p.attempts >= rt.d.max_attempts
                    or p.next_at > now
                    or (route.route_id, sop) in self.in_flight
                ):
                    continue
                items.append(sender.Item(route.route_id, p.inst, route.transcode_to))
        for name, items in work.items():
            rt = self.dests[name]
            while items and rt.active < rt.d.max_associations:
                batch, items = items[: rt.d.batch], items[rt.d.batch :]
                for it in batch:
                    self.in_flight.add((it.route_id, it.inst.sop_instance_uid))
                member = rt.pick(now)
                with rt.lock:
                    rt.active += 1
                    rt.member_active[member] += 1
                rt.pool.submit(self._send, rt, member, batch)

    def _send(self, rt: _Destination, member: Member, batch: list[sender.Item]) -> None:
        def report(r: sender.Result) -> None:
            r.member = member
            self.results.put(r)

        try:
            t0 = time.monotonic()
            ok = sender.send(rt.d, member, batch, self.local_path, rt.throttle, report)
            if ok and batch:
                SEND_SECONDS.observe((time.monotonic() - t0) / len(batch))
            if not ok:
                rt.cooldown[member] = time.time() + min(5.0, rt.d.backoff_initial * 4)
        except Exception as exc:  # noqa: BLE001 - never lose track of a batch
            log.exception("router: sending to %s failed", member.address)
            for it in batch:
                self.results.put(
                    sender.Result(it, "retry", 0, f"sender error: {exc}", member=member)
                )
        finally:
            with rt.lock:
                rt.active -= 1
                rt.member_active[member] -= 1

    def shutdown(self) -> None:
        for rt in self.dests.values():
            rt.pool.shutdown(wait=True)
        self._drain_results()
        self.producer.flush(10)
        try:
            self.commit(force=True)
        finally:
            self.consumer.close()

    # ------------------------------------------------------------------------- operators

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            routes = [
                {
                    "route_id": r.route_id,
                    "study_uid": r.study_uid,
                    "rule": r.rule,
                    "destination": r.destination,
                    "instances": len(r.instances),
                    "delivered": sum(p.delivered for p in r.instances.values()),
                    "attempts": r.total_attempts,
                    "last_detail": next(
                        (p.last_detail for p in r.instances.values() if p.last_detail), ""
                    ),
                }
                for r in list(self.state.routes.values())
            ]
        return {
            "catching_up": sorted(self.catching_up),
            "assigned": sorted(self.assigned),
            "open_routes": routes,
            "in_flight": len(self.in_flight),
            "produce_errors": self.produce_errors,
        }


def serve_http(router: Router, host: str, port: int, authz: Any = None) -> ThreadingHTTPServer:
    """/healthz and /metrics (probes: open); /routes (admin: loopback clients only with auth
    off, the admin scope with auth on; common.auth)."""
    from strata.common.auth import admin_refusal

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # no access log (identifiers only anyway)
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            refusal = None
            if self.path not in ("/metrics", "/healthz"):
                auth = self.headers.get("Authorization")
                refusal = admin_refusal(authz, self.client_address[0], auth)
            if refusal is not None:
                code, err, challenge = refusal
                body, ctype = json.dumps(err).encode(), "application/json"
                self.send_response(code)
                if challenge:
                    self.send_header("WWW-Authenticate", challenge)
            elif self.path == "/metrics":
                body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
            elif self.path in ("/healthz", "/routes"):
                snap = router.snapshot()
                if self.path == "/healthz":
                    snap = {
                        "status": "catching-up" if snap["catching_up"] else "ok",
                        **{k: v for k, v in snap.items() if k != "open_routes"},
                        "open_routes": len(snap["open_routes"]),
                    }
                body, ctype, code = json.dumps(snap).encode(), "application/json", 200
            else:
                body, ctype, code = b'{"error": "not found"}', "application/json", 404
            if refusal is None:
                self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="router-http", daemon=True).start()
    return server
