import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Producer(_message.Message):
    __slots__ = ("service", "node", "version")
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    service: str
    node: str
    version: str
    def __init__(self, service: _Optional[str] = ..., node: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class Envelope(_message.Message):
    __slots__ = ("event_id", "event_type", "schema_version", "occurred_at", "producer", "study_instance_uid", "instance_stored", "instance_quarantined", "study_stable", "route_decided", "route_attempted", "route_delivered", "route_dead_lettered", "route_redriven", "tier_transitioned", "instance_deleted", "legal_hold_placed", "legal_hold_released", "object_repaired", "study_accessed", "instance_replicated", "site_epoch", "audit_event")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_STORED_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    STUDY_STABLE_FIELD_NUMBER: _ClassVar[int]
    ROUTE_DECIDED_FIELD_NUMBER: _ClassVar[int]
    ROUTE_ATTEMPTED_FIELD_NUMBER: _ClassVar[int]
    ROUTE_DELIVERED_FIELD_NUMBER: _ClassVar[int]
    ROUTE_DEAD_LETTERED_FIELD_NUMBER: _ClassVar[int]
    ROUTE_REDRIVEN_FIELD_NUMBER: _ClassVar[int]
    TIER_TRANSITIONED_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_DELETED_FIELD_NUMBER: _ClassVar[int]
    LEGAL_HOLD_PLACED_FIELD_NUMBER: _ClassVar[int]
    LEGAL_HOLD_RELEASED_FIELD_NUMBER: _ClassVar[int]
    OBJECT_REPAIRED_FIELD_NUMBER: _ClassVar[int]
    STUDY_ACCESSED_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_REPLICATED_FIELD_NUMBER: _ClassVar[int]
    SITE_EPOCH_FIELD_NUMBER: _ClassVar[int]
    AUDIT_EVENT_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    schema_version: int
    occurred_at: _timestamp_pb2.Timestamp
    producer: Producer
    study_instance_uid: str
    instance_stored: InstanceStored
    instance_quarantined: InstanceQuarantined
    study_stable: StudyStable
    route_decided: RouteDecided
    route_attempted: RouteAttempted
    route_delivered: RouteDelivered
    route_dead_lettered: RouteDeadLettered
    route_redriven: RouteRedriven
    tier_transitioned: TierTransitioned
    instance_deleted: InstanceDeleted
    legal_hold_placed: LegalHoldPlaced
    legal_hold_released: LegalHoldReleased
    object_repaired: ObjectRepaired
    study_accessed: StudyAccessed
    instance_replicated: InstanceReplicated
    site_epoch: SiteEpoch
    audit_event: AuditEvent
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., schema_version: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer: _Optional[_Union[Producer, _Mapping]] = ..., study_instance_uid: _Optional[str] = ..., instance_stored: _Optional[_Union[InstanceStored, _Mapping]] = ..., instance_quarantined: _Optional[_Union[InstanceQuarantined, _Mapping]] = ..., study_stable: _Optional[_Union[StudyStable, _Mapping]] = ..., route_decided: _Optional[_Union[RouteDecided, _Mapping]] = ..., route_attempted: _Optional[_Union[RouteAttempted, _Mapping]] = ..., route_delivered: _Optional[_Union[RouteDelivered, _Mapping]] = ..., route_dead_lettered: _Optional[_Union[RouteDeadLettered, _Mapping]] = ..., route_redriven: _Optional[_Union[RouteRedriven, _Mapping]] = ..., tier_transitioned: _Optional[_Union[TierTransitioned, _Mapping]] = ..., instance_deleted: _Optional[_Union[InstanceDeleted, _Mapping]] = ..., legal_hold_placed: _Optional[_Union[LegalHoldPlaced, _Mapping]] = ..., legal_hold_released: _Optional[_Union[LegalHoldReleased, _Mapping]] = ..., object_repaired: _Optional[_Union[ObjectRepaired, _Mapping]] = ..., study_accessed: _Optional[_Union[StudyAccessed, _Mapping]] = ..., instance_replicated: _Optional[_Union[InstanceReplicated, _Mapping]] = ..., site_epoch: _Optional[_Union[SiteEpoch, _Mapping]] = ..., audit_event: _Optional[_Union[AuditEvent, _Mapping]] = ...) -> None: ...

