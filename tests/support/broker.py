"""One real single-node KRaft broker for an integration test module: the embedded one of
``strata up`` (stack/kafka/broker.py), on free loopback ports, under its own home."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from strata.common.kafka import ensure_topics
from strata.common.settings import Settings
from strata.stack.kafka import broker
from strata.stack.procs import free_port


@contextlib.contextmanager
def standalone(home: Path, with_topics: bool = True) -> Iterator[Settings]:
    """The broker up (with the archive's topics unless ``with_topics`` is False), its
    settings yielded; stopped afterwards."""
    settings = Settings.from_env(
        {
            "STRATA_HOME": str(home),
            "STRATA_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "STRATA_KAFKA_CONTROLLER_PORT": str(free_port()),
        }
    )
    broker.start(settings)
    try:
        broker.wait_ready(settings, timeout=120)
        if with_topics:
            ensure_topics(settings)
        yield settings
    finally:
        broker.proc(settings).stop()
