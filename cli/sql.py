"""``strata sql "SELECT ..."``: a query through the index node's read-only SQL endpoint
(ClickHouse's HTTP interface, query/sql_http.py), printed as a table, CSV or JSON."""

from __future__ import annotations

import argparse
import base64
import sys
import urllib.error
import urllib.parse
import urllib.request

from strata.common.errors import StrataError
from strata.common.settings import Settings

FORMATS = {"table": "TabSeparatedWithNames", "csv": "CSVWithNames", "json": "JSON"}
_UNESCAPE = {"t": "\t", "n": "\n", "\\": "\\", "0": "\0", "r": "\r", "'": "'", "b": "\b"}


def unescape(field: str) -> str:
    """A TabSeparated field as text (its escapes \\t \\n \\\\ ... undone)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        c = field[i]
        if c == "\\" and i + 1 < len(field):
            out.append(_UNESCAPE.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def table(tsv: str) -> str:
    lines = tsv.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    rows = [[unescape(f).replace("\n", "\\n") for f in line.split("\t")] for line in lines]
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*rows[0]), "  ".join("-" * w for w in widths)]
    out += [fmt.format(*r) for r in rows[1:] if len(r) == len(widths)]
    return "\n".join(line.rstrip() for line in out)


def query(settings: Settings, sql: str, fmt: str, user: str, password: str, database: str) -> str:
    params = {"default_format": FORMATS[fmt], "database": database}
    url = f"http://{settings.bind_host}:{settings.sql_port}/?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, data=sql.encode(), method="POST")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=settings.sql_max_execution_time + 30) as r:
            return str(r.read().decode())
    except urllib.error.HTTPError as exc:
        raise StrataError(exc.read().decode(errors="replace").strip()) from None
    except OSError as exc:
        raise StrataError(f"the SQL endpoint does not answer at {url}: {exc}") from exc


def cmd_sql(settings: Settings, args: argparse.Namespace) -> int:
    from strata.query.sql_http import Users

    users = Users.parse(settings.sql_users).passwords
    user = args.user or next(iter(users), "default")
    password = args.password if args.password is not None else users.get(user, "")
    sql = args.query if args.query != "-" else sys.stdin.read()
    body = query(settings, sql, args.format, user, password, args.database or "")
    print(
        table(body) if args.format == "table" else body, end="" if args.format != "table" else "\n"
    )
    return 0


def replay_until(settings: Settings, until: str, database: str | None) -> int:
    """``strata replay --until``: ask the index node to rebuild the index as of ``until``
    into a database next to the live one (processors/pit.py)."""
    import json
    import re

    name = database or "asof_" + re.sub(r"[^a-z0-9]+", "_", until.lower()).strip("_")
    q = urllib.parse.urlencode({"until": until, "database": name})
    url = f"http://{settings.bind_host}:{settings.index_http_port}/replay?{q}"
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=3600) as r:
            done = json.loads(r.read())
    except urllib.error.HTTPError as exc:
        detail = json.loads(exc.read() or b"{}").get("error", exc.reason)
        raise StrataError(f"index node: {detail}") from None
    except OSError as exc:
        raise StrataError(f"the index node does not answer at {url}: {exc}") from exc
    print(
        f"replayed {done['events']} events in {done['seconds']:.1f} s: the index as of "
        f"{until} is database {done['database']} "
        f'(strata sql --database {done["database"]} "SELECT ...")'
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser(
        "sql", help="run a read-only ClickHouse SQL query on the live index (docs/analytics.md)"
    )
    q.add_argument("query", help="the query ('-' = read it from stdin)")
    q.add_argument("--format", choices=sorted(FORMATS), default="table")
    q.add_argument("--user", help="SQL user (default: the first of STRATA_SQL_USERS)")
    q.add_argument("--password", help="its password (default: from STRATA_SQL_USERS)")
    q.add_argument("--database", help="database (default: the index's)")
    q.set_defaults(fn=cmd_sql)