class StorageLocation(_message.Message):
    __slots__ = ("tier", "key")
    TIER_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    tier: str
    key: str
    def __init__(self, tier: _Optional[str] = ..., key: _Optional[str] = ...) -> None: ...

class PatientRef(_message.Message):
    __slots__ = ("patient_id", "issuer_of_patient_id")
    PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ISSUER_OF_PATIENT_ID_FIELD_NUMBER: _ClassVar[int]
    patient_id: str
    issuer_of_patient_id: str
    def __init__(self, patient_id: _Optional[str] = ..., issuer_of_patient_id: _Optional[str] = ...) -> None: ...

class InstanceStored(_message.Message):
    __slots__ = ("sop_class_uid", "sop_instance_uid", "series_instance_uid", "study_instance_uid", "patient", "modality", "transfer_syntax_uid", "size_bytes", "sha256", "location", "calling_ae_title", "called_ae_title", "peer_address", "ingest_node", "received_at", "header_json", "received_via", "supersedes_sha256", "calling_ae_site", "calling_ae_institution")
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    PATIENT_FIELD_NUMBER: _ClassVar[int]
    MODALITY_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_UID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    CALLED_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INGEST_NODE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    HEADER_JSON_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_VIA_FIELD_NUMBER: _ClassVar[int]
    SUPERSEDES_SHA256_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_SITE_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_INSTITUTION_FIELD_NUMBER: _ClassVar[int]
    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    patient: PatientRef
    modality: str
    transfer_syntax_uid: str
    size_bytes: int
    sha256: str
    location: StorageLocation
    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    ingest_node: str
    received_at: _timestamp_pb2.Timestamp
    header_json: str
    received_via: str
    supersedes_sha256: str
    calling_ae_site: str
    calling_ae_institution: str
    def __init__(self, sop_class_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., patient: _Optional[_Union[PatientRef, _Mapping]] = ..., modality: _Optional[str] = ..., transfer_syntax_uid: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ..., calling_ae_title: _Optional[str] = ..., called_ae_title: _Optional[str] = ..., peer_address: _Optional[str] = ..., ingest_node: _Optional[str] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., header_json: _Optional[str] = ..., received_via: _Optional[str] = ..., supersedes_sha256: _Optional[str] = ..., calling_ae_site: _Optional[str] = ..., calling_ae_institution: _Optional[str] = ...) -> None: ...

class InstanceQuarantined(_message.Message):
    __slots__ = ("reason", "detail", "dimse_status", "sop_class_uid", "sop_instance_uid", "study_instance_uid", "size_bytes", "sha256", "location", "calling_ae_title", "called_ae_title", "peer_address", "ingest_node", "received_at", "series_instance_uid", "bytes_dropped", "bytes_dropped_reason")
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DIMSE_STATUS_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    CALLED_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    INGEST_NODE_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    BYTES_DROPPED_FIELD_NUMBER: _ClassVar[int]
    BYTES_DROPPED_REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    detail: str
    dimse_status: int
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    size_bytes: int
    sha256: str
    location: StorageLocation
    calling_ae_title: str
    called_ae_title: str
    peer_address: str
    ingest_node: str
    received_at: _timestamp_pb2.Timestamp
    series_instance_uid: str
    bytes_dropped: bool
    bytes_dropped_reason: str
    def __init__(self, reason: _Optional[str] = ..., detail: _Optional[str] = ..., dimse_status: _Optional[int] = ..., sop_class_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ..., calling_ae_title: _Optional[str] = ..., called_ae_title: _Optional[str] = ..., peer_address: _Optional[str] = ..., ingest_node: _Optional[str] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., series_instance_uid: _Optional[str] = ..., bytes_dropped: _Optional[bool] = ..., bytes_dropped_reason: _Optional[str] = ...) -> None: ...

