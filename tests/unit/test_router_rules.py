"""Routing rules and the router's state as a fold of the log (no Kafka, no network)."""

from __future__ import annotations

import json

import pytest

from strata.common.errors import Invalid
from strata.common.events import envelope
from strata.processors.router.rules import Arrival, parse, select
from strata.processors.router.state import RouterState, route_id
from strata.proto.strata.v1 import events_pb2 as pb

CONFIG = {
    "destinations": {
        "reading": {"pool": ["READ1@127.0.0.1:104", "READ2@127.0.0.1:105"], "max_attempts": 3},
        "ai": {"pool": [{"ae": "AI", "port": 11112}]},
    },
    "rules": [
        {"name": "ct-chest", "when": {"modality": ["CT"], "body_part": "chest"}, "to": "reading"},
        {"name": "site-b", "when": {"site": "B", "calling_ae": ["MOD1", "MOD2"]}, "to": ["ai"]},
        {"name": "brain-mr", "when": {"modality": "MR", "study_description": "brain|head"},
         "forward": "study", "to": "ai", "transcode": "jpeg2000-lossless"},
    ],
}  # fmt: skip


def test_conditions_combine_and_compare_like_dicom() -> None:
    cfg = parse(CONFIG)
    names = lambda a: [r.name for r in select(cfg, a)]  # noqa: E731
    assert names(Arrival(modality="CT", body_part="CHEST ")) == ["ct-chest"]
    assert names(Arrival(modality="CT", body_part="HEAD")) == []
    assert names(Arrival(modality="CT", body_part="CHEST", site="B", calling_ae="MOD2")) == [
        "ct-chest",
        "site-b",
    ]
    assert names(Arrival(modality="MR", study_description="MRI Brain w/o")) == ["brain-mr"]
    first = parse({**CONFIG, "semantics": "first-match"})
    assert [r.name for r in select(first, Arrival(modality="CT", body_part="CHEST", site="B",
                                                  calling_ae="MOD1"))] == ["ct-chest"]  # fmt: skip
    assert cfg.destinations["reading"].pool[1].port == 105
    assert cfg.rules[2].transcode_to == "1.2.840.10008.1.2.4.90"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rules": [{"name": "x", "when": {"colour": "red"}, "to": "ai"}]}, "unknown conditions"),
        ({"rules": [{"name": "x", "to": "nowhere"}]}, "unknown destination"),
        ({"rules": [{"name": "x", "to": "ai", "transcode": "jpeg-lossy"}]}, "cannot transcode"),
        ({"rules": [{"name": "x", "to": "ai", "forward": "series"}]}, "forward must be"),
        ({"rules": [{"to": "ai", "when": {"study_description": "("}}]}, "not a regex"),
        ({"destinations": {"d": {"pool": ["no-port"]}}, "rules": []}, "AE@host:port"),
        ({"semantics": "some"}, "semantics"),
        ({"rules": [{"name": "a", "to": "ai"}, {"name": "a", "to": "ai"}]}, "unique"),
    ],
)
def test_bad_configuration_is_refused_precisely(change: dict, message: str) -> None:
    with pytest.raises(Invalid, match=message):
        parse({**json.loads(json.dumps(CONFIG)), **change})


def stored(study: str, sop: str, modality: str = "CT", description: str = "") -> pb.Envelope:
    header = {"00081030": {"vr": "LO", "Value": [description]}} if description else {}
    header["00180015"] = {"vr": "CS", "Value": ["CHEST"]}
    e = pb.InstanceStored(
        sop_instance_uid=sop,
        study_instance_uid=study,
        series_instance_uid=study + ".1",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        modality=modality,
        sha256="ab" * 32,
        header_json=json.dumps(header),
    )
    return envelope(e, study_uid=study, service="ingest", node="n", event_id=f"ev-{sop}")


def decided(state: RouterState, env: pb.Envelope, p: int, off: int) -> list[pb.RouteDecided]:
    t = state.apply(env, p, off)
    assert t is not None
    return state.decide(t)


def as_env(payload: object, study: str) -> pb.Envelope:
    return envelope(payload, study_uid=study, service="router", node="n")  # type: ignore[arg-type]


