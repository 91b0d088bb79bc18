"""The read-only ClickHouse HTTP interface over the real chDB index: clickhouse-connect and
curl as clients, the engine's own readonly session as the first wall (queried past the
statement check), the limits stopping a query, auth and ClickHouse's error format."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from strata.processors.index.store import IndexStore
from strata.query import sql_http
from tests.support.stack import free_port

pytestmark = pytest.mark.integration

ROWS = 5000  # clickhouse-connect reads system.settings (~1900 rows) when it connects


@pytest.fixture(scope="module")
def endpoint(chdb_index: IndexStore) -> Iterator[tuple[int, sql_http.Pool]]:
    path = chdb_index.embedded_path()
    assert path, "the session index is chDB"
    limits = sql_http.Limits(max_execution_time=2, max_result_rows=ROWS)
    pool = sql_http.Pool(path, chdb_index.database, limits, 2)
    port = free_port()
    sql_http.serve(pool, sql_http.Users.parse("analyst:,ops:pw"), "test-node", "127.0.0.1", port)
    yield port, pool
    # before the session's index closes its engine: a chDB connection left open past it
    # crashes the interpreter at exit (seen as pytest exiting 139 after every test passed)
    pool.close()


def curl(port: int, *args: str) -> tuple[int, dict[str, str], str]:
    r = subprocess.run(
        ["curl", "-sS", "-D", "-", *args], capture_output=True, text=True, timeout=60, check=True
    )
    head, _, body = r.stdout.partition("\n\n")  # text mode: CRLF read as LF
    lines = head.split("\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return status, headers, body


def test_clickhouse_connect_reads_the_index(endpoint: tuple[int, sql_http.Pool]) -> None:
    port, _ = endpoint
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst")
    assert client.server_version == endpoint[1].version
    tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
    assert {"instances", "events", "studies"} <= tables
    got = client.query(
        "SELECT {a:UInt32} + 1 AS x, {s:String} AS s", parameters={"a": 41, "s": "é'\\"}
    )
    assert got.result_rows == [(42, "é'\\")]
    assert client.query("SELECT count() FROM instances").result_rows[0][0] >= 0
    df = client.query_df("SELECT number AS n FROM numbers(3)")
    assert list(df["n"]) == [0, 1, 2]
    table = client.query_arrow("SELECT toString(number) AS s FROM numbers(2)")
    assert table.column("s").to_pylist() == ["0", "1"]


def test_writes_are_refused_through_clickhouse_connect(endpoint: tuple[int, sql_http.Pool]) -> None:
    port, _ = endpoint
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst")
    for sql in [
        "INSERT INTO strata.events (topic) VALUES ('x')",
        "CREATE TABLE strata.x (a Int8) ENGINE = Memory",
        "DROP TABLE strata.instances",
        "ALTER TABLE strata.instances DELETE WHERE 1",
        "SYSTEM DROP MARK CACHE",
        "SET max_execution_time = 0",
        "SELECT 1 SETTINGS max_execution_time = 0",
        "SELECT 1 SETTINGS readonly = 0",
    ]:
        with pytest.raises(DatabaseError) as e:
            client.command(sql)
        assert "Code: 164." in str(e.value), sql
    with pytest.raises(DatabaseError) as e:
        client.command("SELECT 1 SETTINGS max_result_rows = 0", settings={})
    assert "Code: 164." in str(e.value)
    # the index is intact
    assert "instances" in {r[0] for r in client.query("SHOW TABLES").result_rows}


def test_the_engine_itself_refuses_writes(endpoint: tuple[int, sql_http.Pool]) -> None:
    """Past the statement check (Pool.run directly): the session's readonly = 1 refuses."""
    _, pool = endpoint
    got = pool.run(
        "SELECT name, value FROM system.settings WHERE name IN "
        "('readonly', 'os_thread_priority', 'result_overflow_mode') ORDER BY name",
        "CSV",
        {},
        "strata",
        {},
    )
    assert (
        got.data == b'"os_thread_priority","19"\n"readonly","1"\n"result_overflow_mode","throw"\n'
    )
    for sql in [
        "INSERT INTO strata.events (topic) VALUES ('x')",
        "CREATE TABLE strata.x (a Int8) ENGINE = Memory",
        "DROP TABLE strata.instances",
        "SET max_execution_time = 0",
        "SET readonly = 0",
        "SELECT 1 SETTINGS max_execution_time = 0",
        "SELECT * FROM file('/etc/passwd', 'CSV')",
    ]:
        with pytest.raises(sql_http.SqlError) as e:
            pool.run(sql, "TabSeparated", {}, "strata", {})
        assert (e.value.code, e.value.name) == (164, "READONLY"), sql


