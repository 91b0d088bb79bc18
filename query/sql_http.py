"""ClickHouse's HTTP interface, read-only, over the index node's embedded index (chDB).

Only one process can open a chDB data path, and the index node is that process: analysts
reach the live index here, with any ClickHouse client (clickhouse-connect, curl, Grafana's
ClickHouse data source). The part of the interface clients use (docs/analytics.md):
``GET|POST /?query=`` (or the query in the body, or query parameter + body), ``database``,
``default_format`` and the FORMAT clause, ``param_x`` for ``{x:T}``, basic auth and the
X-ClickHouse-User / X-ClickHouse-Key headers, ``/ping``, ClickHouse's error format and codes.

Two walls keep it read-only:
1. every query runs on a chDB connection of its own (a pool of STRATA_SQL_CONNECTIONS)
   whose session has the limits set and then ``readonly = 1``: the engine itself refuses
   writes, DDL, table functions reaching files or the network, and any change of a setting,
   with its own code 164 (READONLY). Separate connections have separate sessions, so the
   index writer's connection is untouched, and an analyst query does not wait for a write
   batch (nor the other way round);
2. before execution, a statement-kind check (``check``) refuses anything but one SELECT /
   WITH / SHOW / DESCRIBE / EXPLAIN / EXISTS statement, SET, a SETTINGS clause changing a
   setting, INTO OUTFILE, and several statements, with the code ClickHouse would answer.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import ipaddress
import json
import logging
import queue
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

QUERIES = Counter(
    "strata_sql_queries_total", "Analyst SQL queries answered by the index node", ["result"]
)
SECONDS = Histogram(
    "strata_sql_query_seconds",
    "Time to answer an analyst SQL query (waiting for a connection included)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)

# ClickHouse error codes used here (src/Common/ErrorCodes.cpp).
SYNTAX_ERROR = (62, "SYNTAX_ERROR")
READONLY = (164, "READONLY")
UNKNOWN_SETTING = (115, "UNKNOWN_SETTING")
TOO_MANY_SIMULTANEOUS_QUERIES = (202, "TOO_MANY_SIMULTANEOUS_QUERIES")
AUTHENTICATION_FAILED = (516, "AUTHENTICATION_FAILED")
UNKNOWN_FORMAT = (73, "UNKNOWN_FORMAT")

# HTTP status of an error code, as ClickHouse's HTTP handler answers it
# (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp, 26.9); anything else is 500, READONLY (164),
# MEMORY_LIMIT_EXCEEDED (241), TOO_MANY_ROWS_OR_BYTES (396) and
# TOO_MANY_SIMULTANEOUS_QUERIES (202) included.
_STATUS = {
    194: 401,  # REQUIRED_PASSWORD
    192: 403,  # UNKNOWN_USER
    193: 403,  # WRONG_PASSWORD
    516: 403,  # AUTHENTICATION_FAILED
    497: 403,  # ACCESS_DENIED
    62: 400,  # SYNTAX_ERROR
    6: 400,  # CANNOT_PARSE_TEXT
    27: 400,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
    36: 400,  # BAD_ARGUMENTS
    41: 400,  # CANNOT_PARSE_DATETIME
    43: 400,  # ILLEGAL_TYPE_OF_ARGUMENT
    53: 400,  # TYPE_MISMATCH
    117: 400,  # INCORRECT_DATA
    456: 400,  # UNKNOWN_QUERY_PARAMETER
    457: 400,  # BAD_QUERY_PARAMETER
    46: 404,  # UNKNOWN_FUNCTION
    47: 404,  # UNKNOWN_IDENTIFIER
    50: 404,  # UNKNOWN_TYPE
    60: 404,  # UNKNOWN_TABLE
    73: 404,  # UNKNOWN_FORMAT
    81: 404,  # UNKNOWN_DATABASE
    115: 404,  # UNKNOWN_SETTING
    63: 404,  # UNKNOWN_AGGREGATE_FUNCTION
    159: 408,  # TIMEOUT_EXCEEDED
    48: 501,  # NOT_IMPLEMENTED
}

CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "TSV": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNames": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNames": "text/tab-separated-values; charset=UTF-8",
    "TabSeparatedWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "TSVWithNamesAndTypes": "text/tab-separated-values; charset=UTF-8",
    "CSV": "text/csv; charset=UTF-8; header=absent",
    "CSVWithNames": "text/csv; charset=UTF-8; header=present",
    "JSON": "application/json; charset=UTF-8",
    "JSONCompact": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
    "JSONCompactEachRow": "application/x-ndjson; charset=UTF-8",
    "Pretty": "text/plain; charset=UTF-8",
    "PrettyCompact": "text/plain; charset=UTF-8",
    "Markdown": "text/markdown; charset=UTF-8",
    "Vertical": "text/plain; charset=UTF-8",
}

# Statements that only read.
READ_KINDS = {"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXPLAIN", "EXISTS"}
# A SETTINGS clause may change only these (output shape, never a limit).
SAFE_SETTING_PREFIXES = ("output_format_", "format_", "date_time_output_format")
# URL parameters that are the interface's own, not settings.
TRANSPORT_PARAMS = {
    "query",
    "database",
    "default_format",
    "user",
    "password",
    "query_id",
    "session_id",
    "session_timeout",
    "session_check",
    "compress",
    "decompress",
    "buffer_size",
    "wait_end_of_query",
    "quota_key",
    "stacktrace",
    "role",
    "client_protocol_version",
}


class SqlError(Exception):
    """An error answered in ClickHouse's format: ``Code: N. DB::Exception: text. (NAME)``."""

    def __init__(self, code: tuple[int, str] | int, message: str, name: str = "") -> None:
        if isinstance(code, tuple):
            code, name = code
        self.code = code
        self.name = name
        self.text = message
        super().__init__(self.body())

    def body(self, version: str = "") -> str:
        """ClickHouse's rendering; with ``version``, its ``(version X)`` suffix."""
        if self.text.startswith("Code: "):
            out = self.text
        else:
            text = self.text if self.text.endswith(".") else self.text + "."
            suffix = f" ({self.name})" if self.name else ""
            out = f"Code: {self.code}. DB::Exception: {text}{suffix}"
        if version and "(version " not in out:
            out += f" (version {version})"
        return out

    @property
    def status(self) -> int:
        return _STATUS.get(self.code, 500)


