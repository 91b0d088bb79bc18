"""Lifecycle policies: which stored object should move to another tier or be deleted, and when.

Pure domain logic (no Kafka, S3 or ClickHouse): a policy is read from a TOML or JSON file and
evaluated against facts about one instance at a given time. ``processors/lifecycle/`` feeds it
rows of the index and carries out the decisions.

The file (default ``<STRATA_HOME>/lifecycle.toml``, or the path in ``STRATA_LIFECYCLE_POLICY``)::

    day_seconds = 86400          # length of a policy "day" (tests: a few seconds)
    interval_seconds = 60        # how often the lifecycle processor looks for due instances
    batch = 500                  # instances handled per pass at most
    workers = 4                  # parallel copies/verifications
    access_window_seconds = 3600 # at most one StudyAccessed per study per window

    [recall]
    cache_dir = ""               # default <STRATA_HOME>/recall-cache
    cache_bytes = 10737418240    # bound of the recall cache
    promote = false              # move a recalled object back to hot (policy "recall")

    [[rules]]
    name = "ct-to-cold"
    action = "cold"              # "cold": move to the cold tier; "delete": end of retention
    after_days = 30
    since = "arrival"            # or "last-access" (the later of arrival and last access)
    modalities = ["CT", "MR"]    # empty or absent = any
    calling_aes = []             # empty or absent = any
    min_size_bytes = 0
    max_size_bytes = 0           # 0 = no upper bound

A "delete" rule never deletes an instance of a study under legal hold. When several rules are
due for one instance, a due "delete" wins over a move; among moves the first rule in the file
wins.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from strata.common.errors import Invalid

ACTIONS = ("cold", "delete")
SINCE = ("arrival", "last-access")


@dataclass(frozen=True)
class Rule:
    name: str
    action: str
    after_days: float
    since: str = "arrival"
    modalities: frozenset[str] = frozenset()
    calling_aes: frozenset[str] = frozenset()
    min_size_bytes: int = 0
    max_size_bytes: int = 0  # 0 = unbounded

    def matches(self, f: InstanceFacts) -> bool:
        """Does the rule's filter select this instance (time aside)?"""
        if self.modalities and f.modality.upper() not in self.modalities:
            return False
        if self.calling_aes and f.calling_ae_title.strip() not in self.calling_aes:
            return False
        if f.size_bytes < self.min_size_bytes:
            return False
        return not (self.max_size_bytes and f.size_bytes > self.max_size_bytes)

    def due_at(self, f: InstanceFacts, day_seconds: float) -> datetime:
        start = f.received_at
        if self.since == "last-access" and f.last_accessed_at and f.last_accessed_at > start:
            start = f.last_accessed_at
        return start + timedelta(seconds=self.after_days * day_seconds)


@dataclass(frozen=True)
class RecallConfig:
    cache_dir: str = ""
    cache_bytes: int = 10 * 1024**3
    promote: bool = False


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...] = ()
    day_seconds: float = 86400.0
    interval_seconds: float = 60.0
    batch: int = 500
    workers: int = 4
    access_window_seconds: float = 3600.0
    recall: RecallConfig = field(default_factory=RecallConfig)

    @property
    def moves(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.action == "cold")

    @property
    def deletes(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if r.action == "delete")


@dataclass(frozen=True)
class InstanceFacts:
    """What the policy looks at: facts of one indexed instance (all from the log)."""

    tier: str
    modality: str
    calling_ae_title: str
    size_bytes: int
    received_at: datetime
    last_accessed_at: datetime | None = None
    held: bool = False


@dataclass(frozen=True)
class Decision:
    action: str  # "cold" or "delete"
    rule: str
    due_at: datetime


def decide(policy: Policy, f: InstanceFacts, now: datetime) -> Decision | None:
    """The action due for this instance at ``now``, or None.

    Deletion first (a held study is never deleted, whatever the rule says); then a move to the
    cold tier for an instance not already there (first due rule in file order).
    """
    if not f.held:
        for r in policy.deletes:
            if r.matches(f):
                at = r.due_at(f, policy.day_seconds)
                if at <= now:
                    return Decision("delete", r.name, at)
    if f.tier != "cold":
        for r in policy.moves:
            if r.matches(f):
                at = r.due_at(f, policy.day_seconds)
                if at <= now:
                    return Decision("cold", r.name, at)
    return None


# ------------------------------------------------------------------------------ loading


def _strings(raw: Any, what: str, upper: bool) -> frozenset[str]:
    if raw is None:
        return frozenset()
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise Invalid(f"{what} must be a list of strings")
    return frozenset((x.strip().upper() if upper else x.strip()) for x in raw if x.strip())