def test_queries_over_the_limits_are_stopped(endpoint: tuple[int, sql_http.Pool]) -> None:
    port, _ = endpoint
    client = clickhouse_connect.get_client(host="127.0.0.1", port=port, username="analyst")
    with pytest.raises(DatabaseError) as e:
        client.query(f"SELECT number FROM numbers({ROWS * 10})")
    assert "Code: 396." in str(e.value)  # TOO_MANY_ROWS_OR_BYTES (result_overflow_mode=throw)
    with pytest.raises(DatabaseError) as e:
        client.query("SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 1")
    assert "Code: 159." in str(e.value)  # TIMEOUT_EXCEEDED after max_execution_time
    status, headers, body = curl(
        port, "-u", "analyst:", f"http://127.0.0.1:{port}/?query=SELECT+*+FROM+system.numbers"
    )
    assert (status, headers["x-clickhouse-exception-code"]) == (500, "396")
    assert body.startswith("Code: 396. DB::Exception: Limit for result exceeded")


def test_curl_formats_params_database_and_errors(endpoint: tuple[int, sql_http.Pool]) -> None:
    port, _ = endpoint
    base = f"http://127.0.0.1:{port}"
    assert curl(port, f"{base}/ping")[2] == "Ok.\n"
    assert curl(port, f"{base}/")[2] == "Ok.\n"
    status, headers, body = curl(
        port,
        "-H",
        "X-ClickHouse-User: analyst",
        "--data-binary",
        "SELECT {x:UInt8} + 1 AS y, currentDatabase() AS db",
        f"{base}/?param_x=2&default_format=JSONEachRow&database=system",
    )
    assert status == 200
    assert json.loads(body) == {"y": 3, "db": "system"}
    assert headers["x-clickhouse-format"] == "JSONEachRow"
    assert headers["x-clickhouse-server-display-name"] == "test-node"
    assert headers["x-clickhouse-timezone"]
    assert headers["x-clickhouse-query-id"]
    summary = json.loads(headers["x-clickhouse-summary"])
    assert summary["read_rows"] == "1"
    # query parameter + body; the FORMAT clause wins over default_format
    status, headers, body = curl(
        port,
        "-u",
        "ops:pw",
        "--data-binary",
        "FORMAT CSV",
        f"{base}/?query=SELECT+1+AS+a&default_format=JSON",
    )
    assert (status, body, headers["x-clickhouse-format"]) == (200, "1\n", "CSV")
    # wrong password, unknown user, no user
    for args in (["-u", "ops:nope"], ["-H", "X-ClickHouse-User: root"], []):
        status, headers, body = curl(port, *args, f"{base}/?query=SELECT+1")
        assert (status, headers["x-clickhouse-exception-code"]) == (403, "516")
        assert "(AUTHENTICATION_FAILED)" in body
    # a setting in the URL that lifts a limit; one equal to the session's value passes
    status, headers, body = curl(
        port, "-u", "analyst:", f"{base}/?query=SELECT+1&max_execution_time=0"
    )
    assert (status, headers["x-clickhouse-exception-code"]) == (500, "164")
    status, _, body = curl(port, "-u", "analyst:", f"{base}/?query=SELECT+1&readonly=1")
    assert (status, body) == (200, "1\n")
    # an engine error keeps ClickHouse's code and status
    status, headers, body = curl(
        port, "-u", "analyst:", f"{base}/?query=SELECT+*+FROM+strata.no_such_table"
    )
    assert (status, headers["x-clickhouse-exception-code"]) == (404, "60")
    assert body.startswith("Code: 60. DB::Exception:")


def test_analyst_queries_yield_while_the_index_is_behind(chdb_index: IndexStore) -> None:
    """Ingest first: a query waits while busy() (the index behind the log), then runs; and a
    busy() that never clears delays it by yield_seconds at most, never refuses it."""
    checks = []

    def busy_three_times() -> bool:
        checks.append(1)
        return len(checks) <= 3

    limits = sql_http.Limits(max_execution_time=5, max_result_rows=ROWS)
    pool = sql_http.Pool(
        chdb_index.embedded_path(), chdb_index.database, limits, 1, busy_three_times, 60.0
    )
    try:
        assert pool.run("SELECT 7", "CSV", {}, "strata", {}).data == b"7\n"
        assert (pool.yields, len(checks)) == (3, 4)
    finally:
        pool.close()
    always = sql_http.Pool(
        chdb_index.embedded_path(), chdb_index.database, limits, 1, lambda: True, 0.2
    )
    try:
        assert always.run("SELECT 8", "CSV", {}, "strata", {}).data == b"8\n"
        assert always.yields >= 1
    finally:
        always.close()