_ENGINE_ERROR = re.compile(r"Code: (\d+)\.")
_ERROR_NAME = re.compile(r"\(([A-Z][A-Z0-9_]+)\)(?: \(version [^)]*\))?\.?\s*$")


def engine_error(exc: BaseException) -> SqlError:
    """The SqlError of what chDB raised (its text is ClickHouse's exception text)."""
    text = str(exc).strip()
    m = _ENGINE_ERROR.search(text)
    if m is None:
        return SqlError(1001, text or type(exc).__name__, "STD_EXCEPTION")
    text = text[m.start() :]
    n = _ERROR_NAME.search(text)
    return SqlError(int(m.group(1)), text, n.group(1) if n else "")


# ------------------------------------------------------------------ statement-kind check


@dataclass
class Token:
    kind: str  # word, string, quoted (identifier), number, punct
    text: str


_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_NUMBER = re.compile(r"[0-9][0-9A-Za-z_.]*(?:[eE][+-]?[0-9]+)?")


def tokens(sql: str) -> Iterator[Token]:
    """The tokens of ``sql`` without whitespace and comments (ClickHouse's lexical rules for
    strings 'x', identifiers "x" and `x` with backslash escapes and doubled quotes, comments
    -- # /* */). An unterminated string or comment is a SqlError (SYNTAX_ERROR)."""
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c.isspace():
            i += 1
        elif sql.startswith("--", i) or c == "#":
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            if j < 0:
                raise SqlError(SYNTAX_ERROR, "Syntax error: unterminated comment")
            i = j + 2
        elif c in "'\"`":
            j = i + 1
            while True:
                if j >= n:
                    raise SqlError(SYNTAX_ERROR, "Syntax error: unterminated quoted text")
                if sql[j] == "\\":
                    j += 2
                    continue
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            yield Token("string" if c == "'" else "quoted", sql[i + 1 : j])
            i = j + 1
        elif (m := _WORD.match(sql, i)) is not None:
            yield Token("word", m.group())
            i = m.end()
        elif (m := _NUMBER.match(sql, i)) is not None:
            yield Token("number", m.group())
            i = m.end()
        else:
            yield Token("punct", c)
            i += 1


