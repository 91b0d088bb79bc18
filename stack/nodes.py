"""Several archive nodes of one kind on the local stack (issue #18): index replicas and ingest
nodes, each with its own state directory and ports, all behind HAProxy (stack/haproxy.py).

    <home>/nodes/ports.json      the ports each node was given (kept: a restarted node keeps
                                 its ports, so the balancer's configuration stays right)
    <home>/nodes/index-<r>/      replica r: its chDB index, faust data, STOW outbox
    <home>/nodes/ingest-<n>/     ingest node n: its outbox, metrics; spools in hot/.incoming/

The hot tier (<home>/hot) and the quarantine are shared: every node stores and reads objects by
their content-addressed keys. Every index replica reads the whole log in its own consumer
group and builds its own full read model.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

from strata.common.settings import Settings

INDEX_PORTS = ("qr", "grpc", "dicomweb", "http")
INGEST_PORTS = ("dicom", "http")


@dataclass(frozen=True)
class Node:
    kind: str  # "index" or "ingest"
    number: int  # 1-based
    dir: Path
    ports: dict[str, int]

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.number}"


def enabled(settings: Settings) -> bool:
    """Several nodes of a kind, hence HAProxy on the public ports."""
    return settings.index_replicas > 1 or settings.ingest_nodes > 1


def ports_file(settings: Settings) -> Path:
    return settings.home / "nodes" / "ports.json"


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def nodes(settings: Settings, allocate: bool = False) -> list[Node]:
    """The configured nodes (index replicas first), with the ports recorded for them; with
    ``allocate``, free ports are chosen (and recorded) for nodes that have none yet."""
    f = ports_file(settings)
    known: dict[str, dict[str, int]] = json.loads(f.read_text()) if f.is_file() else {}
    out: list[Node] = []
    changed = False
    wanted: list[tuple[str, int, tuple[str, ...]]] = [
        ("index", settings.index_replicas, INDEX_PORTS),
        ("ingest", settings.ingest_nodes, INGEST_PORTS),
    ]
    for kind, count, names in wanted:
        for i in range(1, count + 1):
            name = f"{kind}-{i}"
            ports = known.get(name)
            if ports is None or set(ports) != set(names):
                if not allocate:
                    continue
                ports = {p: _free_port(settings.bind_host) for p in names}
                known[name] = ports
                changed = True
            out.append(Node(kind, i, settings.home / "nodes" / name, ports))
    if changed:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(known, indent=2, sort_keys=True))
    return out


def recorded(settings: Settings) -> list[Node]:
    """Every node that was ever given ports in this home (configured now or not)."""
    f = ports_file(settings)
    known: dict[str, dict[str, int]] = json.loads(f.read_text()) if f.is_file() else {}
    out = []
    for name, ports in sorted(known.items()):
        kind, _, number = name.rpartition("-")
        out.append(Node(kind, int(number), settings.home / "nodes" / name, ports))
    return out


def env(settings: Settings, node: Node) -> dict[str, str]:
    """The STRATA_* settings of one node's process: the stack's, with its own directory,
    ports, node name and (index) consumer group."""
    e = settings.to_env()
    e["STRATA_NODE_DIR"] = str(node.dir)
    e["STRATA_NODE_NAME"] = f"{settings.node_name}/{node.name}"
    e["STRATA_INDEX_REPLICAS"] = "1"
    e["STRATA_INGEST_NODES"] = "1"
    if node.kind == "index":
        e["STRATA_QR_PORT"] = str(node.ports["qr"])
        e["STRATA_GRPC_PORT"] = str(node.ports["grpc"])
        e["STRATA_DICOMWEB_PORT"] = str(node.ports["dicomweb"])
        e["STRATA_INDEX_HTTP_PORT"] = str(node.ports["http"])
        # its own group: its offsets go with its own chDB index (never the single node's)
        e["STRATA_INDEX_GROUP"] = f"{settings.index_group}-replica-{node.number}"
        e["STRATA_INDEX_DECISIONS"] = str(settings.index_decisions and node.number == 1)
    else:
        e["STRATA_INGEST_PORT"] = str(node.ports["dicom"])
        e["STRATA_INGEST_HTTP_PORT"] = str(node.ports["http"])
    return e
