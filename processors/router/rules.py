"""Routing configuration: destinations (an AE or a pool of equivalent AEs, with throttling and
retry policy) and rules (conditions on an arrival -> forward to destinations).

Semantics, stated once: rules are evaluated in file order against each arriving instance.
``"semantics": "all-matches"`` (the default) forwards to every matching rule's destinations;
``"first-match"`` stops at the first rule that matches. A rule forwards each instance as it
arrives (``"forward": "instance"``) or batches the matching instances of a study and forwards
them together once the study is stable (``"forward": "study"``, on StudyStable).

Conditions (all given conditions must hold; a list means any of its values):
``modality``, ``body_part``, ``calling_ae``, ``called_ae``, ``site``, ``institution``,
``sop_class`` (UIDs), ``study_description`` (a regular expression, case-insensitive search).
Code strings compare case-insensitively after trimming, as DICOM matching does.

An example (docs/routing.md has the full reference)::

    {
      "semantics": "all-matches",
      "destinations": {
        "reading": {"pool": ["READ1@127.0.0.1:11112", "READ2@127.0.0.1:11113"],
                    "max_associations": 2, "max_per_second": 200, "max_attempts": 10},
        "ai": {"pool": ["AI@10.0.0.5:104"]}
      },
      "rules": [
        {"name": "ct-chest-to-reading", "when": {"modality": ["CT"], "body_part": ["CHEST"]},
         "forward": "instance", "to": ["reading"]},
        {"name": "mr-to-ai", "when": {"modality": "MR", "study_description": "brain"},
         "forward": "study", "to": ["ai"], "transcode": "jpeg2000-lossless"}
      ]
    }
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from strata.common.errors import Invalid

# Transcoding targets by name (or give the transfer syntax UID). All are lossless.
TRANSCODE_TARGETS: dict[str, str] = {
    "explicit-vr-little-endian": ExplicitVRLittleEndian,
    "implicit-vr-little-endian": ImplicitVRLittleEndian,
    "deflate": DeflatedExplicitVRLittleEndian,
    "jpeg2000-lossless": JPEG2000Lossless,
    "jpeg-ls-lossless": JPEGLSLossless,
    "rle-lossless": RLELossless,
}

CONDITIONS = (
    "modality",
    "body_part",
    "calling_ae",
    "called_ae",
    "site",
    "institution",
    "sop_class",
    "study_description",
)


@dataclass(frozen=True)
class Member:
    ae_title: str
    host: str
    port: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Destination:
    name: str
    pool: tuple[Member, ...]
    max_associations: int = 1  # concurrent associations to the destination (whole pool)
    max_per_second: float = 0.0  # instances per second to the destination; 0 = unlimited
    max_attempts: int = 10  # per instance, then dead letter
    max_age_seconds: float = 7 * 24 * 3600.0  # a route older than this is dead-lettered
    backoff_initial: float = 1.0  # seconds before the 2nd attempt; doubles each time
    backoff_max: float = 300.0
    batch: int = 64  # instances sent over one association before releasing it
    calling_ae: str = "STRATA"
    timeout: float = 30.0  # DIMSE/ACSE/network timeout (seconds)
    # DICOM TLS to the destination (dicomnet/tls.client_context): the CA its certificate is
    # verified against (empty: the system's), the archive's client certificate and key.
    tls: bool = False
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""


@dataclass(frozen=True)
class Rule:
    name: str
    when: dict[str, tuple[str, ...]]
    description_re: re.Pattern[str] | None
    forward: str  # "instance" or "study"
    to: tuple[str, ...]
    transcode_to: str = ""  # transfer syntax UID, "" = as stored


@dataclass(frozen=True)
class RouterConfig:
    semantics: str
    destinations: dict[str, Destination]
    rules: tuple[Rule, ...]
    defaults: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Arrival:
    """The attributes of an arrival that rules can test (from its InstanceStored event)."""

    modality: str = ""
    body_part: str = ""
    calling_ae: str = ""
    called_ae: str = ""
    site: str = ""
    institution: str = ""
    sop_class: str = ""
    study_description: str = ""


def _norm(v: str) -> str:
    return v.strip().upper()


def matches(rule: Rule, a: Arrival) -> bool:
    for cond, allowed in rule.when.items():
        value = getattr(a, cond)
        if cond == "sop_class":
            if value.strip() not in allowed:
                return False
        elif _norm(value) not in allowed:
            return False
    return not (rule.description_re and not rule.description_re.search(a.study_description))


def select(config: RouterConfig, a: Arrival) -> list[Rule]:
    """The rules an arrival matches, in order (only the first under first-match semantics)."""
    out = []
    for rule in config.rules:
        if matches(rule, a):
            out.append(rule)
            if config.semantics == "first-match":
                break
    return out


def explain(rule: Rule) -> str:
    parts = [f"{k} in {list(v)}" for k, v in rule.when.items()]
    if rule.description_re:
        parts.append(f"study_description ~ /{rule.description_re.pattern}/")
    return f"rule {rule.name!r} matched ({', '.join(parts) or 'every arrival'})"


# ------------------------------------------------------------------------------------ parsing


def _member(spec: Any, where: str) -> Member:
    if isinstance(spec, dict):
        try:
            return Member(str(spec["ae"]), str(spec.get("host", "127.0.0.1")), int(spec["port"]))
        except (KeyError, ValueError) as exc:
            raise Invalid(f"{where}: a pool member needs 'ae' and 'port'") from exc
    m = re.fullmatch(r"\s*([^@\s]{1,16})@([^:\s]+):(\d{1,5})\s*", str(spec))
    if not m:
        raise Invalid(f"{where}: pool member {spec!r} is not AE@host:port")
    return Member(m.group(1), m.group(2), int(m.group(3)))


_DEST_NUMBERS = {
    "max_associations": int,
    "max_per_second": float,
    "max_attempts": int,
    "max_age_seconds": float,
    "backoff_initial": float,
    "backoff_max": float,
    "batch": int,
    "timeout": float,
}


_DEST_TLS_FILES = ("tls_ca", "tls_cert", "tls_key")


def _destination(name: str, spec: Any, defaults: dict[str, Any]) -> Destination:
    where = f"destination {name!r}"
    if not isinstance(spec, dict) or not spec.get("pool"):
        raise Invalid(f"{where}: needs a non-empty 'pool' of AE@host:port")
    pool = spec["pool"] if isinstance(spec["pool"], list) else [spec["pool"]]
    kwargs: dict[str, Any] = {}
    for key, conv in _DEST_NUMBERS.items():
        if key in spec or key in defaults:
            try:
                kwargs[key] = conv(spec.get(key, defaults.get(key)))
            except (TypeError, ValueError) as exc:
                raise Invalid(f"{where}: {key} must be a number") from exc
    if "calling_ae" in spec or "calling_ae" in defaults:
        kwargs["calling_ae"] = str(spec.get("calling_ae", defaults.get("calling_ae")))
    if "tls" in spec or "tls" in defaults:
        kwargs["tls"] = spec.get("tls", defaults.get("tls")) is True
    for key in _DEST_TLS_FILES:
        if key in spec or key in defaults:
            kwargs[key] = str(spec.get(key, defaults.get(key)))
    unknown = set(spec) - set(_DEST_NUMBERS) - {"pool", "calling_ae", "tls", *_DEST_TLS_FILES}
    if unknown:
        raise Invalid(f"{where}: unknown settings {sorted(unknown)}")
    d = Destination(name, tuple(_member(m, where) for m in pool), **kwargs)
    if d.max_associations < 1 or d.max_attempts < 1 or d.batch < 1:
        raise Invalid(f"{where}: max_associations, max_attempts and batch must be >= 1")
    return d


def _rule(i: int, spec: Any, destinations: dict[str, Destination]) -> Rule:
    if not isinstance(spec, dict):
        raise Invalid(f"rule #{i + 1}: must be an object")
    name = str(spec.get("name") or f"rule-{i + 1}")
    where = f"rule {name!r}"
    when_spec = spec.get("when", {})
    if not isinstance(when_spec, dict):
        raise Invalid(f"{where}: 'when' must be an object")
    unknown = set(when_spec) - set(CONDITIONS)
    if unknown:
        raise Invalid(f"{where}: unknown conditions {sorted(unknown)}; known: {list(CONDITIONS)}")
    when: dict[str, tuple[str, ...]] = {}
    description_re = None
    for cond, value in when_spec.items():
        if cond == "study_description":
            try:
                description_re = re.compile(str(value), re.IGNORECASE)
            except re.error as exc:
                raise Invalid(f"{where}: study_description is not a regex: {exc}") from exc
            continue
        values = value if isinstance(value, list) else [value]
        norm = (lambda s: s.strip()) if cond == "sop_class" else _norm
        when[cond] = tuple(norm(str(v)) for v in values)
    forward = spec.get("forward", "instance")
    if forward not in ("instance", "study"):
        raise Invalid(f"{where}: forward must be 'instance' or 'study', not {forward!r}")
    to = spec.get("to")
    to = [to] if isinstance(to, str) else to
    if not to:
        raise Invalid(f"{where}: 'to' names no destination")
    for d in to:
        if d not in destinations:
            raise Invalid(f"{where}: unknown destination {d!r}")
    transcode = str(spec.get("transcode", "") or "")
    if transcode:
        transcode = TRANSCODE_TARGETS.get(transcode, transcode)
        if transcode not in TRANSCODE_TARGETS.values():
            raise Invalid(
                f"{where}: cannot transcode to {spec['transcode']!r}; "
                f"one of {sorted(TRANSCODE_TARGETS)} (lossless only)"
            )
    return Rule(name, when, description_re, forward, tuple(to), UID(transcode) if transcode else "")


def parse(doc: dict[str, Any]) -> RouterConfig:
    if not isinstance(doc, dict):
        raise Invalid("router configuration must be a JSON object")
    semantics = doc.get("semantics", "all-matches")
    if semantics not in ("all-matches", "first-match"):
        raise Invalid(f"semantics must be 'all-matches' or 'first-match', not {semantics!r}")
    defaults = doc.get("defaults", {}) or {}
    dests = {n: _destination(n, s, defaults) for n, s in (doc.get("destinations") or {}).items()}
    rules = tuple(_rule(i, s, dests) for i, s in enumerate(doc.get("rules") or []))
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise Invalid("rule names must be unique (they are part of each route's identity)")
    return RouterConfig(semantics, dests, rules, defaults)


def load(path: str | Path) -> RouterConfig:
    try:
        doc = json.loads(Path(path).read_text())
    except OSError as exc:
        raise Invalid(f"cannot read router configuration {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise Invalid(f"router configuration {path} is not JSON: {exc}") from exc
    return parse(doc)
