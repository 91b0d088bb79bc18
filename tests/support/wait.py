"""Waiting on a condition instead of sleeping: tests poll what they wait for (an index answer,
a log position, a file) until it holds or a generous deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    pred: Callable[[], T], timeout: float, what: str | None = None, *, step: float = 0.3
) -> T:
    """Call ``pred`` until it returns something truthy and return that. At the deadline:
    with ``what`` given, fail the test naming it; otherwise return the last (falsy) value,
    for the caller's own assert and message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    v = pred()
    if not v and what is not None:
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
    return v
