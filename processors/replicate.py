"""The object copier of a following site: objects follow the log (docs/dr.md).

Reads this site's study topic (read_committed), where MirrorMaker 2 writes the peer's events.
For each InstanceStored whose object is in the hot tier and not yet here, it fetches the bytes
from the peer's gRPC RetrieveInstances, checks the SHA-256 recorded at ingest, writes them into
this site's hot tier under the same key (fsync'd, never overwriting) and records an
InstanceReplicated event at this site. The consumer offset is committed only after the copy (or
a decision not to copy) is durable: a crash re-copies, and a copy is idempotent (same key, same
bytes: the hot tier's link() keeps the first).
"""

from __future__ import annotations

import hashlib
import logging
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from archive.hot import HotTier
from common.errors import NotFound, Unavailable
from common.events import decode, envelope
from common.settings import Settings
from proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)


@dataclass
class CopyResult:
    copied: int = 0
    present: int = 0
    skipped: int = 0


def fetch(peer_grpc: str, st: pb.InstanceStored, dest: Path, timeout: float = 60.0) -> str:
    """Stream the object of ``st`` from the peer into ``dest``; returns its SHA-256."""
    import grpc

    from proto.strata.v1 import query_pb2 as q
    from proto.strata.v1 import query_pb2_grpc as q_grpc

    h = hashlib.sha256()
    with grpc.insecure_channel(peer_grpc) as ch:
        stub = q_grpc.QueryServiceStub(ch)
        req = q.RetrieveRequest(
            study_instance_uid=st.study_instance_uid,
            series_instance_uid=st.series_instance_uid,
            sop_instance_uids=[st.sop_instance_uid],
        )
        try:
            with open(dest, "wb") as f:
                for chunk in stub.RetrieveInstances(req, timeout=timeout):
                    if chunk.sop_instance_uid != st.sop_instance_uid:
                        continue
                    f.write(chunk.data)
                    h.update(chunk.data)
        except grpc.RpcError as exc:
            code = exc.code()  # type: ignore[attr-defined]
            if code == grpc.StatusCode.NOT_FOUND:
                raise NotFound(f"peer has no object for {st.sop_instance_uid}") from exc
            raise Unavailable(f"peer {peer_grpc}: {code.name}") from exc
    return h.hexdigest()


class Copier:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hot = HotTier(settings.hot_dir, "dr-copier")
        self.stop_event = threading.Event()
        self.result = CopyResult()

    def copy_one(self, env: pb.Envelope) -> bool:
        """Copy the object of one InstanceStored event; True when it is here (now or before)."""
        st = env.instance_stored
        if st.location.tier != "hot":
            self.result.skipped += 1  # cold objects are shared through S3 (docs/dr.md)
            return True
        key = st.location.key
        if self.hot.exists(key):
            self.result.present += 1
            return True
        tmp = self.hot.incoming / f"{uuid.uuid4().hex}.part"
        try:
            digest = fetch(self.settings.dr_peer_grpc, st, tmp)
            if digest != st.sha256:
                raise Unavailable(
                    f"copy of {st.sop_instance_uid} has sha256 {digest[:12]}, not the recorded "
                    f"{st.sha256[:12]}: not stored"
                )
            self.hot.put_file(key, tmp)
        finally:
            tmp.unlink(missing_ok=True)
        self.result.copied += 1
        self._record(env, st)
        return True

    def _record(self, env: pb.Envelope, st: pb.InstanceStored) -> None:
        from confluent_kafka import Producer

        rep = pb.InstanceReplicated(
            sop_instance_uid=st.sop_instance_uid,
            series_instance_uid=st.series_instance_uid,
            sha256=st.sha256,
            size_bytes=st.size_bytes,
            location=pb.StorageLocation(tier="hot", key=st.location.key),
            source_site=self.settings.dr_peer_site,
            source_event_id=env.event_id,
            site=self.settings.dr_site,
        )
        out = envelope(
            rep,
            study_uid=st.study_instance_uid,
            service="dr-copier",
            node=self.settings.node_name,
            occurred_at=datetime.now(UTC),
        )
        errors: list[str] = []
        p = self._producer or Producer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "enable.idempotence": True,
                "acks": "all",
            }
        )
        self._producer = p
        p.produce(
            self.settings.study_topic,
            key=st.study_instance_uid.encode(),
            value=out.SerializeToString(),
            on_delivery=lambda err, _m: errors.append(str(err)) if err else None,
        )
        if p.flush(30) or errors:
            raise Unavailable(f"InstanceReplicated not confirmed: {errors[:1] or 'timeout'}")

    _producer: Any = None

    def run(self) -> None:
        from confluent_kafka import Consumer

        c = Consumer(
            {
                "bootstrap.servers": self.settings.kafka_bootstrap,
                "group.id": self.settings.dr_copy_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
            }
        )
        c.subscribe([self.settings.study_topic])
        try:
            while not self.stop_event.is_set():
                m = c.poll(0.5)
                if m is None or m.error():
                    continue
                try:
                    env = decode(m.value() or b"")
                except Exception:
                    c.commit(message=m, asynchronous=False)  # not ours to judge: the index does
                    continue
                if env.WhichOneof("payload") == "instance_stored":
                    backoff = 0.5
                    while not self.stop_event.is_set():
                        try:
                            self.copy_one(env)
                            break
                        except NotFound as exc:
                            log.warning("not copied (the peer has no bytes): %s", exc)
                            self.result.skipped += 1
                            break
                        except Unavailable as exc:
                            log.warning("copy failed, retrying: %s", exc)
                            self.stop_event.wait(backoff)
                            backoff = min(backoff * 2, 10.0)
                    if self.stop_event.is_set():
                        break
                c.commit(message=m, asynchronous=False)
        finally:
            c.close()


def serve(settings: Settings) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if not settings.dr_peer_grpc:
        raise Unavailable("STRATA_DR_PEER_GRPC is not set: nowhere to copy objects from")
    copier = Copier(settings)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: copier.stop_event.set())
    log.info("copying objects from %s (%s)", settings.dr_peer_site, settings.dr_peer_grpc)
    t0 = time.monotonic()
    copier.run()
    log.info("stopped after %.0fs: %s", time.monotonic() - t0, copier.result)
