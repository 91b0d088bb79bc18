"""Keep credentials out of logs and error messages: URLs and DSNs lose their userinfo.

``redact("cannot open http://user:pw@host:8123/db")`` -> ``"cannot open http://***@host:8123/db"``.
Every message that may carry a configured endpoint (the ClickHouse DSN, an S3 endpoint) goes
through ``redact`` before it is logged or raised.
"""

from __future__ import annotations

import re

# scheme://userinfo@ ; userinfo is anything up to the last '@' of the URL (a password may
# hold '@', ':' or '/' when not percent-encoded): masking too much is the safe mistake.
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s'\"]*@")
# key=value credentials of DSN query strings and connection strings
_PARAMS = re.compile(r"(?i)\b(password|passwd|pwd|secret|token|access_token)=([^&\s;]+)")


def redact(text: str) -> str:
    """``text`` with the userinfo of every URL and every password-like parameter masked."""
    text = _USERINFO.sub(lambda m: m.group(1) + "***@", text)
    return _PARAMS.sub(lambda m: m.group(1) + "=***", text)
