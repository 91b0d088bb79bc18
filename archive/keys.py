"""Object keys. Keys are immutable and content-addressed per instance, so a key is never
rewritten with other bytes: a second arrival with identical bytes lands on the same key (an
idempotent duplicate), different bytes land on a new key (a new version)."""

from __future__ import annotations

import re
from pathlib import Path

from strata.common.errors import Invalid, NotFound

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def instance_key(study_uid: str, series_uid: str, sop_uid: str, sha256: str) -> str:
    for name, uid in (("study", study_uid), ("series", series_uid), ("sop", sop_uid)):
        if not _UID.match(uid) or len(uid) > 64:
            raise Invalid(f"{name} UID is not a valid UID: {uid!r}")
    if not _SHA256.match(sha256):
        raise Invalid("sha256 must be 64 lowercase hex digits")
    return f"studies/{study_uid}/{series_uid}/{sop_uid}.{sha256}.dcm"


class UnsafeKey(NotFound):
    """A storage key (read from an event or the index) that is not a plain relative key inside
    a tier: it is never resolved, and what it names is never served. A NotFound (the object
    cannot be served from what was recorded) so every retrieve path answers it as a missing
    object; the key itself is kept out of the message (it is untrusted text)."""


MAX_KEY_LENGTH = 1024  # S3's limit on a key's UTF-8 bytes


def check_key(key: str) -> str:
    """``key`` when it is a safe storage key: non-empty relative path of at most 1024 UTF-8
    bytes, '/'-separated, with no empty, '.' or '..' component, no backslash, no NUL or other
    control character. Raises UnsafeKey otherwise. The one check every read path applies to
    a key it got from an event or the index (hot tier, cold tier, recall)."""
    if not isinstance(key, str) or not key:
        raise UnsafeKey("empty storage key")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise UnsafeKey("storage key is not valid text") from exc
    if size > MAX_KEY_LENGTH:
        raise UnsafeKey(f"storage key longer than {MAX_KEY_LENGTH} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in key) or "\\" in key:
        raise UnsafeKey("storage key holds a control character or a backslash")
    if key.startswith("/") or any(p in ("", ".", "..") for p in key.split("/")):
        raise UnsafeKey("storage key is not a relative path inside the tier")
    return key


def key_path(root: Path, key: str) -> Path:
    """The file of ``key`` under the directory ``root``: ``check_key``, then the resolved path
    (symbolic links followed) must still be inside ``root``; raises UnsafeKey otherwise."""
    check_key(key)
    base = root.resolve()
    p = (base / key).resolve()
    if not p.is_relative_to(base) or p == base:
        raise UnsafeKey("storage key resolves outside the tier root")
    return p
