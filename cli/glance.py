"""``strata status``, the operators' section "at a glance": what the rest of status does not
already print (index lag, outbox depth, set-aside events and quarantine use are above it):
the age of the outbox's oldest unpublished event, routing backlog and dead letters, tier
occupancy (both from the curated views, through the SQL endpoint) and the last verify."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from strata.common.settings import Settings


def verify_file(settings: Settings) -> Any:
    return settings.home / "verify" / "last.json"


def record_verify(settings: Settings, result: str, position: object = None) -> None:
    """Keep the outcome of ``strata verify`` for ``strata status``."""
    path = verify_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        json.dumps(
            {
                "at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
                "result": result,
                "position": position,
            }
        )
    )


def _sql(settings: Settings, sql: str) -> list[dict[str, Any]] | None:
    from strata.cli.sql import query
    from strata.common.errors import StrataError
    from strata.query.sql_http import Users

    users = Users.parse(settings.sql_users).passwords
    user = next(iter(users), "default")
    try:
        body = query(settings, sql, "json", user, users.get(user, ""), "")
    except StrataError:
        return None
    return list(json.loads(body)["data"])


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def glance(settings: Settings) -> str:
    lines = ["at a glance:"]
    if settings.outbox_path.is_file():
        from strata.ingest.outbox import Outbox

        ob = Outbox(settings.outbox_path)
        try:
            depth, age = ob.depth(), ob.oldest_pending_age()
        finally:
            ob.close()
        lines.append(f"  outbox: {depth} unpublished, oldest {age:.1f} s")
    routes = _sql(
        settings,
        "SELECT destination, routes, open, delivered, dead_letters FROM v_routing_sla "
        "ORDER BY destination",
    )
    tiers = _sql(settings, "SELECT tier, instances, bytes FROM v_tier_occupancy ORDER BY tier")
    if routes is None or tiers is None:
        lines.append(f"  index SQL endpoint not answering on port {settings.sql_port}")
    else:
        for r in routes:
            lines.append(
                f"  routing to {r['destination']}: {r['open']} open (backlog), "
                f"{r['dead_letters']} dead letters, {r['delivered']} delivered"
            )
        if not routes:
            lines.append("  routing: no routes")
        occ = ", ".join(
            f"{t['tier']} {int(t['instances'])} instances / {_size(float(t['bytes']))}"
            for t in tiers
        )
        lines.append(f"  tiers: {occ or 'empty'}")
    path = verify_file(settings)
    if path.is_file():
        v = json.loads(path.read_text())
        ago = time.time() - path.stat().st_mtime
        lines.append(f"  last verify: {v['result']} at {v['at']} ({ago / 3600:.1f} h ago)")
    else:
        lines.append("  last verify: never (strata verify)")
    return "\n".join(lines)
