import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from strata.proto.strata.v1 import events_pb2 as _events_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SearchRequest(_message.Message):
    __slots__ = ("match", "include", "page_size", "page_token", "order_by")
    class MatchEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    MATCH_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ORDER_BY_FIELD_NUMBER: _ClassVar[int]
    match: _containers.ScalarMap[str, str]
    include: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    order_by: str
    def __init__(self, match: _Optional[_Mapping[str, str]] = ..., include: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., order_by: _Optional[str] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("matches", "next_page_token", "total")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedScalarFieldContainer[str]
    next_page_token: str
    total: int
    def __init__(self, matches: _Optional[_Iterable[str]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ...) -> None: ...

class GetStudyMetadataRequest(_message.Message):
    __slots__ = ("study_instance_uid",)
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    def __init__(self, study_instance_uid: _Optional[str] = ...) -> None: ...

class StudyMetadata(_message.Message):
    __slots__ = ("study_instance_uid", "instances")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    instances: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, study_instance_uid: _Optional[str] = ..., instances: _Optional[_Iterable[str]] = ...) -> None: ...

class RetrieveRequest(_message.Message):
    __slots__ = ("study_instance_uid", "series_instance_uid", "sop_instance_uids", "chunk_size")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SERIES_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UIDS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uids: _containers.RepeatedScalarFieldContainer[str]
    chunk_size: int
    def __init__(self, study_instance_uid: _Optional[str] = ..., series_instance_uid: _Optional[str] = ..., sop_instance_uids: _Optional[_Iterable[str]] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class InstanceChunk(_message.Message):
    __slots__ = ("sop_instance_uid", "offset", "data", "size_bytes", "sha256", "transfer_syntax_uid", "sop_class_uid", "last")
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    TRANSFER_SYNTAX_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_CLASS_UID_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    sop_instance_uid: str
    offset: int
    data: bytes
    size_bytes: int
    sha256: str
    transfer_syntax_uid: str
    sop_class_uid: str
    last: bool
    def __init__(self, sop_instance_uid: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., transfer_syntax_uid: _Optional[str] = ..., sop_class_uid: _Optional[str] = ..., last: _Optional[bool] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("key", "study_instance_uid", "sop_instance_uid")
    KEY_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    key: str
    study_instance_uid: str
    sop_instance_uid: str
    def __init__(self, key: _Optional[str] = ..., study_instance_uid: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ...) -> None: ...

class FetchObjectsRequest(_message.Message):
    __slots__ = ("objects", "chunk_size")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[ObjectRef]
    chunk_size: int
    def __init__(self, objects: _Optional[_Iterable[_Union[ObjectRef, _Mapping]]] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class ObjectChunk(_message.Message):
    __slots__ = ("key", "sop_instance_uid", "offset", "data", "size_bytes", "last", "missing")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SOP_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    key: str
    sop_instance_uid: str
    offset: int
    data: bytes
    size_bytes: int
    last: bool
    missing: bool
    def __init__(self, key: _Optional[str] = ..., sop_instance_uid: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., size_bytes: _Optional[int] = ..., last: _Optional[bool] = ..., missing: _Optional[bool] = ...) -> None: ...

class GetStudyHistoryRequest(_message.Message):
    __slots__ = ("study_instance_uid",)
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    def __init__(self, study_instance_uid: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("event_id", "event_type", "occurred_at", "topic", "partition", "offset", "payload_json", "producer")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    OCCURRED_AT_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_JSON_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    occurred_at: _timestamp_pb2.Timestamp
    topic: str
    partition: int
    offset: int
    payload_json: str
    producer: str
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., occurred_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., payload_json: _Optional[str] = ..., producer: _Optional[str] = ...) -> None: ...

class StudyHistory(_message.Message):
    __slots__ = ("study_instance_uid", "events")
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    study_instance_uid: str
    events: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    def __init__(self, study_instance_uid: _Optional[str] = ..., events: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("resume_token", "from_beginning", "event_types", "study_instance_uid")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    FROM_BEGINNING_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPES_FIELD_NUMBER: _ClassVar[int]
    STUDY_INSTANCE_UID_FIELD_NUMBER: _ClassVar[int]
    resume_token: str
    from_beginning: bool
    event_types: _containers.RepeatedScalarFieldContainer[str]
    study_instance_uid: str
    def __init__(self, resume_token: _Optional[str] = ..., from_beginning: _Optional[bool] = ..., event_types: _Optional[_Iterable[str]] = ..., study_instance_uid: _Optional[str] = ...) -> None: ...

class WatchedEvent(_message.Message):
    __slots__ = ("resume_token", "topic", "partition", "offset", "event")
    RESUME_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOPIC_FIELD_NUMBER: _ClassVar[int]
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    resume_token: str
    topic: str
    partition: int
    offset: int
    event: _events_pb2.Envelope
    def __init__(self, resume_token: _Optional[str] = ..., topic: _Optional[str] = ..., partition: _Optional[int] = ..., offset: _Optional[int] = ..., event: _Optional[_Union[_events_pb2.Envelope, _Mapping]] = ...) -> None: ...
