import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
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
    __slots__ = ("event_id", "event_type", "schema_version", "occurred_at", "producer", "study_instance_uid", "instance_stored", "instance_quarantined", "study_stable")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_STORED_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_QUARANTINED_FIELD_NUMBER: _ClassVar[int]
    STUDY_STABLE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    schema_version: int
    occurred_at: _timestamp_pb2.Timestamp
    producer: Producer
    study_instance_uid: str
    instance_stored: InstanceStored
    instance_quarantined: InstanceQuarantined
    study_stable: StudyStable
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., schema_version: _Optional[int] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., producer: _Optional[_Union[Producer, _Mapping]] = ..., study_instance_uid: _Optional[str] = ..., instance_stored: _Optional[_Union[InstanceStored, _Mapping]] = ..., instance_quarantined: _Optional[_Union[InstanceQuarantined, _Mapping]] = ..., study_stable: _Optional[_Union[StudyStable, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("reason", "detail", "dimse_status", "sop_class_uid", "sop_instance_uid", "study_instance_uid", "size_bytes", "sha256", "location", "calling_ae_title", "called_ae_title", "peer_address", "ingest_node", "received_at", "series_instance_uid")
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
    def __init__(self, reason: _Optional[str] = ..., detail: _Optional[str] = ..., dimse_status: _Optional[int] = ..., sop_class_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., location: _Optional[_Union[StorageLocation, _Mapping]] = ..., calling_ae_title: _Optional[str] = ..., called_ae_title: _Optional[str] = ..., peer_address: _Optional[str] = ..., ingest_node: _Optional[str] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., series_instance_uid: _Optional[str] = ...) -> None: ...

class StudyStable(_message.Message):
    __slots__ = ("study_instance_uid", "through_partition", "through_offset", "quiet_seconds", "last_arrival_at")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    THROUGH_PARTITION_FIELD_NUMBER: _ClassVar[int]
    THROUGH_OFFSET_FIELD_NUMBER: _ClassVar[int]
    QUIET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LAST_ARRIVAL_AT_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    through_partition: int
    through_offset: int
    quiet_seconds: int
    last_arrival_at: _timestamp_pb2.Timestamp
    def __init__(self, study_instance_uid: _Optional[str] = ..., through_partition: _Optional[int] = ..., through_offset: _Optional[int] = ..., quiet_seconds: _Optional[int] = ..., last_arrival_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
