"""``strata route``: inspect routes (from the index) and re-drive dead letters (an event)."""

from __future__ import annotations

import argparse
import getpass
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from strata.cli import audit as cli_audit
from strata.common.errors import NotFound, StrataError
from strata.common.settings import Settings


def _get(settings: Settings, path: str) -> dict[str, Any]:
    from strata.cli.main import admin_request

    url = f"http://{settings.bind_host}:{settings.index_http_port}{path}"
    try:
        with urllib.request.urlopen(admin_request(settings, url), timeout=60) as r:
            return dict(json.loads(r.read()))
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        if exc.code == 404:
            raise NotFound(detail) from exc
        raise StrataError(f"index node: {detail}") from exc
    except OSError as exc:
        raise StrataError(f"the index node does not answer at {url}: {exc}") from exc


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(line.format(*map(str, r)) for r in [headers, *rows])


def cmd_list(settings: Settings, args: argparse.Namespace) -> int:
    q = {"limit": str(args.limit)}
    if args.state:
        q["state"] = args.state
    if args.study:
        q["study"] = args.study
    routes = _get(settings, "/routes?" + urllib.parse.urlencode(q))["routes"]
    if args.json:
        print(json.dumps(routes, indent=2))
        return 0
    print(
        _table(
            [
                "route",
                "state",
                "rule",
                "destination",
                "instances",
                "delivered",
                "attempts",
                "decided",
                "reason",
            ],
            [
                [
                    r["route_id"],
                    r["state"],
                    r["rule"] or "-",
                    r["destination"] or "-",
                    r["instances"],
                    r["delivered"],
                    r["attempts"],
                    r["decided_at"],
                    (r["reason"] + ": " + r["detail"]).strip(": ")[:80],
                ]
                for r in routes
            ],
        )  # fmt: skip
    )
    return 0


def cmd_show(settings: Settings, args: argparse.Namespace) -> int:
    d = _get(settings, f"/routes/{urllib.parse.quote(args.route_id)}")
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"route        {d['route_id']}  ({d['state']})")
    print(f"study        {d['study_uid']}")
    print(f"rule         {d['rule'] or '-'}  ({d['reason']})")
    print(f"destination  {d['destination'] or '-'}  trigger {d['trigger']}  "
          f"transcode {d['transcode_to'] or 'none'}")  # fmt: skip
    print(f"decided      {d['decided_at']}  instances {len(d['instances'])}")
    if d["attempts"]:
        print("\nattempts:")
        print(
            _table(
                ["at", "sop", "#", "ae", "outcome", "status", "detail"],
                [
                    [
                        a["at"],
                        a["sop_uid"],
                        a["attempt"],
                        a["ae_title"],
                        a["outcome"],
                        f"0x{a['dimse_status']:04X}",
                        a["detail"],
                    ]
                    for a in d["attempts"]
                ],
            )  # fmt: skip
        )
    if d["history"]:
        print("\nstates:")
        names = {"delivered": "RouteDelivered", "dead-lettered": "RouteDeadLettered",
                 "redriven": "RouteRedriven"}  # fmt: skip
        for h in d["history"]:
            print(f"  {h['at']}  {names.get(h['state'], h['state'])}  {h['reason']}  "
                  f"{h['detail']}  undelivered={len(h['undelivered'])}")  # fmt: skip
    return 0


def cmd_redrive(settings: Settings, args: argparse.Namespace) -> int:
    from google.protobuf.json_format import ParseDict

    from strata.cli.dr import require_primary
    from strata.common import kafka
    from strata.common.events import envelope
    from strata.proto.strata.v1 import events_pb2 as pb

    require_primary(settings, "route redrive")
    d = _get(settings, f"/routes/{urllib.parse.quote(args.route_id)}")
    if d["state"] != "dead-lettered":
        raise StrataError(f"route {args.route_id} is {d['state']}, not dead-lettered")
    undelivered = set(d["history"][-1]["undelivered"])
    instances = [
        ParseDict(i, pb.RoutedInstance())
        for i in d["instances"]
        if i["sop_instance_uid"] in undelivered
    ]
    ev = pb.RouteRedriven(
        route_id=d["route_id"],
        requested_by=args.by or getpass.getuser(),
        note=args.note,
        destination=d["destination"],
        transcode_to=d["transcode_to"],
        instances=instances,
        rule=d["rule"],
    )
    env = envelope(ev, study_uid=d["study_uid"], service="cli", node=settings.node_name)
    errors: list[str] = []
    p = kafka.producer(settings, "durable", "cli")
    p.produce(
        settings.study_topic,
        env.SerializeToString(),
        d["study_uid"].encode(),
        on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
    )
    if p.flush(30) or errors:
        raise StrataError(f"the re-drive was not recorded: {errors or 'Kafka timed out'}")
    cli_audit.route_redriven(settings, d["route_id"], d["study_uid"], len(instances), args.by)
    print(f"route {d['route_id']}: re-driven ({len(instances)} instances to {d['destination']})")
    return 0


def add_parser(sub: Any) -> None:
    r = sub.add_parser("route", help="inspect routes and re-drive dead letters")
    rs = r.add_subparsers(dest="route_cmd", required=True)
    ls = rs.add_parser("list", help="routes, newest first")
    ls.add_argument("--state", choices=["open", "delivered", "dead-lettered", "no-match"])
    ls.add_argument("--study", help="StudyInstanceUID")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(fn=cmd_list)
    sh = rs.add_parser("show", help="one route: decision, attempts, states")
    sh.add_argument("route_id")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(fn=cmd_show)
    rd = rs.add_parser("redrive", help="re-open a dead-lettered route (its undelivered instances)")
    rd.add_argument("route_id")
    rd.add_argument("--note", default="", help="why (recorded in the RouteRedriven event)")
    rd.add_argument("--by", help="operator name (default: the current user)")
    rd.set_defaults(fn=cmd_redrive)
