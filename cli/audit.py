"""``strata audit``: who did what to which patient's studies, from the audit index; and
``strata audit export``: the audit topic to a syslog receiver as DICOM audit messages."""

from __future__ import annotations

import argparse
import json
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

from strata.common.errors import StrataError
from strata.common.settings import Settings

_RELATIVE = re.compile(r"^(\d+)([dhm])$")


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """ISO date/time (UTC unless it says otherwise), "month" (the start of this month), "today",
    or a relative "30d" / "12h" / "15m"."""
    now = now or datetime.now(UTC)
    t = text.strip().lower()
    if t == "month":
        return now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    if t == "today":
        return now.replace(hour=0, minute=0, second=0, microsecond=0)
    m = _RELATIVE.match(t)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        return (
            now - {"d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]
        )
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError as exc:
        raise StrataError(
            f"not a time: {text!r} (ISO date, 'month', 'today', or 30d/12h/15m)"
        ) from exc
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def query(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    from strata.cli.route import _get

    q = {"limit": str(args.limit)}
    for key in ("patient", "user", "action", "study"):
        v = getattr(args, key, None)
        if v:
            q[key] = v
    if args.since:
        q["since"] = parse_time(args.since).isoformat()
    if args.until:
        q["until"] = parse_time(args.until).isoformat()
    return list(_get(settings, "/audit?" + urllib.parse.urlencode(q))["events"])


def _who(e: dict[str, Any]) -> str:
    parts = [e["user"], e["client_id"] and f"({e['client_id']})", e["calling_ae_title"]]
    return " ".join(p for p in parts if p) or "-"


def cmd_audit(settings: Settings, args: argparse.Namespace) -> int:
    if args.mode == "export":
        from strata.processors.audit_export import run

        return run(settings)
    events = query(settings, args)
    if args.json:
        print(json.dumps(events, indent=1))
        return 0
    from strata.cli.route import _table

    rows = [
        [
            e["occurred_at"][:19].replace("T", " "),
            e["action"],
            e["outcome"],
            _who(e),
            f"{e['interface']} {e['peer_address']}",
            ",".join(e["patient_ids"]) or "-",
            ",".join(e["study_uids"])[:64] or "-",
        ]
        for e in events
    ]
    print(_table(["when (UTC)", "action", "outcome", "who", "where", "patient", "studies"], rows))
    print(f"{len(rows)} audit events")
    return 0


def add_parser(sub: Any) -> None:
    a = sub.add_parser(
        "audit",
        help="the audit trail: who stored, queried, retrieved, viewed... (admin); or export it",
    )
    a.add_argument("mode", nargs="?", default="list", choices=["list", "export"])
    a.add_argument("--patient", help="PatientID")
    a.add_argument("--study", help="StudyInstanceUID")
    a.add_argument("--user", help="OIDC subject or client, calling AE title, certificate subject")
    a.add_argument("--action", help="e.g. view,retrieve (comma-separated)")
    a.add_argument("--since", help="ISO date/time, 'month', 'today', or 30d / 12h / 15m")
    a.add_argument("--until", help="same forms as --since")
    a.add_argument("--limit", type=int, default=1000)
    a.add_argument("--json", action="store_true")
    a.set_defaults(fn=cmd_audit)


# ------------------------------------------------------------------------------ operator acts


def hold(settings: Settings, action: str, study: str, hold_id: str, by: str) -> None:
    """A legal hold placed or released (``strata hold``)."""
    from strata.common import audit
    from strata.proto.strata.v1 import events_pb2 as pb

    audit.record_cli(
        settings,
        audit.HOLD_PLACE if action == "place" else audit.HOLD_RELEASE,
        pb.AuditWhat(study_instance_uids=[study], detail=f"hold {hold_id}"),
        by,
    )


def outbox_redriven(settings: Settings, seqs: list[str], n: int) -> None:
    """Set-aside outbox events re-queued (``strata outbox redrive``)."""
    from strata.common import audit
    from strata.proto.strata.v1 import events_pb2 as pb

    which = ",".join(seqs) if seqs else "all"
    audit.record_cli(
        settings,
        audit.REDRIVE,
        pb.AuditWhat(instances=n, detail=f"outbox seq {which}: {n} re-driven"),
    )


def route_redriven(settings: Settings, route_id: str, study: str, n: int, by: str | None) -> None:
    """A dead-lettered route re-opened (``strata route redrive``)."""
    from strata.common import audit
    from strata.proto.strata.v1 import events_pb2 as pb

    audit.record_cli(
        settings,
        audit.REDRIVE,
        pb.AuditWhat(study_instance_uids=[study], instances=n, detail=f"route {route_id}"),
        by or "",
    )
