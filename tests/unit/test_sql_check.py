"""The statement-kind check of the SQL endpoint (the wall before the engine's readonly
session): only one read statement passes, with ClickHouse's codes for what does not."""

from __future__ import annotations

import pytest

from strata.query.sql_http import SqlError, Users, check, engine_error


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO strata.instances VALUES (1)",
        "insert into t select 1",
        "CREATE TABLE x (a Int8) ENGINE = Memory",
        "DROP TABLE strata.instances",
        "ALTER TABLE strata.instances DELETE WHERE 1",
        "SYSTEM SHUTDOWN",
        "TRUNCATE TABLE strata.events",
        "RENAME TABLE a TO b",
        "OPTIMIZE TABLE strata.instances FINAL",
        "GRANT ALL ON *.* TO analyst",
        "KILL QUERY WHERE 1",
        "/* comment */ DELETE FROM t WHERE 1",
        "-- leading comment\nDETACH TABLE t",
    ],
)
def test_write_statements_are_refused_as_readonly(sql: str) -> None:
    with pytest.raises(SqlError) as e:
        check(sql)
    assert e.value.code == 164
    assert e.value.status == 500  # as ClickHouse answers READONLY
    assert e.value.body("26.9.2.1") == (
        "Code: 164. DB::Exception: Cannot execute query in readonly mode. (READONLY) "
        "(version 26.9.2.1)"
    )


@pytest.mark.parametrize(
    "sql, name",
    [
        ("SET max_execution_time = 0", "max_execution_time"),
        ("set readonly=0", "readonly"),
        ("SELECT 1 SETTINGS max_execution_time = 0", "max_execution_time"),
        (
            "SELECT 1 SETTINGS output_format_json_quote_64bit_integers=0, max_result_rows=0",
            "max_result_rows",
        ),
        ("SELECT * FROM (SELECT 1 SETTINGS readonly = 0)", "readonly"),
        ("SELECT 1 FORMAT JSON SETTINGS max_memory_usage = 0", "max_memory_usage"),
    ],
)
def test_settings_that_lift_limits_are_refused(sql: str, name: str) -> None:
    with pytest.raises(SqlError) as e:
        check(sql)
    assert e.value.code == 164
    assert f"Cannot modify '{name}' setting in readonly mode" in e.value.body()


def test_multi_statements_and_outfile_are_refused() -> None:
    with pytest.raises(SqlError) as e:
        check("SELECT 1; DROP TABLE t")
    assert (e.value.code, e.value.status) == (62, 400)
    with pytest.raises(SqlError) as e:
        check("SELECT * FROM strata.instances INTO OUTFILE '/tmp/x.csv'")
    assert e.value.code == 164


@pytest.mark.parametrize(
    "sql, kind, fmt",
    [
        ("SELECT 1", "SELECT", ""),
        ("select 1;", "SELECT", ""),
        ("SELECT 'a;b' AS x -- ; DROP\n", "SELECT", ""),
        ("WITH 1 AS x SELECT x FORMAT JSONEachRow", "WITH", "JSONEachRow"),
        ("(SELECT 1) UNION ALL (SELECT 2)", "SELECT", ""),
        ("SELECT name FROM system.settings WHERE name = 'readonly'", "SELECT", ""),
        ("SELECT format('{}', 1)", "SELECT", ""),
        ("SHOW TABLES", "SHOW", ""),
        ("DESCRIBE TABLE strata.instances", "DESCRIBE", ""),
        ("EXPLAIN SELECT 1", "EXPLAIN", ""),
        ("EXISTS TABLE strata.instances", "EXISTS", ""),
        (
            "SELECT 1 SETTINGS output_format_json_quote_64bit_integers = 0 FORMAT JSON",
            "SELECT",
            "JSON",
        ),
        ("SELECT 1\n FORMAT Native", "SELECT", "Native"),
    ],
)
def test_read_statements_pass_with_their_format(sql: str, kind: str, fmt: str) -> None:
    c = check(sql)
    assert (c.kind, c.fmt) == (kind, fmt)


def test_unterminated_quote_is_a_syntax_error() -> None:
    with pytest.raises(SqlError) as e:
        check("SELECT 'abc")
    assert e.value.code == 62


def test_users_password_and_loopback_rule() -> None:
    users = Users.parse("analyst:,ops:s3cret")
    users.authenticate("analyst", "", "127.0.0.1")
    users.authenticate("ops", "s3cret", "10.0.0.5")
    for user, pw, peer in [
        ("analyst", "", "10.0.0.5"),  # empty password: loopback only
        ("ops", "wrong", "127.0.0.1"),
        ("default", "", "127.0.0.1"),
    ]:
        with pytest.raises(SqlError) as e:
            users.authenticate(user, pw, peer)
        assert (e.value.code, e.value.status) == (516, 403)


def test_engine_error_keeps_clickhouse_code_and_name() -> None:
    err = engine_error(
        RuntimeError(
            "Code: 159. DB::Exception: Timeout exceeded: elapsed 1001 ms. (TIMEOUT_EXCEEDED)"
        )
    )
    assert (err.code, err.name, err.status) == (159, "TIMEOUT_EXCEEDED", 408)
    assert err.body().startswith("Code: 159. DB::Exception: Timeout exceeded")
