"""Real high-availability stacks for tests: a 3-node Kafka cluster on free loopback ports."""

from __future__ import annotations

from pathlib import Path

from common.settings import Settings
from tests.support.stack import Stack, free_port, make_stack


def make_cluster_stack(home: Path, kafka_nodes: int = 3, **env: str) -> Stack:
    """``make_stack`` with ``kafka_nodes`` Kafka nodes (broker+controller each), every client
    given the full bootstrap list; ``env``: further STRATA_* settings."""
    s = make_stack(home)
    s.env["STRATA_KAFKA_NODES"] = str(kafka_nodes)
    s.env["STRATA_KAFKA_BOOTSTRAP"] = ",".join(
        f"127.0.0.1:{free_port()}" for _ in range(kafka_nodes)
    )
    s.env["STRATA_KAFKA_CONTROLLER_PORTS"] = ",".join(str(free_port()) for _ in range(kafka_nodes))
    s.env.update(env)
    s.settings = Settings.from_env(s.env)
    return s
