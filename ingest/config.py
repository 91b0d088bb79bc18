"""Calling-AE configuration of an ingest node: allow-list and per-AE attributes.

File format (JSON), path in STRATA_AE_CONFIG:

    {"allow_unknown": false,
     "aes": {"CT_ROOM1": {"site": "north", "institution": "General Hospital",
                          "issuer_of_patient_id": "GH-MRN",
                          "certificate": "sha256:<hex>"}}}

``issuer_of_patient_id`` is the default issuer for Patient IDs arriving from that AE without
an Issuer of Patient ID (0010,0021): Patient IDs are only unique within their issuer.
``certificate`` binds the AE to its DICOM TLS client certificate (``sha256:<fingerprint>``,
``CN=<name>`` or the full subject; see dicomnet/tls.py and docs/security.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from strata.common.errors import Invalid


@dataclass(frozen=True)
class CallingAE:
    title: str
    site: str = ""
    institution: str = ""
    issuer_of_patient_id: str = ""
    certificate: str = ""


@dataclass(frozen=True)
class AEConfig:
    allow_unknown: bool = True
    aes: dict[str, CallingAE] = field(default_factory=dict)

    def lookup(self, title: str) -> CallingAE:
        return self.aes.get(title.strip()) or CallingAE(title.strip())

    @property
    def allow_list(self) -> list[str] | None:
        """Calling AE titles to require (None: accept any)."""
        return None if self.allow_unknown else sorted(self.aes)

    @property
    def cert_bindings(self) -> dict[str, str]:
        """Calling AE -> its TLS client certificate binding (AEs that have one)."""
        return {t: a.certificate for t, a in self.aes.items() if a.certificate}


def load(path: str) -> AEConfig:
    if not path:
        return AEConfig()
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise Invalid(f"cannot read AE configuration {path}: {exc}") from exc
    aes = {}
    for title, attrs in (raw.get("aes") or {}).items():
        if len(title) > 16 or not title.strip():
            raise Invalid(f"AE title {title!r} is not 1-16 characters")
        aes[title.strip()] = CallingAE(
            title=title.strip(),
            site=str(attrs.get("site", "")),
            institution=str(attrs.get("institution", "")),
            issuer_of_patient_id=str(attrs.get("issuer_of_patient_id", "")),
            certificate=str(attrs.get("certificate", "")),
        )
    return AEConfig(allow_unknown=bool(raw.get("allow_unknown", True)), aes=aes)
