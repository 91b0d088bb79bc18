"""The audit index: the `audit` table, filled from the audit topic, and every SQL the audit
trail runs (one place, to move behind the index port with the rest of the index's SQL).

The table lives in a database of its own (``Settings.audit_database``, ``<index db>_audit``):
a replay or point-in-time rebuild of the index (processors/replay.py, processors/pit.py) makes
new index databases from the study topic and never touches it. It is a ReplacingMergeTree
ordered by the event id: an event delivered twice (a redelivered batch, a spool replayed after
its first publish was acknowledged late) collapses to one row; reads use FINAL.

Who may read it (docs/security.md, "Audit trail"): the admin scope, through the index node's
``/audit`` endpoint (``strata audit``), and the read-only SQL endpoint's users, who already
read the index's PHI. It is PHI (patient ids, query keys): no curated analyst view exposes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from datetime import datetime
from typing import Any

from clickhouse_connect.driver.exceptions import ClickHouseError
from google.protobuf.message import DecodeError

from strata.common.errors import Unavailable
from strata.common.events import decode, event_time
from strata.common.redact import redact
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

COLUMNS = (
    "event_id",
    "occurred_at",
    "action",
    "outcome",
    "dicom_status",
    "http_status",
    "grpc_code",
    "user",
    "client_id",
    "calling_ae_title",
    "called_ae_title",
    "cert_subject",
    "cert_fingerprint",
    "peer_address",
    "node",
    "interface",
    "service",
    "patient_ids",
    "study_uids",
    "instances",
    "query_level",
    "query_keys",
    "sop_class_uid",
    "detail",
    "method",
    "log_partition",
    "log_offset",
)


def ddl(db: str) -> list[str]:
    return [
        f"CREATE DATABASE IF NOT EXISTS {db}",
        f"""CREATE TABLE IF NOT EXISTS {db}.audit (
            event_id String,
            occurred_at DateTime64(3, 'UTC'),
            action LowCardinality(String),
            outcome LowCardinality(String),
            dicom_status UInt32,
            http_status UInt32,
            grpc_code LowCardinality(String),
            user String,
            client_id String,
            calling_ae_title String,
            called_ae_title String,
            cert_subject String,
            cert_fingerprint String,
            peer_address String,
            node String,
            interface LowCardinality(String),
            service LowCardinality(String),
            patient_ids Array(String),
            study_uids Array(String),
            instances UInt32,
            query_level String,
            query_keys String,
            sop_class_uid String,
            detail String,
            method String,
            log_partition UInt32,
            log_offset UInt64
        ) ENGINE = ReplacingMergeTree(log_offset)
        PARTITION BY toYYYYMM(occurred_at)
        ORDER BY (event_id)""",
    ]


def row(env: pb.Envelope, partition: int, offset: int) -> tuple[Any, ...] | None:
    """The audit row of an event (None: not an AuditEvent). A pure function of the record."""
    if env.WhichOneof("payload") != "audit_event":
        return None
    a = env.audit_event
    return (
        env.event_id,
        event_time(env.occurred_at),
        a.action,
        a.outcome,
        a.dicom_status,
        a.http_status,
        a.grpc_code,
        a.who.user,
        a.who.client_id,
        a.who.calling_ae_title,
        a.who.called_ae_title,
        a.who.cert_subject,
        a.who.cert_fingerprint,
        a.where.peer_address,
        a.where.node,
        a.where.interface,
        env.producer.service,
        list(a.what.patient_ids),
        list(a.what.study_instance_uids),
        a.what.instances,
        a.what.query_level,
        json.dumps(dict(sorted(a.what.query_keys.items())), ensure_ascii=False),
        a.what.sop_class_uid,
        a.what.detail,
        a.what.method,
        partition,
        offset,
    )


class AuditIndex:
    """The audit table, on a ClickHouse client of its own (``IndexStore.sibling_client``).

    Off the projection's critical path: every query is an audit event (a C-FIND poller makes a
    hundred a second), and an insert on the index store's own client would hold the
    projection's write lock and that client's handle lock, which every C-FIND, QIDO-RS and
    gRPC search waits for. On its own chDB handle (its own session and handle lock; chDB runs
    the handles of one engine side by side, as the read-only SQL endpoint's do) an audit
    insert or ``/audit`` search waits only for other audit calls (``self.lock``)."""

    def __init__(self, index: Any, database: str) -> None:
        self.db = database
        self.client = index.sibling_client()
        self.lock = threading.Lock()

    def migrate(self) -> None:
        with self.lock:
            for stmt in ddl(self.db):
                self.client.command(stmt)

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        try:
            with self.lock:
                self.client.insert(f"{self.db}.audit", rows, column_names=list(COLUMNS))
        except ClickHouseError as exc:
            raise Unavailable(redact(f"audit write failed: {exc}")) from exc

    def query(self, sql: str, parameters: dict[str, Any]) -> list[tuple[Any, ...]]:
        try:
            with self.lock:
                return [tuple(r) for r in self.client.query(sql, parameters=parameters).result_rows]
        except ClickHouseError as exc:
            raise Unavailable(redact(f"audit query failed: {exc}")) from exc

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort at shutdown
            self.client.close()

    def search(
        self,
        patient: str = "",
        user: str = "",
        action: str = "",
        since: datetime | None = None,
        until: datetime | None = None,
        study: str = "",
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Audit rows, oldest first. ``user`` matches the OIDC subject or client, the calling
        AE title or the certificate subject."""
        conds: list[str] = ["1"]
        params: dict[str, Any] = {}
        if patient:
            conds.append("has(patient_ids, {p:String})")
            params["p"] = patient
        if study:
            conds.append("has(study_uids, {s:String})")
            params["s"] = study
        if user:
            conds.append(
                "(user = {u:String} OR client_id = {u:String} OR calling_ae_title = {u:String} "
                "OR cert_subject = {u:String})"
            )
            params["u"] = user
        if action:
            conds.append("action IN {a:Array(String)}")
            params["a"] = [x.strip() for x in action.split(",") if x.strip()]
        if since is not None:
            conds.append("occurred_at >= {since:DateTime64(3, 'UTC')}")
            params["since"] = since
        if until is not None:
            conds.append("occurred_at < {until:DateTime64(3, 'UTC')}")
            params["until"] = until
        rows = self.query(
            f"SELECT {', '.join(COLUMNS[:-2])} FROM {self.db}.audit FINAL "
            f"WHERE {' AND '.join(conds)} ORDER BY occurred_at, event_id "
            f"LIMIT {max(1, min(int(limit), 100_000))}",
            params,
        )
        out = []
        for r in rows:
            d = dict(zip(COLUMNS[:-2], r, strict=True))
            d["occurred_at"] = d["occurred_at"].isoformat()
            d["patient_ids"], d["study_uids"] = list(d["patient_ids"]), list(d["study_uids"])
            d["query_keys"] = json.loads(d["query_keys"] or "{}")
            out.append(d)
        return out


def patients_of(index: Any, study_uids: list[str]) -> list[str]:
    """The patient ids of indexed studies (what a retrieve or view names in its event)."""
    if not study_uids:
        return []
    rows = index.query(
        f"SELECT DISTINCT patient_id FROM {index.database}.studies FINAL "
        "WHERE study_uid IN {s:Array(String)} ORDER BY patient_id",
        {"s": sorted(set(study_uids))[:1000]},
    )
    return [str(r[0]) for r in rows if r[0]]


def attach(app: Any, settings: Any, index: Any) -> AuditIndex:
    """The index node's audit agent (audit topic -> audit table) and its ``/audit`` page
    (admin: the app's admin middleware guards every page but the probes)."""
    audit = AuditIndex(index, settings.audit_database)
    audit.migrate()
    topic = app.topic(
        settings.audit_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )

    @app.agent(topic, name="index-audit")
    async def audit_agent(stream: Any) -> None:
        # At most one insert a second: every query is an audit event (a C-FIND poller makes a
        # hundred a second), and each insert is a part chDB then merges beside the searches;
        # the audit table is not read for latency.
        async for events in stream.take_events(
            max(settings.index_batch_size, 10_000), within=max(settings.index_batch_window, 1.0)
        ):
            rows = []
            for ev in events:
                msg = ev.message
                try:
                    r = row(decode(ev.value), msg.partition, msg.offset)
                except DecodeError:
                    log.error("undecodable audit record at %s[%d]@%d skipped", msg.topic,
                              msg.partition, msg.offset)  # fmt: skip
                    continue
                if r is not None:
                    rows.append(r)
            # written before the offsets are acknowledged: a crash redelivers, never skips
            await asyncio.to_thread(audit.write, rows)

    @app.page("/audit")
    async def audit_page(web: Any, request: Any) -> Any:
        q = request.query
        try:
            since = datetime.fromisoformat(q["since"]) if q.get("since") else None
            until = datetime.fromisoformat(q["until"]) if q.get("until") else None
            limit = int(q.get("limit", "1000"))
        except ValueError as exc:
            return web.json({"error": str(exc)}, status=400)
        _reading_recorded(request)  # reading the audit trail is itself audited
        rows = await asyncio.to_thread(
            audit.search,
            q.get("patient", ""),
            q.get("user", ""),
            q.get("action", ""),
            since,
            until,
            q.get("study", ""),
            limit,
        )
        return web.json({"events": rows})

    return audit


def _reading_recorded(request: Any) -> None:
    """PS3.15 A.5.3.2 "Audit Log Used": who read the audit trail, and for what."""
    from strata.common import audit

    q = request.query
    what = pb.AuditWhat(method="GET /audit")
    what.query_keys.update({k: v for k, v in q.items()})
    if q.get("patient"):
        what.patient_ids.append(q["patient"])
    audit.record(
        audit.AUDIT_READ,
        interface="http",
        peer=request.remote or "",
        who=audit.who_bearer(request.headers.get("Authorization")),
        what=what,
    )


def deletes_recorder(index: Any, events: list[tuple[Any, Any]]) -> Any:
    """For the lifecycle processor (processors/lifecycle/): the audit records of a pass's
    deletions, one per study, with the patients looked up NOW (before the index applies the
    deletions); call the result once the deletions are acknowledged by Kafka."""
    from strata.common import audit

    by_study: dict[str, list[Any]] = {}
    for _p, env in events:
        if env.WhichOneof("payload") == "instance_deleted":
            by_study.setdefault(env.study_instance_uid, []).append(env.instance_deleted)
    if not by_study or not audit.enabled():
        return lambda: None
    try:
        patients = {s: patients_of(index, [s]) for s in by_study}
    except Exception:  # noqa: BLE001 - the records still name the studies
        patients = {}

    def record() -> None:
        for study, dels in by_study.items():
            rules = sorted({d.policy for d in dels})
            audit.record(
                audit.DELETE,
                interface="system",
                who=pb.AuditWho(user="lifecycle"),
                what=pb.AuditWhat(
                    patient_ids=patients.get(study, []),
                    study_instance_uids=[study],
                    instances=len(dels),
                    detail=f"end of retention (rule {', '.join(rules)})",
                ),
            )

    return record
