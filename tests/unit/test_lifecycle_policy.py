"""archive.lifecycle: policy files and the pure decision of what is due for an instance."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from strata.archive.lifecycle import (
    InstanceFacts,
    Policy,
    decide,
    load_policy,
    parse_policy,
    policy_path,
)
from strata.common.errors import Invalid

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def facts(**kw: object) -> InstanceFacts:
    base: dict[str, object] = {
        "tier": "hot",
        "modality": "CT",
        "calling_ae_title": "CT1",
        "size_bytes": 1000,
        "received_at": T0,
    }
    base.update(kw)
    return InstanceFacts(**base)  # type: ignore[arg-type]


def policy(*rules: dict, **top: object) -> Policy:
    return parse_policy({"day_seconds": 10, "rules": list(rules), **top})


def test_move_after_arrival_days_in_configured_seconds() -> None:
    p = policy({"name": "cold30", "action": "cold", "after_days": 3})
    assert decide(p, facts(), T0 + timedelta(seconds=29.9)) is None
    d = decide(p, facts(), T0 + timedelta(seconds=30))
    assert d is not None and (d.action, d.rule) == ("cold", "cold30")
    assert d.due_at == T0 + timedelta(seconds=30)
    # already cold: nothing more to do
    assert decide(p, facts(tier="cold"), T0 + timedelta(days=9)) is None


def test_move_after_last_access() -> None:
    p = policy({"name": "idle", "action": "cold", "after_days": 2, "since": "last-access"})
    accessed = T0 + timedelta(seconds=15)
    f = facts(last_accessed_at=accessed)
    assert decide(p, f, T0 + timedelta(seconds=25)) is None  # due 20 s after arrival, but read
    assert decide(p, f, accessed + timedelta(seconds=20)) is not None
    # never accessed: counts from arrival
    assert decide(p, facts(), T0 + timedelta(seconds=20)) is not None
    # an access recorded before the arrival (an older version) does not push it back
    assert decide(p, facts(last_accessed_at=T0 - timedelta(1)), T0 + timedelta(seconds=20))


@pytest.mark.parametrize(
    ("rule", "f", "selected"),
    [
        ({"modalities": ["mr"]}, facts(modality="MR"), True),
        ({"modalities": ["MR", "US"]}, facts(modality="CT"), False),
        ({"calling_aes": ["CT1"]}, facts(calling_ae_title="CT1 "), True),
        ({"calling_aes": ["OTHER"]}, facts(), False),
        ({"min_size_bytes": 1001}, facts(size_bytes=1000), False),
        ({"min_size_bytes": 1000}, facts(size_bytes=1000), True),
        ({"max_size_bytes": 999}, facts(size_bytes=1000), False),
        ({"max_size_bytes": 0}, facts(size_bytes=10**12), True),
    ],
)
def test_filters(rule: dict, f: InstanceFacts, selected: bool) -> None:
    p = policy({"name": "r", "action": "cold", "after_days": 0, **rule})
    assert (decide(p, f, T0) is not None) is selected


def test_retention_deletes_unless_held_and_wins_over_moves() -> None:
    p = policy(
        {"name": "cold", "action": "cold", "after_days": 1},
        {"name": "ten-years", "action": "delete", "after_days": 5},
    )
    later = T0 + timedelta(seconds=50)
    d = decide(p, facts(), later)
    assert d is not None and (d.action, d.rule) == ("delete", "ten-years")
    d = decide(p, facts(tier="cold"), later)
    assert d is not None and d.action == "delete"
    # a held study: never deleted; it may still move to cold
    d = decide(p, facts(held=True), later)
    assert d is not None and d.action == "cold"
    assert decide(p, facts(tier="cold", held=True), later + timedelta(days=3650)) is None


def test_first_due_move_rule_wins() -> None:
    p = policy(
        {"name": "mr-fast", "action": "cold", "after_days": 1, "modalities": ["MR"]},
        {"name": "all", "action": "cold", "after_days": 2},
    )
    assert decide(p, facts(modality="MR"), T0 + timedelta(seconds=10)).rule == "mr-fast"  # type: ignore[union-attr]
    assert decide(p, facts(), T0 + timedelta(seconds=10)) is None
    assert decide(p, facts(), T0 + timedelta(seconds=20)).rule == "all"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"rules": [{"action": "archive", "after_days": 1}]}, "action must be one of"),
        ({"rules": [{"action": "cold"}]}, "after_days is required"),
        ({"rules": [{"action": "cold", "after_days": -1}]}, "after_days must be >= 0"),
        ({"rules": [{"action": "cold", "after_days": "3"}]}, "after_days must be a number"),
        ({"rules": [{"action": "cold", "after_days": 1, "colour": 1}]}, "unknown keys"),
        ({"rulez": []}, "unknown keys"),
        ({"day_seconds": 0}, "day_seconds must be >="),
        (
            {"rules": [{"action": "delete", "after_days": 1, "since": "last-access"}]},
            "retention counts from arrival",
        ),
        (
            {"rules": [{"name": "a", "action": "cold", "after_days": 1}] * 2},
            "duplicate rule name",
        ),
        ({"rules": [{"action": "cold", "after_days": 1, "modalities": [1]}]}, "list of strings"),
    ],
)
def test_invalid_policies_are_refused_precisely(doc: dict, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        parse_policy(doc)


def test_load_toml_and_json(tmp_path: Path) -> None:
    toml = tmp_path / "lifecycle.toml"
    toml.write_text(
        """
day_seconds = 2
interval_seconds = 0.5
batch = 20

[recall]
promote = true
cache_bytes = 1000000

[[rules]]
name = "us-cold"
action = "cold"
after_days = 1
modalities = ["US"]
"""
    )
    p = load_policy(toml)
    assert (p.day_seconds, p.interval_seconds, p.batch) == (2, 0.5, 20)
    assert p.recall.promote and p.recall.cache_bytes == 1_000_000
    assert [r.name for r in p.moves] == ["us-cold"] and p.moves[0].modalities == {"US"}
    js = tmp_path / "p.json"
    js.write_text(json.dumps({"rules": [{"action": "delete", "after_days": 3650}]}))
    assert load_policy(js).deletes[0].name == "rule-1"
    bad = tmp_path / "bad.toml"
    bad.write_text("rules = [")
    with pytest.raises(Invalid, match="not valid"):
        load_policy(bad)
    assert load_policy(tmp_path / "absent.toml") == Policy()


def test_policy_path(tmp_path: Path) -> None:
    assert policy_path(tmp_path, {}) == tmp_path / "lifecycle.toml"
    assert policy_path(tmp_path, {"STRATA_LIFECYCLE_POLICY": "/etc/p.json"}) == Path("/etc/p.json")