@dataclass
class Checked:
    """What check() found: the FORMAT of the clause (or '') and the statement kind."""

    kind: str
    fmt: str = ""
    settings: list[str] = field(default_factory=list)


def check(sql: str) -> Checked:
    """Refuse (SqlError) what is not one read-only statement: the second wall, before the
    engine's readonly session. Returns its kind and the format named by a FORMAT clause."""
    toks = list(tokens(sql))
    while toks and toks[-1].kind == "punct" and toks[-1].text == ";":
        toks.pop()
    if not toks:
        raise SqlError(SYNTAX_ERROR, "Empty query")
    if any(t.kind == "punct" and t.text == ";" for t in toks):
        raise SqlError(SYNTAX_ERROR, "Multi-statements are not allowed")
    first = next((t for t in toks if not (t.kind == "punct" and t.text == "(")), toks[0])
    kind = first.text.upper() if first.kind == "word" else ""
    if kind == "SET":
        name = toks[1].text if len(toks) > 1 else ""
        raise SqlError(READONLY, f"Cannot modify '{name}' setting in readonly mode")
    if kind not in READ_KINDS:
        raise SqlError(READONLY, "Cannot execute query in readonly mode")
    out = Checked(kind)
    for i, t in enumerate(toks):
        if t.kind != "word":
            continue
        prev = toks[i - 1] if i else None
        if prev is not None and prev.kind == "punct" and prev.text == ".":
            continue  # system.settings, t.format: names, not clauses
        word = t.text.upper()
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if word == "INTO" and nxt is not None and nxt.text.upper() == "OUTFILE":
            raise SqlError(READONLY, "INTO OUTFILE is not allowed in readonly mode")
        if word == "FORMAT" and nxt is not None and nxt.kind in ("word", "quoted"):
            after = toks[i + 2] if i + 2 < len(toks) else None
            if after is None or not (after.kind == "punct" and after.text == "("):
                out.fmt = nxt.text
        if word == "SETTINGS":
            out.settings.extend(_settings_clause(toks, i + 1))
    for name in out.settings:
        if not name.startswith(SAFE_SETTING_PREFIXES):
            raise SqlError(READONLY, f"Cannot modify '{name}' setting in readonly mode")
    return out


def _settings_clause(toks: list[Token], i: int) -> list[str]:
    """Names of a SETTINGS clause starting at toks[i] (name = value [, name = value]...)."""
    names = []
    while i + 1 < len(toks) and toks[i].kind in ("word", "quoted") and toks[i + 1].text == "=":
        names.append(toks[i].text)
        i += 2
        depth = 0
        while i < len(toks):  # the value: up to a ',' at this depth
            t = toks[i]
            if t.kind == "punct" and t.text in "([":
                depth += 1
            elif t.kind == "punct" and t.text in ")]":
                if depth == 0:
                    return names
                depth -= 1
            elif t.kind == "punct" and t.text == "," and depth == 0:
                i += 1
                break
            elif depth == 0 and i > 0 and toks[i - 1].text != "=" and t.kind == "word":
                return names  # the next clause (FORMAT ...)
            i += 1
    return names


# ------------------------------------------------------------------ users


