"""Building and reading event envelopes (proto/strata/v1/events.proto)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from strata.proto.strata.v1 import events_pb2 as pb

SCHEMA_VERSION = 1
SOFTWARE_VERSION = "0.1.0"


def timestamp(dt: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(dt.astimezone(UTC))
    return ts


def envelope(
    payload: Message,
    *,
    study_uid: str,
    service: str,
    node: str,
    occurred_at: datetime | None = None,
    event_id: str | None = None,
) -> pb.Envelope:
    """Wrap a payload. The event id and time are fixed here, once, when the fact happened."""
    env = pb.Envelope(
        event_id=event_id or str(uuid.uuid4()),
        event_type=type(payload).__name__,
        schema_version=SCHEMA_VERSION,
        occurred_at=timestamp(occurred_at or datetime.now(UTC)),
        producer=pb.Producer(service=service, node=node, version=SOFTWARE_VERSION),
        study_instance_uid=study_uid,
    )
    getattr(env, _FIELDS[env.event_type]).CopyFrom(payload)
    return env


# payload message name -> its field in the Envelope's oneof (e.g. "RouteDecided" -> "route_decided")
_FIELDS = {
    f.message_type.name: f.name
    for f in pb.Envelope.DESCRIPTOR.oneofs_by_name["payload"].fields
    if f.message_type is not None  # every payload is a message
}


_EPOCH = datetime.fromtimestamp(0, UTC)


def event_time(t: Timestamp) -> datetime:
    """protobuf Timestamp -> aware datetime (epoch when unset): from the event, never the clock
    (what projections use, so rows stay a function of the log)."""
    return (
        datetime.fromtimestamp(t.seconds + t.nanos / 1e9, UTC) if t.seconds or t.nanos else _EPOCH
    )


def decode(value: bytes) -> pb.Envelope:
    env = pb.Envelope()
    env.ParseFromString(value)
    return env
