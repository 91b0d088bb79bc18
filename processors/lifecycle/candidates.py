"""Selection: the instances with a lifecycle action due, read from the index through the index
port (``Index.lifecycle_candidates``, a prefilter per rule) and decided by the pure
``archive.lifecycle.decide``. ``Candidate`` also rebuilds the InstanceStored its row came from
(the events embed it)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from strata.archive.lifecycle import Decision, InstanceFacts, Policy, decide
from strata.common.events import timestamp
from strata.processors.index.port import CANDIDATE_COLUMNS, Index
from strata.proto.strata.v1 import events_pb2 as pb

_EPOCH = datetime.fromtimestamp(0, UTC)


# Columns read for a candidate: the facts the policy needs and what rebuilds its InstanceStored.
_COLS = CANDIDATE_COLUMNS


@dataclass(frozen=True)
class Candidate:
    study_uid: str
    series_uid: str
    sop_uid: str
    sha256: str
    size_bytes: int
    tier: str
    storage_key: str
    modality: str
    calling_ae_title: str
    received_at: datetime
    log_offset: int
    sop_class_uid: str
    patient_id: str
    issuer_of_patient_id: str
    transfer_syntax_uid: str
    called_ae_title: str
    ingest_node: str
    header_json: str
    last_accessed_at: datetime | None = None
    held: bool = False

    def facts(self) -> InstanceFacts:
        return InstanceFacts(
            tier=self.tier,
            modality=self.modality,
            calling_ae_title=self.calling_ae_title,
            size_bytes=self.size_bytes,
            received_at=self.received_at,
            last_accessed_at=self.last_accessed_at,
            held=self.held,
        )

    def instance_stored(self, supersedes: str = "") -> pb.InstanceStored:
        """The InstanceStored facts the index row was derived from (same columns again)."""
        e = pb.InstanceStored(
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_uid,
            series_instance_uid=self.series_uid,
            study_instance_uid=self.study_uid,
            patient=pb.PatientRef(
                patient_id=self.patient_id, issuer_of_patient_id=self.issuer_of_patient_id
            ),
            modality=self.modality,
            transfer_syntax_uid=self.transfer_syntax_uid,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            location=pb.StorageLocation(tier=self.tier, key=self.storage_key),
            calling_ae_title=self.calling_ae_title,
            called_ae_title=self.called_ae_title,
            ingest_node=self.ingest_node,
            header_json=self.header_json,
            supersedes_sha256=supersedes,
        )
        if self.received_at > _EPOCH:
            e.received_at.CopyFrom(timestamp(self.received_at))
        return e


def candidates(
    index: Index, policy: Policy, now: datetime, skip: set[str], limit: int
) -> list[tuple[Candidate, Decision]]:
    """Instances with an action due at ``now`` (at most ``limit``), oldest arrivals first."""
    rows = index.lifecycle_candidates(policy, now, sorted(skip), limit)
    out = []
    n = len(_COLS)
    for r in rows:
        accessed = _aware(r[n]) if r[n] else None
        c = _candidate(r, accessed if accessed and accessed > _EPOCH else None, bool(r[n + 1]))
        d = decide(policy, c.facts(), now)  # the authoritative decision (SQL only prefilters)
        if d is not None:
            out.append((c, d))
    return out


def _candidate(
    r: tuple[Any, ...], last_accessed_at: datetime | None = None, held: bool = False
) -> Candidate:
    """A Candidate from a row of the _COLS columns."""
    return Candidate(
        study_uid=str(r[0]),
        series_uid=str(r[1]),
        sop_uid=str(r[2]),
        sha256=str(r[3]),
        size_bytes=int(r[4]),
        tier=str(r[5]),
        storage_key=str(r[6]),
        modality=str(r[7]),
        calling_ae_title=str(r[8]),
        received_at=_aware(r[9]),
        log_offset=int(r[10]),
        sop_class_uid=str(r[11]),
        patient_id=str(r[12]),
        issuer_of_patient_id=str(r[13]),
        transfer_syntax_uid=str(r[14]),
        called_ae_title=str(r[15]),
        ingest_node=str(r[16]),
        header_json=str(r[17]),
        last_accessed_at=last_accessed_at,
        held=held,
    )


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


# ----------------------------------------------------------------------------- the processor
