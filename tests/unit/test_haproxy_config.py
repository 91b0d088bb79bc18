"""The balancer's generated configuration and the nodes' recorded ports (issue #18)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from strata.common.settings import Settings
from strata.stack import haproxy, nodes


def settings(tmp_path: Path, **kw: str) -> Settings:
    env = {
        "STRATA_HOME": str(tmp_path),
        "STRATA_INDEX_REPLICAS": "2",
        "STRATA_INGEST_NODES": "2",
        "STRATA_INGEST_PORT": "21112",
        "STRATA_QR_PORT": "21113",
        **kw,
    }
    return Settings.from_env(env)


def test_ports_are_chosen_once_and_kept(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert nodes.nodes(s) == []  # nothing recorded, nothing allocated without asking
    first = nodes.nodes(s, allocate=True)
    assert [n.name for n in first] == ["index-1", "index-2", "ingest-1", "ingest-2"]
    assert nodes.nodes(s) == first == nodes.nodes(s, allocate=True)
    ports = [p for n in first for p in n.ports.values()]
    assert len(set(ports)) == len(ports)
    more = nodes.nodes(settings(tmp_path, STRATA_INDEX_REPLICAS="3"), allocate=True)
    assert more[:2] == first[:2] and more[2].name == "index-3"
    assert [n.name for n in nodes.recorded(s)] == [
        "index-1",
        "index-2",
        "index-3",
        "ingest-1",
        "ingest-2",
    ]


def test_each_replica_has_its_own_state_group_and_ports(tmp_path: Path) -> None:
    s = settings(tmp_path)
    i1, i2, g1, _ = nodes.nodes(s, allocate=True)
    e1, e2, eg = nodes.env(s, i1), nodes.env(s, i2), nodes.env(s, g1)
    assert e1["STRATA_NODE_DIR"] != e2["STRATA_NODE_DIR"]
    assert e1["STRATA_INDEX_GROUP"] != e2["STRATA_INDEX_GROUP"]
    assert e1["STRATA_QR_PORT"] != e2["STRATA_QR_PORT"] != str(s.qr_port)
    assert (e1["STRATA_INDEX_DECISIONS"], e2["STRATA_INDEX_DECISIONS"]) == ("True", "False")
    assert eg["STRATA_INGEST_PORT"] == str(g1.ports["dicom"])
    assert Settings.from_env(e1).outbox_path != Settings.from_env(eg).outbox_path
    assert Settings.from_env(e1).hot_dir == Settings.from_env(eg).hot_dir == s.hot_dir


def test_config_balances_the_public_ports_with_health_checks(tmp_path: Path) -> None:
    s = settings(tmp_path)
    ns = nodes.nodes(s, allocate=True)
    cfg = haproxy.config(s, ns)
    assert "bind 127.0.0.1:21112" in cfg and "bind 127.0.0.1:21113" in cfg
    assert cfg.count("option httpchk GET /healthz") == len(haproxy.ROUTES)
    for n in ns:
        servers = list(re.finditer(rf"server {n.name} 127.0.0.1:(\d+) check port (\d+)", cfg))
        assert len(servers) == (4 if n.kind == "index" else 2)  # one per service it serves
        for m in servers:
            assert int(m.group(1)) in n.ports.values()
            assert int(m.group(2)) == n.ports["http"]
    # the real HAProxy accepts it (a missing haproxy fails the test)
    path = haproxy.write_config(s, ns)
    r = subprocess.run([haproxy.binary(), "-c", "-f", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not haproxy.changed(s, ns)
    assert haproxy.changed(s, nodes.nodes(settings(tmp_path, STRATA_INDEX_REPLICAS="3"), True))
