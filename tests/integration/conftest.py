"""Shared fixtures of the integration tests.

chDB runs ClickHouse in-process and a process can open only ONE chDB path, so every test of a
pytest run shares one session-scoped index; tests isolate their data by distinct UIDs and
patient ids, never by separate stores.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator

import pytest

from strata.processors.index.store import IndexStore


@pytest.fixture(scope="session")
def chdb_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IndexStore]:
    path = tmp_path_factory.mktemp("chdb") / "idx"
    index = IndexStore(f"chdb://{path}", "strata")
    index.migrate()
    yield index
    index.close()


_db = itertools.count(1)


def other_database(index: IndexStore, prefix: str = "strata_test") -> IndexStore:
    """The same chDB engine (one path per process), another database, migrated."""
    other = copy.copy(index)
    other.database = f"{prefix}_{next(_db)}"
    other._columns = {}
    other.migrate()
    return other
