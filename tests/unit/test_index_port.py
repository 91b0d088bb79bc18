"""The index adapter (processors/index/store.py, IndexStore) implements every method of the
index port (processors/index/port.py) with the port's signature: a caller typed on the port
gets what it declares from the real index as from a test's fake."""

from __future__ import annotations

import inspect

from strata.processors.index.port import Index
from strata.processors.index.store import IndexStore


def _methods(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if callable(member) and not name.startswith("_")
    }


def test_the_adapter_implements_the_port() -> None:
    port = _methods(Index)
    assert {"search", "locate", "positions", "lifecycle_candidates", "routes"} <= set(port)
    adapter = {name: inspect.signature(getattr(IndexStore, name)) for name in port}
    for name, sig in port.items():
        assert adapter[name] == sig, name
