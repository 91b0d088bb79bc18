"""One error root for the project, with the few categories entry points map to protocol statuses.

Adapters translate vendor exceptions (Kafka, ClickHouse, OS) into these; DICOM/HTTP/gRPC status
mapping happens only at the entry points.
"""


class StrataError(Exception):
    """Root of every error raised on purpose by Strata code."""


class NotFound(StrataError):
    """The thing asked for does not exist."""


class Conflict(StrataError):
    """The request contradicts what is already recorded."""


class Invalid(StrataError):
    """The input is malformed or breaks a rule; retrying the same input will fail again."""


class Unavailable(StrataError):
    """A dependency (log, store, index) cannot serve now; retrying later may succeed."""


class DeadlineExceeded(Unavailable):
    """A time limit (the server's or the caller's) ran out before the work was done."""
