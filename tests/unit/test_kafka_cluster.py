"""The local Kafka cluster's layout and broker properties (issue #18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from strata.common.errors import Invalid
from strata.common.settings import Settings
from strata.stack.kafka.broker import _properties, nodes


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line)


def cluster(tmp_path: Path, **kw: str) -> Settings:
    env = {
        "STRATA_HOME": str(tmp_path),
        "STRATA_KAFKA_NODES": "3",
        "STRATA_KAFKA_BOOTSTRAP": "127.0.0.1:9100,127.0.0.1:9101,127.0.0.1:9102",
        "STRATA_KAFKA_CONTROLLER_PORTS": "9200,9201,9202",
        **kw,
    }
    return Settings.from_env(env)


def test_single_node_is_the_embedded_default(tmp_path: Path) -> None:
    s = Settings.from_env({"STRATA_HOME": str(tmp_path)})
    (n,) = nodes(s)
    assert (n.name, n.dir, s.topic_replicas) == ("kafka", s.kafka_dir, 1)
    p = props(_properties(s, n))
    assert p["min.insync.replicas"] == "1" and p["log.flush.interval.messages"] == "1"
    assert p["controller.quorum.voters"] == f"1@127.0.0.1:{s.kafka_controller_port}"


def test_three_nodes_replicate_three_ways_two_in_sync(tmp_path: Path) -> None:
    s = cluster(tmp_path)
    ns = nodes(s)
    assert [n.name for n in ns] == ["kafka-1", "kafka-2", "kafka-3"]
    assert len({n.dir for n in ns}) == 3 and s.topic_replicas == 3
    p = props(_properties(s, ns[1]))
    assert p["node.id"] == "2"
    assert p["listeners"] == "PLAINTEXT://127.0.0.1:9101,CONTROLLER://127.0.0.1:9201"
    assert p["controller.quorum.voters"] == ("1@127.0.0.1:9200,2@127.0.0.1:9201,3@127.0.0.1:9202")
    assert p["min.insync.replicas"] == "2" and p["default.replication.factor"] == "3"
    assert p["offsets.topic.replication.factor"] == "3"
    assert p["unclean.leader.election.enable"] == "false"


def test_flush_per_message_is_a_setting(tmp_path: Path) -> None:
    s = cluster(tmp_path, STRATA_KAFKA_FLUSH_EACH_MESSAGE="false")
    assert "log.flush.interval.messages" not in props(_properties(s, nodes(s)[0]))


def test_a_cluster_needs_one_address_per_node(tmp_path: Path) -> None:
    with pytest.raises(Invalid, match="one host:port per node"):
        nodes(cluster(tmp_path, STRATA_KAFKA_BOOTSTRAP="127.0.0.1:9100"))
    with pytest.raises(Invalid, match="CONTROLLER_PORTS"):
        nodes(cluster(tmp_path, STRATA_KAFKA_CONTROLLER_PORTS="9200"))
