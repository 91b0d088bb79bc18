"""The server's time limit on searches, on the real embedded ClickHouse (chDB): the SETTINGS
clause every search carries is valid SQL at every level (with and without the stored header),
and a query that outlives it is cut by the engine and raised as DeadlineExceeded."""

from __future__ import annotations

import pytest

from strata.common.errors import DeadlineExceeded
from strata.processors.index.search import time_limit
from strata.processors.index.store import IndexStore
from strata.query.find import FindQuery, find_rows

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
@pytest.mark.parametrize("header", [False, True])
def test_every_search_level_runs_under_a_time_limit(
    chdb_index: IndexStore, level: str, header: bool
) -> None:
    keys = [("PatientID", "NO-SUCH-PATIENT-TL")]
    if header:
        keys.append(("PatientComments", ""))  # answered from the stored header (a join)
    assert find_rows(chdb_index, FindQuery(level, keys, 10), timeout=30.0) == []


def test_a_query_past_the_limit_is_cut_and_raised_as_deadline_exceeded(
    chdb_index: IndexStore,
) -> None:
    with pytest.raises(DeadlineExceeded, match="TIMEOUT_EXCEEDED"):
        chdb_index.query(
            "SELECT count() FROM numbers(100000000000) WHERE sipHash64(number) = 1"
            + time_limit(0.2)
        )
