"""Routing events -> index rows (routes, route_attempts, route_states), and the queries the
CLI and operators use. Pure like the rest of the projection: rows from event contents and log
positions only."""

from __future__ import annotations

import json
from typing import Any, Protocol

from google.protobuf.json_format import MessageToDict

from common.events import event_time as _ts
from proto.strata.v1 import events_pb2 as pb

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


class Queryable(Protocol):
    database: str

    def query(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]: ...


STATES = ("open", "delivered", "dead-lettered", "no-match")

_STATE_SQL = (
    "if(s.route_id = '', if(r.matched = 1, 'open', 'no-match'), "
    "if(s.state = 'redriven', 'open', s.state))"
)


def list_routes(
    index: Queryable, state: str = "", study_uid: str = "", limit: int = 100
) -> list[dict[str, Any]]:
    db = index.database
    where = []
    params: dict[str, Any] = {"limit": int(limit)}
    if state:
        where.append(f"{_STATE_SQL} = {{state:String}}")
        params["state"] = state
    if study_uid:
        where.append("r.study_uid = {study:String}")
        params["study"] = study_uid
    rows = index.query(
        f"""SELECT r.route_id, r.study_uid, r.rule, r.destination, r.trigger, r.instance_count,
                   toString(r.decided_at), {_STATE_SQL} AS st, s.reason, s.detail, s.attempts,
                   s.delivered
            FROM (SELECT * FROM {db}.routes FINAL) AS r
            LEFT JOIN (
                SELECT route_id, argMax(state, log_offset) AS state,
                       argMax(reason, log_offset) AS reason, argMax(detail, log_offset) AS detail,
                       argMax(attempts, log_offset) AS attempts,
                       argMax(delivered, log_offset) AS delivered
                FROM {db}.route_states FINAL GROUP BY route_id
            ) AS s USING (route_id)
            {"WHERE " + " AND ".join(where) if where else ""}
            ORDER BY r.decided_at DESC, r.route_id
            LIMIT {{limit:UInt32}}""",
        params,
    )
    keys = ("route_id", "study_uid", "rule", "destination", "trigger", "instances",
            "decided_at", "state", "reason", "detail", "attempts", "delivered")  # fmt: skip
    return [dict(zip(keys, r, strict=True)) for r in rows]


def route_detail(index: Queryable, route_id: str) -> dict[str, Any] | None:
    db = index.database
    p = {"id": route_id}
    rows = index.query(
        f"""SELECT study_uid, matched, rule, destination, trigger, transcode_to, instances_json,
                   reason, toString(decided_at)
            FROM {db}.routes FINAL WHERE route_id = {{id:String}}""",
        p,
    )
    if not rows:
        return None
    study, matched, rule, dest, trigger, transcode, insts, reason, decided_at = rows[0]
    states = index.query(
        f"""SELECT state, reason, detail, dimse_status, attempts, delivered, undelivered,
                   toString(at), log_offset
            FROM {db}.route_states FINAL WHERE route_id = {{id:String}}
            ORDER BY log_offset""",
        p,
    )
    attempts = index.query(
        f"""SELECT sop_uid, attempt, ae_title, address, outcome, dimse_status, detail,
                   transfer_syntax_uid, toString(attempted_at)
            FROM {db}.route_attempts FINAL WHERE route_id = {{id:String}}
            ORDER BY attempted_at, sop_uid, attempt""",
        p,
    )
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