@dataclass(frozen=True)
class Users:
    """Users of the endpoint (``name:password[,name:password]``)."""

    passwords: dict[str, str]

    @classmethod
    def parse(cls, spec: str) -> Users:
        out = {}
        for item in spec.split(","):
            item = item.strip()
            if not item:
                continue
            name, _, password = item.partition(":")
            out[name.strip()] = password
        return cls(out)

    def authenticate(self, user: str, password: str, peer: str) -> None:
        expected = self.passwords.get(user)
        ok = expected is not None and hmac.compare_digest(expected.encode(), password.encode())
        if ok and expected == "" and not _loopback(peer):
            ok = False  # a password-less user only from this machine
        if not ok:
            raise SqlError(
                AUTHENTICATION_FAILED,
                f"{user}: Authentication failed: password is incorrect, or there is no user "
                "with such name",
            )


def _loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


def credentials(request: web.Request) -> tuple[str, str]:
    """(user, password) from basic auth, the X-ClickHouse-User/Key headers or the user and
    password parameters; ClickHouse's user "default" with no password when none is given."""
    h = request.headers
    auth = h.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise SqlError(AUTHENTICATION_FAILED, "Malformed basic authentication") from None
        return user, password
    if "X-ClickHouse-User" in h:
        return h["X-ClickHouse-User"], h.get("X-ClickHouse-Key", "")
    q = request.query
    return q.get("user", "default"), q.get("password", "")


# ------------------------------------------------------------------ the connection pool


@dataclass(frozen=True)
class Limits:
    max_execution_time: float = 30.0
    max_result_rows: int = 1_000_000
    max_result_bytes: int = 256 * 1024**2
    max_memory_usage: int = 1024**3
    max_threads: int = 1
    nice: int = 19

    def statements(self) -> list[str]:
        return [
            f"SET max_execution_time = {float(self.max_execution_time)}",
            f"SET max_result_rows = {int(self.max_result_rows)}",
            f"SET max_result_bytes = {int(self.max_result_bytes)}",
            "SET result_overflow_mode = 'throw'",
            "SET timeout_overflow_mode = 'throw'",
            f"SET max_memory_usage = {int(self.max_memory_usage)}",
            f"SET max_threads = {int(self.max_threads)}",
            # The engine's threads running an analyst query get this Linux nice value (and
            # their own back after it): ingest indexing and DICOM queries go first.
            f"SET os_thread_priority = {int(self.nice)}",
            # Last: from here on the session refuses every change of a setting.
            "SET readonly = 1",
        ]


def _settings(conn: Any, where: str = "1") -> dict[str, str]:
    rows = conn.query(
        f"SELECT name, value FROM system.settings WHERE {where}", "JSONCompactEachRow"
    )
    return dict(json.loads(line) for line in rows.bytes().decode().splitlines() if line)


class _Slot:
    """One read-only connection, its current database, and its settings' values (a URL
    setting equal to the session's value is accepted, as ClickHouse does in readonly mode)."""

    def __init__(self, conn: Any, database: str, limits: Limits) -> None:
        self.conn = conn
        self.database = database
        conn.query(f"USE `{database}`")
        self.settings = _settings(conn)  # before the limits: all rows of system.settings
        for stmt in limits.statements():
            conn.query(stmt)
        self.settings.update(_settings(conn, "changed"))


@dataclass
class Result:
    data: bytes
    rows_read: int
    bytes_read: int
    elapsed: float


