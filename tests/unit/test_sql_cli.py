"""strata sql's table printing and strata replay --until's bound parsing."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from strata.cli.sql import table, unescape
from strata.common.errors import Invalid
from strata.processors.pit import DATABASE, parse_until


def test_table_aligns_columns_and_unescapes_tsv() -> None:
    tsv = "modality\tsite\nCT\tA\\tB\nMR\tline\\nbreak\n"
    assert table(tsv).splitlines() == [
        "modality  site",
        "--------  -----------",
        "CT        A\tB",
        "MR        line\\nbreak",
    ]
    assert unescape("a\\\\b\\'c") == "a\\b'c"
    assert table("") == ""


def test_until_is_an_offset_or_a_time() -> None:
    assert parse_until("1500") == 1500
    assert parse_until("2026-11-30T12:00:00Z") == datetime(2026, 11, 30, 12, tzinfo=UTC)
    assert parse_until("2026-11-30 12:00") == datetime(2026, 11, 30, 12, tzinfo=UTC)
    with pytest.raises(Invalid):
        parse_until("yesterday")


@pytest.mark.parametrize("name", ["strata", "asof_", "asof_X", "asof_a;drop", "system"])
def test_only_asof_databases_are_rebuilt(name: str) -> None:
    assert not DATABASE.match(name)
    assert DATABASE.match("asof_1500") and DATABASE.match("asof_2026_11_30t12_00_00z")