def _number(d: Mapping[str, Any], key: str, default: float, what: str, minimum: float = 0) -> Any:
    v = d.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise Invalid(f"{what}: {key} must be a number")
    if v < minimum:
        raise Invalid(f"{what}: {key} must be >= {minimum}")
    return v


_RULE_KEYS = {
    "name",
    "action",
    "after_days",
    "since",
    "modalities",
    "calling_aes",
    "min_size_bytes",
    "max_size_bytes",
}
_TOP_KEYS = {
    "rules",
    "day_seconds",
    "interval_seconds",
    "batch",
    "workers",
    "access_window_seconds",
    "recall",
}


def parse_policy(doc: Mapping[str, Any]) -> Policy:
    """A Policy from the parsed file (TOML or JSON); every mistake is an Invalid naming it."""
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise Invalid(f"lifecycle policy: unknown keys {sorted(unknown)}")
    rules = []
    names: set[str] = set()
    raw_rules = doc.get("rules", [])
    if not isinstance(raw_rules, list):
        raise Invalid("lifecycle policy: rules must be a list")
    for i, r in enumerate(raw_rules):
        what = f"lifecycle rule #{i + 1}"
        if not isinstance(r, dict):
            raise Invalid(f"{what} must be a table/object")
        bad = set(r) - _RULE_KEYS
        if bad:
            raise Invalid(f"{what}: unknown keys {sorted(bad)}")
        name = str(r.get("name") or f"rule-{i + 1}")
        if name in names:
            raise Invalid(f"{what}: duplicate rule name {name!r}")
        names.add(name)
        action = r.get("action")
        if action not in ACTIONS:
            raise Invalid(f"{what} ({name}): action must be one of {ACTIONS}, not {action!r}")
        if "after_days" not in r:
            raise Invalid(f"{what} ({name}): after_days is required")
        since = r.get("since", "arrival")
        if since not in SINCE:
            raise Invalid(f"{what} ({name}): since must be one of {SINCE}, not {since!r}")
        if action == "delete" and since != "arrival":
            raise Invalid(f"{what} ({name}): retention counts from arrival only")
        rules.append(
            Rule(
                name=name,
                action=action,
                after_days=float(_number(r, "after_days", 0, what)),
                since=since,
                modalities=_strings(r.get("modalities"), f"{what}: modalities", True),
                calling_aes=_strings(r.get("calling_aes"), f"{what}: calling_aes", False),
                min_size_bytes=int(_number(r, "min_size_bytes", 0, what)),
                max_size_bytes=int(_number(r, "max_size_bytes", 0, what)),
            )
        )
    recall = doc.get("recall", {})
    if not isinstance(recall, dict) or set(recall) - {"cache_dir", "cache_bytes", "promote"}:
        raise Invalid("lifecycle policy: recall takes cache_dir, cache_bytes, promote")
    return Policy(
        rules=tuple(rules),
        day_seconds=float(_number(doc, "day_seconds", 86400.0, "policy", 0.001)),
        interval_seconds=float(_number(doc, "interval_seconds", 60.0, "policy", 0.1)),
        batch=int(_number(doc, "batch", 500, "policy", 1)),
        workers=int(_number(doc, "workers", 4, "policy", 1)),
        access_window_seconds=float(_number(doc, "access_window_seconds", 3600.0, "policy")),
        recall=RecallConfig(
            cache_dir=str(recall.get("cache_dir", "")),
            cache_bytes=int(_number(recall, "cache_bytes", 10 * 1024**3, "recall", 1)),
            promote=bool(recall.get("promote", False)),
        ),
    )


def load_policy(path: Path) -> Policy:
    """Read the policy file (``.json`` is JSON, anything else TOML). A missing file is the
    empty policy (no lifecycle rules; recall still works)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Policy()
    except OSError as exc:
        raise Invalid(f"cannot read the lifecycle policy {path}: {exc.strerror}") from exc
    try:
        doc = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise Invalid(f"lifecycle policy {path} is not valid: {exc}") from exc
    if not isinstance(doc, dict):
        raise Invalid(f"lifecycle policy {path} must be a table/object at the top")
    return parse_policy(doc)


def policy_path(home: Path, env: Mapping[str, str]) -> Path:
    """Where the policy is: ``STRATA_LIFECYCLE_POLICY`` when given to this process, else
    ``<home>/lifecycle.toml`` (so ``strata up``, which hands children only the typed
    settings, finds it in the archive's home)."""
    raw = env.get("STRATA_LIFECYCLE_POLICY", "").strip()
    return Path(raw).expanduser() if raw else home / "lifecycle.toml"