class Pool:
    """Read-only chDB connections to the index node's own engine (same process, same data
    path: a connection of chDB's embedded server, not a second server)."""

    def __init__(
        self,
        connection_string: str,
        database: str,
        limits: Limits,
        size: int,
        busy: Callable[[], bool] | None = None,
        yield_seconds: float = 0.0,
    ) -> None:
        import chdb

        self.limits = limits
        # Ingest first: while ``busy()`` (the index is behind the log), a query waits up to
        # ``yield_seconds`` before it starts, then runs anyway (analysts are slowed, never
        # starved). ``yields`` counts the checks that found the index busy.
        self.busy = busy
        self.yield_seconds = yield_seconds
        self.yields = 0
        self._idle = threading.Event()
        self._free: queue.Queue[_Slot] = queue.Queue()
        self._all: list[_Slot] = []
        for _ in range(max(1, size)):
            slot = _Slot(chdb.connect(connection_string), database, limits)
            self._all.append(slot)
            self._free.put(slot)
        probe = self._all[0].conn.query("SELECT version(), timezone()", "JSONCompactEachRow")
        self.version, self.timezone = json.loads(probe.bytes().decode().splitlines()[0])
        self.default_database = database

    def run(
        self,
        sql: str,
        fmt: str,
        params: dict[str, str],
        database: str,
        url_settings: dict[str, str],
    ) -> Result:
        if self.busy is not None:
            deadline = time.monotonic() + self.yield_seconds
            while self.busy() and time.monotonic() < deadline:
                self.yields += 1
                self._idle.wait(0.05)  # the lag is measured once a second
        try:
            slot = self._free.get(timeout=self.limits.max_execution_time)
        except queue.Empty:
            raise SqlError(
                TOO_MANY_SIMULTANEOUS_QUERIES,
                f"Too many simultaneous queries: every one of the {len(self._all)} analyst "
                f"connections stayed busy for {self.limits.max_execution_time:g} s",
            ) from None
        try:
            for name, value in url_settings.items():
                if name not in slot.settings:
                    raise SqlError(UNKNOWN_SETTING, f"Unknown setting '{name}'")
                if slot.settings[name] != value:
                    raise SqlError(READONLY, f"Cannot modify '{name}' setting in readonly mode")
            try:
                if database != slot.database:
                    slot.conn.query(f"USE `{database.replace('`', '')}`")
                    slot.database = database
                r = slot.conn.query(sql, fmt, params=params)
            except SqlError:
                raise
            except Exception as exc:  # chDB raises RuntimeError with the engine's text
                raise engine_error(exc) from None
            return Result(r.bytes(), r.rows_read(), r.bytes_read(), r.elapsed())
        finally:
            self._free.put(slot)

    def close(self) -> None:
        for slot in self._all:
            try:
                slot.conn.close()
            except Exception as exc:  # best effort at shutdown
                log.debug("closing an analyst connection: %s", exc)


# ------------------------------------------------------------------ the HTTP interface


# The longest SQL text kept in an audit record (the query's keys, PS3.15 A.5.3.10).
AUDIT_SQL_CHARS = 4096


def audit_query(
    user: str,
    peer: str,
    sql: str,
    database: str,
    query_id: str,
    status: int,
    audit_database: str = "",
    code: int = 0,
) -> None:
    """One analyst query in the audit trail (common/audit.py): who (the SQL user), the SQL text
    and database (what was asked; the index holds patient data), the outcome. A query naming
    the audit trail's own database is an audit-read. A refused login is an auth-failure."""
    from strata.common import audit

    if code == AUTHENTICATION_FAILED[0]:
        audit.record(
            audit.AUTH_FAILURE,
            audit.SERIOUS,
            interface="sql",
            peer=peer,
            who=audit.pb.AuditWho(user=user),
            what=audit.pb.AuditWhat(detail="SQL login refused", method="sql"),
            http_status=status,
        )
        return
    reads_audit = bool(audit_database) and (
        database == audit_database or audit_database in sql
    )
    audit.record(
        audit.AUDIT_READ if reads_audit else audit.QUERY,
        audit.http_outcome(status),
        interface="sql",
        peer=peer,
        who=audit.pb.AuditWho(user=user),
        what=audit.pb.AuditWhat(
            query_level="SQL",
            query_keys={"sql": sql[:AUDIT_SQL_CHARS], "database": database},
            detail=f"query id {query_id}",
            method="sql",
        ),
        http_status=status,
    )


