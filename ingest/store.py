"""The store feature: turn a received object into a durable object plus a durable event.

Plain functions over two ports (the hot tier and the event publisher): no pynetdicom here, so
the contract can be tested without a network. The contract (DESIGN.md invariant 1):
success is returned only after the bytes are fsync'd in the tier AND the InstanceStored event
is acknowledged by Kafka (acks=all, idempotent producer). Any failure before that yields a
failure status and the sender keeps responsibility for the object.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from archive.hot import TIER as HOT
from archive.keys import instance_key
from common import dicom
from common.errors import Invalid, Unavailable
from common.events import envelope, timestamp
from ingest import statuses
from proto.strata.v1 import events_pb2 as pb

log = logging.getLogger(__name__)

REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class ObjectTier(Protocol):
    def put_file(self, key: str, src: Path) -> bool: ...


class Publisher(Protocol):
    def publish(self, topic: str, key: str, value: bytes) -> tuple[int, int]: ...


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


@dataclass(frozen=True)
class Outcome:
    status: int
    comment: str = ""
    event: pb.Envelope | None = None

    @property
    def ok(self) -> bool:
        return self.status == statuses.SUCCESS


@dataclass
class StoreService:
    tier: ObjectTier
    publisher: Publisher
    topic: str
    node: str

    def store(self, rx: Received) -> Outcome:
        try:
            ds = dicom.read_header(rx.path)
        except Invalid as exc:
            return Outcome(statuses.CANNOT_UNDERSTAND_UNDECODABLE, str(exc)[:64])

        uids = {k: dicom.text(ds, k) for k in REQUIRED_UIDS}
        missing = [k for k, v in uids.items() if not v]
        if missing:
            return Outcome(statuses.CANNOT_UNDERSTAND_MISSING_UID, f"missing {','.join(missing)}")
        invalid = [k for k, v in uids.items() if not dicom.is_valid_uid(v)]
        if invalid:
            return Outcome(statuses.CANNOT_UNDERSTAND_INVALID_UID, f"invalid {','.join(invalid)}")
        if uids["SOPClassUID"] != rx.sop_class_uid:
            return Outcome(
                statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOPClassUID differs from the request"
            )
        if uids["SOPInstanceUID"] != rx.sop_instance_uid:
            return Outcome(
                statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
                "SOPInstanceUID differs from the request",
            )

        size, sha = _digest(rx.path)
        key = instance_key(
            uids["StudyInstanceUID"], uids["SeriesInstanceUID"], uids["SOPInstanceUID"], sha
        )
        try:
            self.tier.put_file(key, rx.path)
        except Unavailable as exc:
            log.error("hot tier write failed for sop=%s: %s", rx.sop_instance_uid, exc)
            return Outcome(statuses.OUT_OF_RESOURCES_STORAGE, "storage unavailable")

        now = datetime.now(UTC)
        payload = pb.InstanceStored(
            sop_class_uid=uids["SOPClassUID"],
            sop_instance_uid=uids["SOPInstanceUID"],
            series_instance_uid=uids["SeriesInstanceUID"],
            study_instance_uid=uids["StudyInstanceUID"],
            patient=pb.PatientRef(
                patient_id=dicom.text(ds, "PatientID"),
                issuer_of_patient_id=dicom.text(ds, "IssuerOfPatientID"),
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
            header_json=dicom.header_json(ds),
            received_via=rx.via,
        )
        env = envelope(
            payload,
            study_uid=uids["StudyInstanceUID"],
            service="ingest",
            node=self.node,
            occurred_at=now,
        )
        try:
            self.publisher.publish(self.topic, uids["StudyInstanceUID"], env.SerializeToString())
        except Unavailable as exc:
            # The bytes are durable but unannounced: the sender gets a retryable failure and will
            # send again; the retry lands on the same content-addressed key (no second copy).
            log.error("event log unavailable for sop=%s: %s", rx.sop_instance_uid, exc)
            return Outcome(statuses.OUT_OF_RESOURCES_EVENT_LOG, "event log unavailable")
        return Outcome(statuses.SUCCESS, event=env)


def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()
