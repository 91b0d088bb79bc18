from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.stack import Stack, make_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A fresh, real stack per test module (Kafka broker, index node, ingest node)."""
    s = make_stack(tmp_path_factory.mktemp("strata-home"))
    s.up()
    try:
        yield s
    finally:
        s.down()