def test_decisions_are_deterministic_and_survive_a_restart_without_repeating() -> None:
    cfg = parse(CONFIG)
    s = RouterState(cfg)
    [d] = decided(s, stored("1.1", "1.1.1"), 0, 10)
    assert (
        d.matched
        and d.destination == "reading"
        and d.route_id == route_id("ev-1.1.1", "ct-chest", "reading")
    )
    [nm] = decided(s, stored("1.1", "1.1.2", modality="US"), 0, 11)
    assert not nm.matched and "no rule matched" in nm.reason
    s.apply(as_env(d, "1.1"), 0, 12)
    s.apply(as_env(nm, "1.1"), 0, 13)
    assert list(s.routes) == [d.route_id] and s.holds() == {0: 12}
    # A restarted router re-reads from its watermark: triggers already decided are not again.
    again = RouterState(cfg)
    for off, env in ((10, stored("1.1", "1.1.1")), (11, stored("1.1", "1.1.2", modality="US"))):
        again.apply(env, 0, off)
    again.apply(as_env(d, "1.1"), 0, 12)
    again.apply(as_env(nm, "1.1"), 0, 13)
    t = again.apply(stored("1.1", "1.1.1"), 0, 10)
    assert t is not None and again.decide(t) == []


def test_attempts_settle_instances_and_end_events_close_routes() -> None:
    s = RouterState(parse(CONFIG))
    [d] = decided(s, stored("1.2", "1.2.1"), 1, 5)
    s.apply(as_env(d, "1.2"), 1, 6)
    retry = pb.RouteAttempted(route_id=d.route_id, sop_instance_uid="1.2.1", attempt=1,
                              outcome="retry", detail="connection refused")  # fmt: skip
    retry.next_attempt_at.seconds = 2_000_000_000
    s.apply(as_env(retry, "1.2"), 1, 7)
    p = s.routes[d.route_id].instances["1.2.1"]
    assert p.attempts == 1 and not p.settled and p.next_at == 2_000_000_000
    ok = pb.RouteAttempted(route_id=d.route_id, sop_instance_uid="1.2.1", attempt=2,
                           outcome="delivered")  # fmt: skip
    s.apply(as_env(ok, "1.2"), 1, 8)
    assert p.delivered and s.routes[d.route_id].total_attempts == 2
    s.apply(as_env(pb.RouteDelivered(route_id=d.route_id), "1.2"), 1, 9)
    assert not s.routes and s.holds() == {}
    # A duplicate of the decision (e.g. a log retry) does not reopen a closed route.
    s.apply(as_env(d, "1.2"), 1, 10)
    assert not s.routes


def test_study_rules_wait_for_stability_and_hold_the_watermark() -> None:
    s = RouterState(parse(CONFIG))
    assert decided(s, stored("1.3", "1.3.1", "MR", "Brain"), 2, 20) == []  # deferred
    assert decided(s, stored("1.3", "1.3.2", "MR", "Brain"), 2, 21) == []
    assert s.holds() == {2: 20}
    stable = envelope(
        pb.StudyStable(study_instance_uid="1.3", through_partition=2, through_offset=21),
        study_uid="1.3", service="index", node="n", event_id="stable-1",
    )  # fmt: skip
    [d] = decided(s, stable, 2, 22)
    assert d.trigger == "study-stable" and [i.sop_instance_uid for i in d.instances] == [
        "1.3.1",
        "1.3.2",
    ]
    assert d.transcode_to == "1.2.840.10008.1.2.4.90"
    s.apply(as_env(d, "1.3"), 2, 23)
    assert not s.pending and s.holds() == {2: 23}


def test_redrive_reopens_a_dead_route_with_a_fresh_budget() -> None:
    s = RouterState(parse(CONFIG))
    [d] = decided(s, stored("1.4", "1.4.1"), 0, 1)
    s.apply(as_env(d, "1.4"), 0, 2)
    s.apply(
        as_env(pb.RouteDeadLettered(route_id=d.route_id, sop_instance_uids=["1.4.1"]), "1.4"), 0, 3
    )
    assert not s.routes
    redo = pb.RouteRedriven(route_id=d.route_id, destination="reading", instances=d.instances)
    s.apply(as_env(redo, "1.4"), 0, 9)
    assert s.routes[d.route_id].instances["1.4.1"].attempts == 0 and s.holds() == {0: 9}