class StudyStable(_message.Message):
    __slots__ = ("study_instance_uid", "through_partition", "through_offset", "quiet_seconds", "last_arrival_at", "through_event_id")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    THROUGH_PARTITION_FIELD_NUMBER: _ClassVar[int]
    THROUGH_OFFSET_FIELD_NUMBER: _ClassVar[int]
    QUIET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ARRIVAL_AT_FIELD_NUMBER: _ClassVar[int]
    THROUGH_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    through_partition: int
    through_offset: int
    quiet_seconds: int
    last_arrival_at: _timestamp_pb2.Timestamp
    through_event_id: str
    def __init__(self, study_instance_uid: _Optional[str] = ..., through_partition: _Optional[int] = ..., through_offset: _Optional[int] = ..., quiet_seconds: _Optional[int] = ..., last_arrival_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., through_event_id: _Optional[str] = ...) -> None: ...

class RoutedInstance(_message.Message):
    __slots__ = ("sop_instance_uid", "sop_class_uid", "series_instance_uid", "sha256", "transfer_syntax_uid", "size_bytes", "location")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_UID_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    sha256: str
    transfer_syntax_uid: str
    size_bytes: int
    location: StorageLocation
    def __init__(self, sop_instance_uid: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., sha256: _Optional[str] = ..., transfer_syntax_uid: _Optional[str] = ..., size_bytes: _Optional[int] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ...) -> None: ...

class RouteDecided(_message.Message):
    __slots__ = ("route_id", "matched", "rule", "destination", "trigger", "trigger_event_id", "trigger_partition", "trigger_offset", "transcode_to", "instances", "reason")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    MATCHED_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_PARTITION_FIELD_NUMBER: _ClassVar[int]
    TRIGGER_OFFSET_FIELD_NUMBER: _ClassVar[int]
    TRANSCODE_TO_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    matched: bool
    rule: str
    destination: str
    trigger: str
    trigger_event_id: str
    trigger_partition: int
    trigger_offset: int
    transcode_to: str
    instances: _containers.RepeatedCompositeFieldContainer[RoutedInstance]
    reason: str
    def __init__(self, route_id: _Optional[str] = ..., matched: _Optional[bool] = ..., rule: _Optional[str] = ..., destination: _Optional[str] = ..., trigger: _Optional[str] = ..., trigger_event_id: _Optional[str] = ..., trigger_partition: _Optional[int] = ..., trigger_offset: _Optional[int] = ..., transcode_to: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[RoutedInstance, _Mapping]]] = ..., reason: _Optional[str] = ...) -> None: ...

class RouteAttempted(_message.Message):
    __slots__ = ("route_id", "sop_instance_uid", "attempt", "destination", "ae_title", "address", "outcome", "dimse_status", "detail", "next_attempt_at", "transfer_syntax_uid")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DIMSE_STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_AT_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_UID_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    sop_instance_uid: str
    attempt: int
    destination: str
    ae_title: str
    address: str
    outcome: str
    dimse_status: int
    detail: str
    next_attempt_at: _timestamp_pb2.Timestamp
    transfer_syntax_uid: str
    def __init__(self, route_id: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., attempt: _Optional[int] = ..., destination: _Optional[str] = ..., ae_title: _Optional[str] = ..., address: _Optional[str] = ..., outcome: _Optional[str] = ..., dimse_status: _Optional[int] = ..., detail: _Optional[str] = ..., next_attempt_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., transfer_syntax_uid: _Optional[str] = ...) -> None: ...

class RouteDelivered(_message.Message):
    __slots__ = ("route_id", "destination", "instances", "attempts")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    destination: str
    instances: int
    attempts: int
    def __init__(self, route_id: _Optional[str] = ..., destination: _Optional[str] = ..., instances: _Optional[int] = ..., attempts: _Optional[int] = ...) -> None: ...

class RouteDeadLettered(_message.Message):
    __slots__ = ("route_id", "destination", "sop_instance_uids", "reason", "detail", "dimse_status", "attempts", "delivered")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UIDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    DIMSE_STATUS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    destination: str
    sop_instance_uids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    detail: str
    dimse_status: int
    attempts: int
    delivered: int
    def __init__(self, route_id: _Optional[str] = ..., destination: _Optional[str] = ..., sop_instance_uids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., detail: _Optional[str] = ..., dimse_status: _Optional[int] = ..., attempts: _Optional[int] = ..., delivered: _Optional[int] = ...) -> None: ...

