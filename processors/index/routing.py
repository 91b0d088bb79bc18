"""Routing events -> index rows (routes, route_attempts, route_states), and the route listings
the CLI and operators use (read through the index port, processors/index/port.py). Pure like
the rest of the projection: rows from event contents and log positions only."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf.json_format import MessageToDict

from strata.common.events import event_time as _ts
from strata.processors.index.port import Index
from strata.proto.strata.v1 import events_pb2 as pb

Rows = dict[str, list[dict[str, Any]]]


def instances_json(instances: Any) -> str:
    return json.dumps(
        [MessageToDict(i, preserving_proto_field_name=True) for i in instances],
        separators=(",", ":"),
        sort_keys=True,
    )


def routing_rows(env: pb.Envelope, kind: str, log: dict[str, Any]) -> Rows:
    at = _ts(env.occurred_at)
    study = env.study_instance_uid
    if kind == "route_decided":
        d = env.route_decided
        return {
            "routes": [
                {
                    "route_id": d.route_id,
                    "study_uid": study,
                    "matched": int(d.matched),
                    "rule": d.rule,
                    "destination": d.destination,
                    "trigger": d.trigger,
                    "transcode_to": d.transcode_to,
                    "instance_count": len(d.instances),
                    "instances_json": instances_json(d.instances),
                    "reason": d.reason,
                    "decided_at": at,
                    **log,
                }
            ]
        }
    if kind == "route_attempted":
        a = env.route_attempted
        return {
            "route_attempts": [
                {
                    "route_id": a.route_id,
                    "study_uid": study,
                    "sop_uid": a.sop_instance_uid,
                    "attempt": a.attempt,
                    "destination": a.destination,
                    "ae_title": a.ae_title,
                    "address": a.address,
                    "outcome": a.outcome,
                    "dimse_status": a.dimse_status,
                    "detail": a.detail,
                    "transfer_syntax_uid": a.transfer_syntax_uid,
                    "attempted_at": at,
                    "next_attempt_at": _ts(a.next_attempt_at),
                    **log,
                }
            ]
        }
    state: dict[str, Any] = {
        "study_uid": study,
        "reason": "",
        "detail": "",
        "dimse_status": 0,
        "attempts": 0,
        "delivered": 0,
        "undelivered": [],
        "at": at,
        **log,
    }
    if kind == "route_delivered":
        e = env.route_delivered
        state.update(
            route_id=e.route_id, state="delivered", attempts=e.attempts, delivered=e.instances
        )
    elif kind == "route_dead_lettered":
        e2 = env.route_dead_lettered
        state.update(
            route_id=e2.route_id,
            state="dead-lettered",
            reason=e2.reason,
            detail=e2.detail,
            dimse_status=e2.dimse_status,
            attempts=e2.attempts,
            delivered=e2.delivered,
            undelivered=list(e2.sop_instance_uids),
        )
    elif kind == "route_redriven":
        e3 = env.route_redriven
        state.update(
            route_id=e3.route_id,
            state="redriven",
            detail=e3.note,
            undelivered=[i.sop_instance_uid for i in e3.instances],
        )
    else:
        return {}
    return {"route_states": [state]}


# ------------------------------------------------------------------------------------ reads


STATES = ("open", "delivered", "dead-lettered", "no-match")


def list_routes(
    index: Index, state: str = "", study_uid: str = "", limit: int = 100
) -> list[dict[str, Any]]:
    rows = index.routes(state, study_uid, limit)
    keys = ("route_id", "study_uid", "rule", "destination", "trigger", "instances",
            "decided_at", "state", "reason", "detail", "attempts", "delivered")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in rows]


def route_detail(index: Index, route_id: str) -> dict[str, Any] | None:
    found = index.route(route_id)
    if found is None:
        return None
    (
        (study, matched, rule, dest, trigger, transcode, insts, reason, decided_at),
        states,
        attempts,
    ) = found
    history = [
        dict(
            zip(
                (
                    "state",
                    "reason",
                    "detail",
                    "dimse_status",
                    "attempts",
                    "delivered",
                    "undelivered",
                    "at",
                    "log_offset",
                ),
                s,
                strict=True,
            )
        )  # fmt: skip
        for s in states
    ]
    current = history[-1]["state"] if history else ("open" if matched else "no-match")
    return {
        "route_id": route_id,
        "study_uid": study,
        "matched": bool(matched),
        "rule": rule,
        "destination": dest,
        "trigger": trigger,
        "transcode_to": transcode,
        "reason": reason,
        "decided_at": decided_at,
        "state": "open" if current == "redriven" else current,
        "instances": json.loads(insts),
        "history": history,
        "attempts": [
            dict(
                zip(
                    (
                        "sop_uid",
                        "attempt",
                        "ae_title",
                        "address",
                        "outcome",
                        "dimse_status",
                        "detail",
                        "transfer_syntax_uid",
                        "at",
                    ),
                    a,
                    strict=True,
                )
            )  # fmt: skip
            for a in attempts
        ],
    }
