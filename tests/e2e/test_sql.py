"""Analysts on the live archive: clickhouse-connect queries the index node's SQL endpoint
while storescu sends a study in the background; writes are refused with ClickHouse's codes;
`strata sql` prints a table through the same endpoint."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError

from tests.support.dcmtk import dcmtk_env
from tests.support.stack import Stack, make_stack, require_tool
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e
N = 150


@pytest.fixture(scope="module")
def sstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = make_stack(tmp_path_factory.mktemp("sql-home"))
    s.up()
    try:
        yield s
    finally:
        s.down()


def test_queries_during_sustained_ingest(sstack: Stack, tmp_path: Path) -> None:
    files = ct_series(tmp_path / "ct", N, patient_id="SQL0001")
    client = clickhouse_connect.get_client(
        host="127.0.0.1", port=sstack.settings.sql_port, username="analyst"
    )
    assert client.query("SELECT count() FROM instances FINAL").result_rows == [(0,)]
    sender = subprocess.Popen(
        [
            require_tool("storescu"),
            "-aet",
            "MODALITY",
            "-aec",
            sstack.settings.ingest_ae_title,
            "127.0.0.1",
            str(sstack.settings.ingest_port),
            *map(str, files),
        ],
        env=dcmtk_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen: list[int] = []
    try:
        # Query while the study arrives: each answer is a count the index had then; counts
        # never go back, and the queries run beside the ingest's index writes.
        while sender.poll() is None:
            n = client.query("SELECT count() FROM instances FINAL").result_rows[0][0]
            assert not seen or n >= seen[-1]
            seen.append(n)
            rows = client.query(
                "SELECT modality, instances FROM v_ingest_daily WHERE site = {s:String}",
                parameters={"s": "MODALITY"},
            ).result_rows
            assert rows in ([], [("CT", rows[0][1] if rows else 0)])
        assert sender.wait(timeout=600) == 0, sender.stderr.read() if sender.stderr else ""
    finally:
        if sender.poll() is None:
            sender.kill()
    assert len(seen) >= 1
    wait_for(
        lambda: client.query("SELECT count() FROM instances FINAL").result_rows == [(N,)],
        120,
        f"{N} instances visible through the SQL endpoint",
    )
    df = client.query_df("SELECT modality, studies, instances FROM v_ingest_daily")
    assert df.to_dict("records") == [{"modality": "CT", "studies": 1, "instances": N}]
    for sql in (
        "INSERT INTO strata.events (topic) VALUES ('x')",
        "DROP TABLE strata.instances",
        "ALTER TABLE strata.instances DELETE WHERE 1",
        "SYSTEM FLUSH LOGS",
        "CREATE TABLE strata.x (a Int8) ENGINE = Memory",
        "SET max_execution_time = 0",
    ):
        with pytest.raises(DatabaseError) as e:
            client.command(sql)
        assert "Code: 164." in str(e.value), sql
    assert client.query("SELECT count() FROM instances FINAL").result_rows == [(N,)]


def test_strata_sql_prints_a_table_csv_and_json(sstack: Stack) -> None:
    r = sstack.cli("sql", "SELECT modality, instances FROM v_ingest_daily")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["modality", "instances"]
    assert lines[2].split() == ["CT", str(N)]
    r = sstack.cli("sql", "--format", "csv", "SELECT modality, instances FROM v_ingest_daily")
    assert r.stdout == f'"modality","instances"\n"CT",{N}\n'
    r = sstack.cli("sql", "--format", "json", "SELECT 1 AS one")
    assert '"one": 1' in r.stdout
    r = sstack.cli("sql", "DROP TABLE strata.instances", check=False)
    assert r.returncode == 2
    assert "Code: 164. DB::Exception:" in r.stderr


def test_point_in_time_replay_shows_the_index_as_of_an_offset(sstack: Stack) -> None:
    # The study's N instance events are the first records of its partition (offsets 0..N-1):
    # as of offset 40 the index held 40 of them.
    r = sstack.cli("replay", "--until", "40", "--database", "asof_40")
    assert "database asof_40" in r.stdout
    r = sstack.cli(
        "sql", "--database", "asof_40", "--format", "csv", "SELECT count() FROM instances FINAL"
    )
    assert r.stdout.splitlines()[1] == "40"
    r = sstack.cli("sql", "--format", "csv", "SELECT instances FROM asof_40.v_ingest_daily")
    assert r.stdout.splitlines()[1] == "40"
    # the live index is untouched
    r = sstack.cli("sql", "--format", "csv", "SELECT count() FROM instances FINAL")
    assert r.stdout.splitlines()[1] == str(N)
    # before the first event: an empty index
    r = sstack.cli("replay", "--until", "2000-01-01T00:00:00Z", "--database", "asof_empty")
    r = sstack.cli(
        "sql", "--database", "asof_empty", "--format", "csv", "SELECT count() FROM events"
    )
    assert r.stdout.splitlines()[1] == "0"
    # only asof_ databases are (re)built
    r = sstack.cli("replay", "--until", "1", "--database", "strata", check=False)
    assert r.returncode == 2 and "asof_" in r.stderr


def test_status_shows_the_operators_glance(sstack: Stack) -> None:
    r = sstack.cli("status", check=False)
    text = r.stdout
    assert "at a glance:" in text
    assert "outbox: 0 unpublished" in text
    assert "routing: no routes" in text
    assert f"tiers: hot {N} instances" in text
    assert "last verify: never" in text
    sstack.cli("verify", "-q")
    r = sstack.cli("status", check=False)
    assert "last verify: equal at " in r.stdout


def test_analyst_queries_and_refused_logins_are_audited(sstack: Stack) -> None:
    """The index holds patient data: each analyst query is in the audit trail with who asked
    and the SQL text, a query of the audit trail's own database is an audit-read, and a wrong
    password is an auth-failure (common/audit.py, docs/security.md)."""
    import uuid

    from strata.common.events import decode
    from strata.common.kafka import read_log

    st = sstack.settings
    marker = f"probe-{uuid.uuid4().hex}"
    client = clickhouse_connect.get_client(host="127.0.0.1", port=st.sql_port, username="analyst")
    client.query(f"SELECT '{marker}' AS m, count() FROM instances FINAL")
    client.query(f"SELECT '{marker}' AS m, count() FROM {st.audit_database}.audit FINAL")
    with pytest.raises(DatabaseError):
        clickhouse_connect.get_client(
            host="127.0.0.1", port=st.sql_port, username=f"nobody-{marker}", password="x"
        )

    def records() -> list[Any] | None:
        evs = [decode(v).audit_event for v in read_log(st.kafka_bootstrap, st.audit_topic)]
        sql = [a for a in evs if a.where.interface == "sql"]
        mine = [a for a in sql if marker in a.what.query_keys.get("sql", "") + a.who.user]
        return mine if len(mine) >= 3 else None

    got = wait_for(records, 60, "the analyst's queries and the refused login audited")
    by_action = {a.action: a for a in got}
    assert set(by_action) == {"query", "audit-read", "auth-failure"}, [a.action for a in got]
    actions = [a.action for a in got]
    assert actions.count("query") == 1 and actions.count("audit-read") == 1, actions
    q = by_action["query"]
    assert q.who.user == "analyst" and q.outcome == "success" and q.http_status == 200
    assert "FROM instances" in q.what.query_keys["sql"]
    assert by_action["auth-failure"].who.user == f"nobody-{marker}"
    assert by_action["auth-failure"].http_status == 403  # ClickHouse's status for code 516