def create_app(
    pool: Pool, users: Users, display_name: str, audit_database: str = ""
) -> web.Application:
    """``audit_database``: the audit trail's database (reading it is an audit-read)."""

    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="Ok.\n", content_type="text/plain", charset="UTF-8")

    async def handle(request: web.Request) -> web.Response:
        q = request.query
        if request.method == "GET" and "query" not in q:
            return await ping(request)
        query_id = q.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": pool.timezone,
            "X-ClickHouse-Server-Display-Name": display_name,
        }
        t0 = time.monotonic()
        user = ""
        sql = ""
        database = pool.default_database
        peer = request.remote or ""
        try:
            user, password = credentials(request)
            users.authenticate(user, password, request.remote or "")
            if request.method == "POST":
                body = (await request.read()).decode("utf-8", errors="strict")
                sql = q["query"] + "\n" + body if "query" in q else body
            else:
                sql = q["query"]
            checked = check(sql)
            fmt = (
                checked.fmt
                or q.get("default_format")
                or request.headers.get("X-ClickHouse-Format")
                or "TabSeparated"
            )
            params = {k[len("param_") :]: v for k, v in q.items() if k.startswith("param_")}
            url_settings = {
                k: v
                for k, v in q.items()
                if k not in TRANSPORT_PARAMS and not k.startswith("param_")
            }
            database = (
                q.get("database")
                or request.headers.get("X-ClickHouse-Database")
                or pool.default_database
            )
            res = await asyncio.to_thread(pool.run, sql, fmt, params, database, url_settings)
        except UnicodeDecodeError:
            err = SqlError(SYNTAX_ERROR, "The query is not valid UTF-8")
            audit_query(user, peer, sql, database, query_id, err.status, audit_database, err.code)
            return _error(err, headers, user, query_id, t0, pool.version)
        except SqlError as err:
            audit_query(user, peer, sql, database, query_id, err.status, audit_database, err.code)
            return _error(err, headers, user, query_id, t0, pool.version)
        audit_query(user, peer, sql, database, query_id, 200, audit_database)
        elapsed = time.monotonic() - t0
        headers["X-ClickHouse-Format"] = fmt
        headers["X-ClickHouse-Summary"] = json.dumps(
            {
                "read_rows": str(res.rows_read),
                "read_bytes": str(res.bytes_read),
                "written_rows": "0",
                "written_bytes": "0",
                "total_rows_to_read": str(res.rows_read),
                "result_rows": "0",
                "result_bytes": str(len(res.data)),
                "elapsed_ns": str(int(res.elapsed * 1e9)),
            },
            separators=(",", ":"),
        )
        QUERIES.labels("ok").inc()
        SECONDS.observe(elapsed)
        log.info("sql query %s by %s: %d bytes in %.3f s", query_id, user, len(res.data), elapsed)
        ctype = CONTENT_TYPES.get(fmt, "application/octet-stream")
        headers["Content-Type"] = ctype
        return web.Response(body=res.data, headers=headers)

    app = web.Application(client_max_size=1024**2)
    app.router.add_get("/ping", ping)
    app.router.add_route("GET", "/", handle)
    app.router.add_route("POST", "/", handle)
    return app


def _error(
    err: SqlError, headers: dict[str, str], user: str, query_id: str, t0: float, version: str
) -> web.Response:
    # Never the query text nor the engine's message in the log: either may hold patient
    # data (a literal in the query); the analyst gets the message, the log the code.
    QUERIES.labels("error").inc()
    SECONDS.observe(time.monotonic() - t0)
    log.info("sql query %s by %s refused: code %d %s", query_id, user or "?", err.code, err.name)
    headers = {**headers, "X-ClickHouse-Exception-Code": str(err.code)}
    return web.Response(
        status=err.status,
        text=err.body(version) + "\n",
        content_type="text/plain",
        charset="UTF-8",
        headers=headers,
    )


def serve(
    pool: Pool,
    users: Users,
    display_name: str,
    host: str,
    port: int,
    audit_database: str = "",
) -> threading.Thread:
    """Serve the endpoint on its own event loop in a daemon thread (as DICOMweb is)."""
    from strata.query.dicomweb import serve_in_thread

    return serve_in_thread(create_app(pool, users, display_name, audit_database), host, port)
