"""The store feature: turn a received object into a durable object plus a durable event.

Plain functions over ports (the hot tier, the outbox, the quarantine): no pynetdicom here, so
the contract can be tested without a network. The contract (docs/design.md, section 1.1):
success is returned only after the bytes are fsync'd in the tier AND the InstanceStored event
is durable in the fsync'd outbox, which the relay publishes to Kafka in order. Any failure
before that yields a failure status and the sender keeps responsibility for the object.

Arrivals: same SOP Instance UID and same bytes as an earlier arrival whose object is still
there (hot, or cold when configured) = idempotent duplicate (success, nothing new); if that
object is gone (deleted at the end of retention, a lost disk) the arrival is stored again, with
a new event. Same UID, other bytes = a new version (new object key, new event that names the
superseded sha256). Refused objects go to quarantine with an InstanceQuarantined event.

Events are bounded (one must fit in a Kafka message): header values over
``Limits.event_element_max_bytes`` and the largest ones beyond ``event_header_max_bytes`` are
left out of the event's header and marked as bulk data (common/dicom.py ``header_json``).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pydicom import Dataset

from strata.archive.hot import TIER as HOT
from strata.archive.keys import instance_key
from strata.common import dicom
from strata.common.errors import Invalid, Unavailable
from strata.common.events import envelope, timestamp
from strata.ingest import metrics, statuses
from strata.ingest.config import AEConfig
from strata.ingest.quarantine import Quarantine
from strata.proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class ObjectTier(Protocol):
    def put_file(self, key: str, src: Path) -> bool: ...

    def size(self, key: str) -> int | None: ...


class ReadTier(Protocol):
    """A tier objects may have moved to (cold): asked only whether an object is there."""

    def size(self, key: str) -> int | None: ...


class EventLog(Protocol):
    """The outbox (ingest.outbox.Outbox) as the store feature sees it."""

    def append(
        self,
        *,
        event_id: str,
        topic: str,
        key: str,
        value: bytes,
        sop_uid: str | None = None,
        sha256: str | None = None,
        again_after: str = "",
    ) -> object: ...

    def latest_arrival(self, sop_uid: str) -> tuple[str, str] | None: ...

    def depth(self) -> int: ...

    def oldest_pending_age(self) -> float: ...


@dataclass(frozen=True)
class Received:
    """An object as received, already spooled to ``path`` (a Part 10 file)."""

    path: Path
    sop_class_uid: str  # from the command (Affected SOP Class UID)
    sop_instance_uid: str  # from the command (Affected SOP Instance UID)
    transfer_syntax_uid: str
    calling_ae: str
    called_ae: str
    peer_address: str
    via: str = "store"
    # Size and sha256 of the file when the receiver computed them on the way in (else read).
    size: int = -1
    sha256: str = ""


@dataclass(frozen=True)
class Outcome:
    status: int
    comment: str = ""
    event: pb.Envelope | None = None
    duplicate: bool = False
    reason: str = ""  # machine-readable refusal reason (metrics label), "" on success
    event_id: str = ""  # the arrival's InstanceStored event (a duplicate's: the earlier one)

    @property
    def ok(self) -> bool:
        return self.status == statuses.SUCCESS


@dataclass(frozen=True)
class Limits:
    max_object_bytes: int = 4 * 1024**3
    refuse_when_log_down: bool = False  # outbox mode 'refuse'
    refuse_after_s: float = 5.0
    max_outbox_depth: int = 1_000_000
    event_element_max_bytes: int = 64 * 1024
    event_header_max_bytes: int = 512 * 1024
    max_inflated_bytes: int = 256 * 1024**2


class Refused(Exception):
    def __init__(self, status: int, reason: str, comment: str) -> None:
        super().__init__(comment)
        self.status, self.reason, self.comment = status, reason, comment


@dataclass
class StoreService:
    tier: ObjectTier
    outbox: EventLog
    topic: str
    quarantine_topic: str
    quarantine_dir: Path
    node: str
    aes: AEConfig
    limits: Limits
    cold: ReadTier | None = None  # where the lifecycle moves objects, when configured
    quarantine: Quarantine | None = None  # None: no quota (a Quarantine of quarantine_dir)
    fence: Any = None  # geo-redundancy (cli.dr.Fence): .reason() != "" = not the primary
    sync: Any = None  # synchronous geo-redundancy (ingest.peersync.Gate); None = async
    _sampled_at: float = field(default=-1e9, init=False, repr=False)
    _depth: int = field(default=0, init=False, repr=False)
    _oldest: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.quarantine is None:
            self.quarantine = Quarantine(self.quarantine_dir, max_bytes=1 << 62)

    def store(self, rx: Received) -> Outcome:
        if self.fence is not None and (why := self.fence.reason()):
            return Outcome(statuses.OUT_OF_RESOURCES_STORAGE, why, reason="site-fenced")
        try:
            self._check_log_accepting()
        except Refused as r:
            return Outcome(r.status, r.comment, reason=r.reason)
        size, sha = (rx.size, rx.sha256) if rx.sha256 else _digest(rx.path)
        try:
            ds, uids = self._validate(rx, size)
        except Refused as r:
            return self._quarantine(rx, r, size, sha)
        try:
            outcome = self._accept(rx, ds, uids, size, sha)
        except Unavailable as exc:
            log.error("store of sop=%s failed: %s", rx.sop_instance_uid, exc)
            return Outcome(
                statuses.OUT_OF_RESOURCES_STORAGE,
                "storage unavailable",
                reason="storage-unavailable",
            )
        if self.sync is not None and outcome.ok:
            return self._await_peer(outcome)
        return outcome

    def _await_peer(self, outcome: Outcome) -> Outcome:
        """Sync mode: the success stands only once the peer site confirmed the arrival (its
        log holds the InstanceReplicated of the event: bytes verified and stored there). A
        duplicate waits for its earlier event, so a retry after a refusal below is
        acknowledged only once the peer has it. Nothing is held while waiting (the outbox
        transaction is committed). Not confirmed in time: the instance stays durable here
        (it is not undone; the copier still copies it), the sender gets A730 and retries."""
        if self.sync.wait(outcome.event_id):
            return outcome
        t = self.sync.timeout
        # counted here, the one place both C-STORE (ingest/scp.py) and STOW-RS (ingest/stow.py,
        # in the index node's process: its /metrics) come through
        metrics.DR_UNCONFIRMED.inc()
        log.warning(
            "sync: %s did not confirm event %s within %gs: answered A730 (stored here)",
            self.sync.peer_site,
            outcome.event_id,
            t,
        )
        return Outcome(
            statuses.OUT_OF_RESOURCES_PEER_UNCONFIRMED,
            f"second site {self.sync.peer_site} did not confirm in {t:g}s",
            event=outcome.event,
            duplicate=outcome.duplicate,
            reason="peer-unconfirmed",
            event_id=outcome.event_id,
        )

    # ------------------------------------------------------------------ steps
    def _check_log_accepting(self) -> None:
        """Refuse (retryably) when the spool is full or, in 'refuse' mode, Kafka is behind.
        The outbox state is sampled at most every 100 ms: two queries per image add up."""
        now = time.monotonic()
        if now - self._sampled_at > 0.1:
            self._depth = self.outbox.depth()
            self._oldest = (
                self.outbox.oldest_pending_age() if self.limits.refuse_when_log_down else 0.0
            )
            self._sampled_at = now
        if self._depth >= self.limits.max_outbox_depth:
            raise Refused(
                statuses.OUT_OF_RESOURCES_EVENT_LOG,
                "outbox-full",
                "event log unavailable and local spool full",
            )
        if self.limits.refuse_when_log_down and self._oldest > self.limits.refuse_after_s:
            raise Refused(
                statuses.OUT_OF_RESOURCES_EVENT_LOG,
                "event-log-unavailable",
                "event log unavailable",
            )

    def _validate(self, rx: Received, size: int) -> tuple[Dataset, dict[str, str]]:
        if size > self.limits.max_object_bytes:
            raise Refused(
                statuses.OUT_OF_RESOURCES_OBJECT_TOO_LARGE,
                "too-large",
                f"object of {size} bytes exceeds the limit",
            )
        try:
            dicom.check_structure(rx.path, self.limits.max_inflated_bytes)
            ds = dicom.read_header(rx.path)
        except dicom.InflateLimit as exc:
            raise Refused(
                statuses.OUT_OF_RESOURCES_INFLATED_TOO_LARGE,
                "inflate-limit",
                f"deflated dataset inflates beyond {self.limits.max_inflated_bytes} bytes",
            ) from exc
        except Invalid as exc:
            raise Refused(
                statuses.CANNOT_UNDERSTAND_UNDECODABLE, "undecodable", str(exc)[:64]
            ) from exc
        uids = {k: dicom.text(ds, k) for k in REQUIRED_UIDS}
        missing = [k for k, v in uids.items() if not v]
        if missing:
            raise Refused(
                statuses.CANNOT_UNDERSTAND_MISSING_UID,
                "missing-uid",
                f"missing {','.join(missing)}",
            )
        invalid = [k for k, v in uids.items() if not dicom.is_valid_uid(v)]
        if invalid:
            raise Refused(
                statuses.CANNOT_UNDERSTAND_INVALID_UID,
                "invalid-uid",
                f"invalid {','.join(invalid)}",
            )
        if uids["SOPClassUID"] != rx.sop_class_uid:
            raise Refused(
                statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "sop-class-mismatch",
                "SOPClassUID differs from the request",
            )
        if uids["SOPInstanceUID"] != rx.sop_instance_uid:
            raise Refused(
                statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "sop-instance-mismatch",
                "SOPInstanceUID differs from the request",
            )
        return ds, uids

    def _accept(
        self, rx: Received, ds: Dataset, uids: dict[str, str], size: int, sha: str
    ) -> Outcome:
        key = instance_key(
            uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"], sha
        )
        # Everything the event needs is read from the dataset BEFORE the file moves: large
        # values are read lazily from the spool file, which put_file takes away.
        latest = self.outbox.latest_arrival(uids["SOPInstanceUID"])
        previous = latest[0] if latest else None
        again_after = ""
        if previous == sha:
            # The same bytes as this instance's latest arrival, which was recorded only after
            # its object was durable: an idempotent duplicate while that object is still there.
            # Nothing is written again (a second copy in hot of an object the lifecycle has
            # since moved to cold would be an orphan nobody deletes).
            assert latest is not None
            if self._object_present(key, size):
                rx.path.unlink(missing_ok=True)
                return Outcome(statuses.SUCCESS, duplicate=True, event_id=latest[1])
            # Gone from every tier (end of retention, a lost disk): a new arrival.
            again_after = latest[1]
            log.warning(
                "sop=%s: the object of its recorded arrival is gone; storing it again",
                uids["SOPInstanceUID"],
            )
        ae = self.aes.lookup(rx.calling_ae)
        now = datetime.now(UTC)
        issuer = dicom.text(ds, "IssuerOfPatientID") or ae.issuer_of_patient_id
        payload = pb.InstanceStored(
            sop_class_uid=uids["SOPClassUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            patient=pb.PatientRef(
                patient_id=normalize_id(dicom.text(ds, "PatientID")),
                issuer_of_patient_id=normalize_id(issuer),
            ),
            modality=dicom.text(ds, "Modality"),
            transfer_syntax_uid=rx.transfer_syntax_uid,
            size_bytes=size,
            sha256=sha,
            location=pb.StorageLocation(tier=HOT, key=key),
            calling_ae_title=rx.calling_ae,
            called_ae_title=rx.called_ae,
            peer_address=rx.peer_address,
            ingest_node=self.node,
            received_at=timestamp(now),
            # the original header, as received, bounded (values too large marked as bulk data)
            header_json=dicom.header_json(
                ds, self.limits.event_element_max_bytes, self.limits.event_header_max_bytes
            ),
            received_via=rx.via,
            supersedes_sha256=previous if previous and previous != sha else "",
            calling_ae_site=ae.site,
            calling_ae_institution=ae.institution,
        )
        env = envelope(
            payload,
            study_uid=uids["StudyInstanceUID"],
            service="ingest",
            node=self.node,
            occurred_at=now,
        )
        # 1. bytes durable (content-addressed key: a retransmission lands on the same key)
        created = self.tier.put_file(key, rx.path)
        if again_after and not created:
            # Something is at the key but not with the recorded size: a damaged object, which
            # the tier never overwrites. Retryable once `strata storage verify --repair` ran.
            log.error("sop=%s: the object at its key is damaged; not stored", rx.sop_instance_uid)
            return Outcome(
                statuses.OUT_OF_RESOURCES_STORAGE,
                "stored copy damaged, repair pending",
                reason="damaged-object",
            )
        # 2. event durable (fsync'd outbox; deduplicated on (sop, sha256))
        appended = self.outbox.append(
            event_id=env.event_id,
            topic=self.topic,
            key=uids["StudyInstanceUID"],
            value=env.SerializeToString(),
            sop_uid=uids["SOPInstanceUID"],
            sha256=sha,
            again_after=again_after,
        )
        if not getattr(appended, "new", True):
            return Outcome(
                statuses.SUCCESS,
                duplicate=True,
                event_id=getattr(appended, "event_id", env.event_id),
            )
        return Outcome(statuses.SUCCESS, event=env, event_id=env.event_id)

    def _object_present(self, key: str, size: int) -> bool:
        """Is the object of a recorded arrival still there, in some tier?

        Existence and size at its key, not a re-hash: the key holds the sha256 recorded at
        ingest and a key is never rewritten with other bytes (hot: link-if-absent; cold: put
        only after the copy was verified), so what is at the key with that size is those bytes
        unless the medium corrupted them, which ``strata storage verify`` finds and repairs.
        Re-hashing would read the whole object again for every retransmission. A cold tier
        that cannot answer raises Unavailable (a retryable failure): better than a copy in hot
        of an object that is in cold."""
        if self.tier.size(key) == size:
            return True
        return self.cold is not None and self.cold.size(key) == size

    def _quarantine(self, rx: Received, r: Refused, size: int, sha: str) -> Outcome:
        """Keep the refused bytes (within the quota) and record why; the sender gets the
        precise status. Over the quota the record is still written, saying the bytes were not
        kept."""
        key = f"{sha}.dcm"
        assert self.quarantine is not None
        try:
            dropped = self.quarantine.keep(rx.path, key, size)
        except OSError as exc:
            log.error("quarantine of a refused object failed: %s", exc)
            dropped = f"quarantine-write-failed: {exc.strerror}"
        try:
            q = pb.InstanceQuarantined(
                reason=r.reason,
                detail=r.comment,
                dimse_status=r.status,
                sop_class_uid=rx.sop_class_uid,
                sop_instance_uid=rx.sop_instance_uid,
                size_bytes=size,
                sha256=sha,
                location=None if dropped else pb.StorageLocation(tier="quarantine", key=key),
                calling_ae_title=rx.calling_ae,
                called_ae_title=rx.called_ae,
                peer_address=rx.peer_address,
                ingest_node=self.node,
                received_at=timestamp(datetime.now(UTC)),
                bytes_dropped=bool(dropped),
                bytes_dropped_reason=dropped,
            )
            env = envelope(q, study_uid="", service="ingest", node=self.node)
            self.outbox.append(
                event_id=env.event_id,
                topic=self.quarantine_topic,
                key=rx.sop_instance_uid or str(uuid.uuid4()),
                value=env.SerializeToString(),
            )
        except (OSError, Unavailable) as exc:
            log.error("quarantine record of a refused object failed: %s", exc)
        if dropped:
            log.warning(
                "refused sop=%s: bytes not kept (%s); the record is", rx.sop_instance_uid, dropped
            )
        return Outcome(r.status, r.comment, reason=r.reason)

    def record_refused(self, rx: Received, status: int, reason: str, comment: str) -> None:
        """An InstanceQuarantined for an arrival refused while it was received, whose bytes
        were not kept (e.g. over the size limit: ``rx.size`` is what had arrived by then)."""
        try:
            q = pb.InstanceQuarantined(
                reason=reason,
                detail=comment,
                dimse_status=status,
                sop_class_uid=rx.sop_class_uid,
                sop_instance_uid=rx.sop_instance_uid,
                size_bytes=max(rx.size, 0),
                calling_ae_title=rx.calling_ae,
                called_ae_title=rx.called_ae,
                peer_address=rx.peer_address,
                ingest_node=self.node,
                received_at=timestamp(datetime.now(UTC)),
                bytes_dropped=True,
                bytes_dropped_reason="refused while received",
            )
            env = envelope(q, study_uid="", service="ingest", node=self.node)
            self.outbox.append(
                event_id=env.event_id,
                topic=self.quarantine_topic,
                key=rx.sop_instance_uid or str(uuid.uuid4()),
                value=env.SerializeToString(),
            )
        except (OSError, Unavailable) as exc:
            log.error("quarantine record of a refused arrival failed: %s", exc)


def normalize_id(value: str) -> str:
    """Patient ID / issuer as an identity key: surrounding blanks and NULs removed (PS3.5 pads
    LO values with spaces; equipment sometimes with NULs). Case is kept: IDs are opaque."""
    return value.strip(" \0\t")


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
