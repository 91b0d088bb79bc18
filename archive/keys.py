"""Object keys. Keys are immutable and content-addressed per instance, so a key is never
rewritten with other bytes: a second arrival with identical bytes lands on the same key (an
idempotent duplicate), different bytes land on a new key (a new version)."""

from __future__ import annotations

import re

from common.errors import Invalid

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def instance_key(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
    for name, uid in (("study", study_uid), ("series", series_uid), ("sop", sop_uid)):
        if not _UID.match(uid) or len(uid) > 64:
            raise Invalid(f"{name} UID is not a valid UID: {uid!r}")
    if not _SHA256.match(sha256):
        raise Invalid("sha256 must be 64 lowercase hex digits")
    return f"studies/{study_uid}/{series_uid}/{sop_uid}.{sha256}.dcm"
