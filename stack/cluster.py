"""The Kafka cluster as ``strata status`` shows it: brokers, and per partition its leader,
replicas and in-sync replicas (ISR), from the cluster's own metadata (AdminClient)."""

from __future__ import annotations

from dataclasses import dataclass

from strata.common.settings import Settings


@dataclass(frozen=True)
class PartitionState:
    topic: str
    partition: int
    leader: int  # -1: no leader (the partition is offline)
    replicas: tuple[int, ...]
    isr: tuple[int, ...]

    @property
    def state(self) -> str:
        if self.leader < 0:
            return "OFFLINE"
        if len(self.isr) < len(self.replicas):
            return "under-replicated"
        return "ok"


@dataclass(frozen=True)
class ClusterState:
    brokers: dict[int, str]  # node id -> host:port of the brokers the cluster has registered
    controller: int
    partitions: list[PartitionState]


def cluster_state(settings: Settings, timeout: float = 5.0) -> ClusterState | None:
    """The cluster's view of itself, or None when no broker answers."""
    from strata.common import kafka

    admin = kafka.admin(settings, "cluster-state")
    try:
        md = admin.list_topics(timeout=timeout)
    except Exception:
        return None
    parts = [
        PartitionState(name, p.id, p.leader, tuple(p.replicas), tuple(sorted(p.isrs)))
        for name, t in sorted(md.topics.items())
        if name in (settings.study_topic, settings.quarantine_topic)
        for p in sorted(t.partitions.values(), key=lambda p: p.id)
    ]
    brokers = {b.id: f"{b.host}:{b.port}" for b in md.brokers.values()}
    return ClusterState(brokers, md.controller_id, parts)


def broker_rows(settings: Settings, state: ClusterState) -> list[list[object]]:
    """One row per configured node: up (listening and registered), DOWN (not listening) or
    fenced (listening, not registered); how many partitions it leads, in how many ISRs."""
    from strata.stack.kafka import broker

    by_addr = {addr: nid for nid, addr in state.brokers.items()}
    rows: list[list[object]] = []
    for n in broker.nodes(settings):
        nid = by_addr.get(f"{n.host}:{n.port}")
        leads = sum(1 for p in state.partitions if nid is not None and p.leader == nid)
        in_isr = sum(1 for p in state.partitions if nid is not None and nid in p.isr)
        # DOWN: nothing listens (the cluster itself fences a dead node only after its session
        # timeout); fenced: listening but not registered (starting, or cut off)
        st = "up" if nid is not None else "fenced"
        if not _reachable(n.host, n.port):
            st = "DOWN"
        rows.append(
            [
                n.node_id,
                f"{n.host}:{n.port}",
                st,
                leads,
                f"{in_isr}/{len(state.partitions)}",
            ]
        )
    return rows


def _reachable(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def partition_rows(state: ClusterState) -> list[list[object]]:
    def ids(xs: tuple[int, ...]) -> str:
        return ",".join(map(str, xs)) or "-"

    return [
        [
            p.topic,
            p.partition,
            p.leader if p.leader >= 0 else "none",
            ids(p.replicas),
            ids(p.isr),
            p.state,
        ]
        for p in state.partitions
    ]