class RouteRedriven(_message.Message):
    __slots__ = ("route_id", "requested_by", "note", "destination", "transcode_to", "instances", "rule")
    ROUTE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTE_FIELD_NUMBER: _ClassVar[int]
    DESTINATION_FIELD_NUMBER: _ClassVar[int]
    TRANSCODE_TO_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    route_id: str
    requested_by: str
    note: str
    destination: str
    transcode_to: str
    instances: _containers.RepeatedCompositeFieldContainer[RoutedInstance]
    rule: str
    def __init__(self, route_id: _Optional[str] = ..., requested_by: _Optional[str] = ..., note: _Optional[str] = ..., destination: _Optional[str] = ..., transcode_to: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[RoutedInstance, _Mapping]]] = ..., rule: _Optional[str] = ...) -> None: ...

class TierTransitioned(_message.Message):
    __slots__ = ("sop_instance_uid", "series_instance_uid", "sha256", "size_bytes", "source", "target", "policy", "reason", "study_instance_uid", "instance")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str
    size_bytes: int
    source: StorageLocation
    target: StorageLocation
    policy: str
    reason: str
    study_instance_uid: str
    instance: InstanceStored
    def __init__(self, sop_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., source: _Optional[_Union[StorageLocation, _Mapping]] = ..., target: _Optional[_Union[StorageLocation, _Mapping]] = ..., policy: _Optional[str] = ..., reason: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., instance: _Optional[_Union[InstanceStored, _Mapping]] = ...) -> None: ...

class InstanceDeleted(_message.Message):
    __slots__ = ("sop_instance_uid", "series_instance_uid", "sha256", "location", "policy", "reason", "study_instance_uid", "series_emptied", "study_emptied")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_EMPTIED_FIELD_NUMBER: _ClassVar[int]
    STUDY_EMPTIED_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str
    location: StorageLocation
    policy: str
    reason: str
    study_instance_uid: str
    series_emptied: bool
    study_emptied: bool
    def __init__(self, sop_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., sha256: _Optional[str] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ..., policy: _Optional[str] = ..., reason: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., series_emptied: _Optional[bool] = ..., study_emptied: _Optional[bool] = ...) -> None: ...

class LegalHoldPlaced(_message.Message):
    __slots__ = ("hold_id", "reason", "placed_by")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLACED_BY_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    reason: str
    placed_by: str
    def __init__(self, hold_id: _Optional[str] = ..., reason: _Optional[str] = ..., placed_by: _Optional[str] = ...) -> None: ...

class LegalHoldReleased(_message.Message):
    __slots__ = ("hold_id", "reason", "released_by")
    HOLD_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    RELEASED_BY_FIELD_NUMBER: _ClassVar[int]
    hold_id: str
    reason: str
    released_by: str
    def __init__(self, hold_id: _Optional[str] = ..., reason: _Optional[str] = ..., released_by: _Optional[str] = ...) -> None: ...

class ObjectRepaired(_message.Message):
    __slots__ = ("sop_instance_uid", "sha256", "location", "source", "problem")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    sha256: str
    location: StorageLocation
    source: StorageLocation
    problem: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., sha256: _Optional[str] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ..., source: _Optional[_Union[StorageLocation, _Mapping]] = ..., problem: _Optional[str] = ...) -> None: ...

class StudyAccessed(_message.Message):
    __slots__ = ("via", "accessed_at")
    VIA_FIELD_NUMBER: _ClassVar[int]
    ACCESSED_AT_FIELD_NUMBER: _ClassVar[int]
    via: str
    accessed_at: _timestamp_pb2.Timestamp
    def __init__(self, via: _Optional[str] = ..., accessed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class InstanceReplicated(_message.Message):
    __slots__ = ("sop_instance_uid", "series_instance_uid", "sha256", "size_bytes", "location", "source_site", "source_event_id", "site")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_SITE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    SITE_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str
    size_bytes: int
    location: StorageLocation
    source_site: str
    source_event_id: str
    site: str
    def __init__(self, sop_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ..., source_site: _Optional[str] = ..., source_event_id: _Optional[str] = ..., site: _Optional[str] = ...) -> None: ...

class SiteEpoch(_message.Message):
    __slots__ = ("epoch", "primary_site", "previous_primary", "reason", "operator", "diverged_at")
    class DivergedAtEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_SITE_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_PRIMARY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    OPERATOR_FIELD_NUMBER: _ClassVar[int]
    DIVERGED_AT_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    primary_site: str
    previous_primary: str
    reason: str
    operator: str
    diverged_at: _containers.ScalarMap[str, int]
    def __init__(self, epoch: _Optional[int] = ..., primary_site: _Optional[str] = ..., previous_primary: _Optional[str] = ..., reason: _Optional[str] = ..., operator: _Optional[str] = ..., diverged_at: _Optional[_Mapping[str, int]] = ...) -> None: ...

class AuditWho(_message.Message):
    __slots__ = ("user", "client_id", "calling_ae_title", "called_ae_title", "cert_subject", "cert_fingerprint")
    USER_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    CALLING_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    CALLED_AE_TITLE_FIELD_NUMBER: _ClassVar[int]
    CERT_SUBJECT_FIELD_NUMBER: _ClassVar[int]
    CERT_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    user: str
    client_id: str
    calling_ae_title: str
    called_ae_title: str
    cert_subject: str
    cert_fingerprint: str
    def __init__(self, user: _Optional[str] = ..., client_id: _Optional[str] = ..., calling_ae_title: _Optional[str] = ..., called_ae_title: _Optional[str] = ..., cert_subject: _Optional[str] = ..., cert_fingerprint: _Optional[str] = ...) -> None: ...

class AuditWhere(_message.Message):
    __slots__ = ("peer_address", "node", "interface")
    PEER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    INTERFACE_FIELD_NUMBER: _ClassVar[int]
    peer_address: str
    node: str
    interface: str
    def __init__(self, peer_address: _Optional[str] = ..., node: _Optional[str] = ..., interface: _Optional[str] = ...) -> None: ...

class AuditWhat(_message.Message):
    __slots__ = ("patient_ids", "study_instance_uids", "instances", "query_level", "query_keys", "sop_class_uid", "detail", "method")
    class QueryKeysEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PATIENT_IDS_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UIDS_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    QUERY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    QUERY_KEYS_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    patient_ids: _containers.RepeatedScalarFieldContainer[str]
    study_instance_uids: _containers.RepeatedScalarFieldContainer[str]
    instances: int
    query_level: str
    query_keys: _containers.ScalarMap[str, str]
    sop_class_uid: str
    detail: str
    method: str
    def __init__(self, patient_ids: _Optional[_Iterable[str]] = ..., study_instance_uids: _Optional[_Iterable[str]] = ..., instances: _Optional[int] = ..., query_level: _Optional[str] = ..., query_keys: _Optional[_Mapping[str, str]] = ..., sop_class_uid: _Optional[str] = ..., detail: _Optional[str] = ..., method: _Optional[str] = ...) -> None: ...

class AuditEvent(_message.Message):
    __slots__ = ("action", "outcome", "dicom_status", "http_status", "grpc_code", "who", "where", "what")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DICOM_STATUS_FIELD_NUMBER: _ClassVar[int]
    HTTP_STATUS_FIELD_NUMBER: _ClassVar[int]
    GRPC_CODE_FIELD_NUMBER: _ClassVar[int]
    WHO_FIELD_NUMBER: _ClassVar[int]
    WHERE_FIELD_NUMBER: _ClassVar[int]
    WHAT_FIELD_NUMBER: _ClassVar[int]
    action: str
    outcome: str
    dicom_status: int
    http_status: int
    grpc_code: str
    who: AuditWho
    where: AuditWhere
    what: AuditWhat
    def __init__(self, action: _Optional[str] = ..., outcome: _Optional[str] = ..., dicom_status: _Optional[int] = ..., http_status: _Optional[int] = ..., grpc_code: _Optional[str] = ..., who: _Optional[_Union[AuditWho, _Mapping]] = ..., where: _Optional[_Union[AuditWhere, _Mapping]] = ..., what: _Optional[_Union[AuditWhat, _Mapping]] = ...) -> None: ...
