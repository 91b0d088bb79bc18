"""A small log of every kind of event the index projects, with awkward headers: for the tests
proving that the column-oriented projection (projection.Batch) and its Arrow hand-off to chDB
give exactly the rows expected of each event (rows_for), and so the same index, checksum for
checksum.

What it holds: PN values with ideographic/phonetic groups and several values, multi-valued
strings, numbers (ints, floats, a huge int, -0.0) in IS attributes, blank padding, null inside a
multi-value, an empty "Value", a missing element, an empty header, a header msgspec refuses
(NaN: the json.loads fallback), non-ASCII text, a redelivered record, a new version of an
instance, tier moves, deletions that empty a series and a study, a re-arrival after deletion,
routing decisions/attempts/end states, legal holds, accesses, study stability, quarantine
records, timestamps at millisecond edges and unset timestamps.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from strata.common.events import envelope, timestamp
from strata.proto.strata.v1 import events_pb2 as pb

T0 = datetime(2024, 3, 1, 8, 30, 15, 250000, tzinfo=UTC)
ROOT = "1.2.826.0.1.3680043.10.543.77"

# (partition, offset, topic, envelope)
Record = tuple[int, int, str, pb.Envelope]


def _elem(vr: str, *values: Any) -> dict[str, Any]:
    return {"vr": vr, "Value": list(values)}


def headers() -> list[str]:
    """DICOM JSON headers with the indexed attributes in every awkward form."""
    base = {
        "00100010": _elem(
            "PN",
            {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"},
        ),
        "00100030": _elem("DA", "19700102"),
        "00100040": _elem("CS", "M"),
        "00080020": _elem("DA", "20240301"),
        "00080030": _elem("TM", "083015.25"),
        "00080050": _elem("SH", "  ACC 1  "),
        "00200010": _elem("SH", "S1"),
        "00081030": _elem("LO", "CT Thorax", "second value"),
        "00080090": _elem("PN", {"Alphabetic": "Ref^Doc"}, {"Alphabetic": "Other^Doc"}),
        "00200011": _elem("IS", 3),
        "0008103E": _elem("LO", "Axial ü"),
        "00180015": _elem("CS", "CHEST"),
        "00200013": _elem("IS", 12),
        "00081032": _elem("SQ", {"00100010": _elem("PN", {"Alphabetic": "Nested^Name"})}),
    }
    out = [json.dumps(base, separators=(",", ":"), ensure_ascii=False)]
    v2 = dict(base)
    v2["00100010"] = _elem(
        "PN", {"Ideographic": "山田"}, None, {"Alphabetic": "B", "Phonetic": "b"}
    )
    v2["00200011"] = _elem("IS", 1.5, -0.0, 123456789012345678901234567890)
    v2["00200013"] = _elem("IS", "7", 8)
    v2["00081030"] = {"vr": "LO", "Value": []}
    v2["00080030"] = _elem("TM", "10:15")
    del v2["00100040"]
    v2["00080050"] = {"vr": "SH"}
    out.append(json.dumps(v2))
    out.append('{"00200013":{"vr":"IS","Value":[NaN]},"00080020":{"vr":"DA","Value":["20240102"]}}')
    out.append('{"00080020":{"vr":"DA","Value":null},"00100010":{"vr":"PN","Value":[""]}}')
    out.append("{}")
    out.append("")
    out.append(
        json.dumps(
            {
                "00100010": _elem("PN", {"Alphabetic": " Padded^Name ", "Ideographic": ""}),
                "00200011": _elem("IS", -4),
                "00080030": _elem("TM", "2359"),
            }
        )
    )
    return out


def _stored(study: str, series: str, sop: str, header: str, **kw: Any) -> pb.InstanceStored:
    received: datetime = kw.pop("received", T0)
    p = pb.InstanceStored(
        sop_class_uid=kw.pop("sop_class_uid", "1.2.840.10008.5.1.4.1.1.2"),
        sop_instance_uid=sop,
        series_instance_uid=series,
        study_instance_uid=study,
        patient=pb.PatientRef(patient_id=kw.pop("patient_id", "P1"), issuer_of_patient_id="HOSP"),
        modality=kw.pop("modality", "CT"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size_bytes=kw.pop("size_bytes", 4242),
        sha256=kw.pop("sha256", "ab" * 32),
        location=pb.StorageLocation(tier=kw.pop("tier", "hot"), key=kw.pop("key", f"k/{sop}")),
        calling_ae_title=kw.pop("calling_ae_title", "CT1"),
        called_ae_title="STRATA",
        ingest_node="ingest-0",
        received_via="store",
        header_json=header,
        **kw,
    )
    if received is not None:
        p.received_at.CopyFrom(timestamp(received))
    return p


def _env(payload: Any, study: str, at: datetime | None, n: int) -> pb.Envelope:
    env = envelope(
        payload,
        study_uid=study,
        service="ingest",
        node="node-ü",
        occurred_at=at or T0,
        event_id=f"evt-{n}",
    )
    if at is None:  # an unset occurred_at (epoch in the rows)
        env.ClearField("occurred_at")
    return env


def records() -> list[Record]:
    """The log, in log order per partition (two study partitions and a quarantine topic)."""
    hs = headers()
    study_topic, quarantine = "strata.study-events.v1", "strata.quarantine.v1"
    s1, s2 = f"{ROOT}.1", f"{ROOT}.2"
    se = [f"{ROOT}.1.{i}" for i in range(3)] + [f"{ROOT}.2.1"]
    out: list[Record] = []
    n = 0

    def add(
        part: int,
        study: str,
        payload: Any,
        topic: str = study_topic,
        at: datetime | None = T0,
        offset: int | None = None,
    ) -> pb.Envelope:
        nonlocal n
        n += 1
        env = _env(payload, study, at, n)
        off = (
            offset if offset is not None else sum(1 for p, *_ in out if p == part and _[1] == topic)
        )
        out.append((part, off, topic, env))
        return env

    # study 1 on partition 0: every header, several series, millisecond-edge timestamps
    edges = [timedelta(microseconds=us) for us in (0, 999, 999_500, 1_000, 999_999, 123_456)]
    for i, h in enumerate(hs):
        sop = f"{ROOT}.1.0.{i}"
        add(
            0,
            s1,
            _stored(
                s1,
                se[i % 3],
                sop,
                h,
                received=T0 + edges[i % len(edges)],
                modality="MR" if i % 3 == 2 else "CT",
            ),
            at=T0 + edges[(i + 1) % 6],
        )
    # strings the events payload JSON must escape as json.dumps does
    add(
        0,
        s1,
        _stored(
            s1,
            se[0],
            f"{ROOT}.1.0.99",
            hs[0],
            calling_ae_title='Q"\\\t\x01ä\u2028',
            key="ключ/😀",
            modality="",
            size_bytes=2**64 - 1,
        ),
    )
    first = out[0][3]
    add(
        0,
        s1,
        _stored(
            s1,
            se[0],
            f"{ROOT}.1.0.0",
            hs[1],
            received=None,
            sha256="cd" * 32,
            supersedes_sha256="ab" * 32,
        ),
        at=None,
    )  # a new version, unset times
    out.append((0, out[0][1], study_topic, first))  # a redelivered record (same offset)
    moved = _stored(s1, se[1], f"{ROOT}.1.0.1", hs[1])
    add(
        0,
        s1,
        pb.TierTransitioned(
            sop_instance_uid=moved.sop_instance_uid,
            series_instance_uid=se[1],
            sha256=moved.sha256,
            size_bytes=moved.size_bytes,
            source=moved.location,
            target=pb.StorageLocation(tier="cold", key="s3/k"),
            policy="age-90d",
            study_instance_uid=s1,
            instance=moved,
        ),
    )
    add(
        0,
        s1,
        pb.InstanceDeleted(
            sop_instance_uid=f"{ROOT}.1.0.2",
            series_instance_uid=se[2],
            sha256="ab" * 32,
            series_emptied=True,
            study_instance_uid=s1,
        ),
    )
    add(0, s1, pb.LegalHoldPlaced(hold_id="h1", reason="litigation", placed_by="ops"))
    add(0, s1, pb.StudyAccessed(via="wado"))
    add(
        0,
        s1,
        pb.StudyStable(
            study_instance_uid=s1, through_partition=0, through_offset=3, quiet_seconds=30
        ),
    )
    routed = pb.RoutedInstance(
        sop_instance_uid=f"{ROOT}.1.0.0",
        series_instance_uid=se[0],
        sha256="ab" * 32,
        size_bytes=1,
        location=pb.StorageLocation(tier="hot", key="k"),
    )
    add(
        0,
        s1,
        pb.RouteDecided(
            route_id="r1",
            matched=True,
            rule="all-ct",
            destination="pacs",
            trigger="instance",
            instances=[routed],
            reason="modality=CT",
        ),
    )
    add(
        0,
        s1,
        pb.RouteAttempted(
            route_id="r1",
            sop_instance_uid=f"{ROOT}.1.0.0",
            attempt=1,
            destination="pacs",
            outcome="retry",
            detail="refused",
        ),
    )
    add(
        0,
        s1,
        pb.RouteDeadLettered(
            route_id="r1",
            destination="pacs",
            sop_instance_uids=[f"{ROOT}.1.0.0", "x"],
            reason="rejected",
        ),
    )
    add(
        0,
        s1,
        pb.RouteRedriven(route_id="r1", requested_by="ops", destination="pacs", instances=[routed]),
    )
    add(0, s1, pb.RouteDelivered(route_id="r1", destination="pacs", instances=1, attempts=2))
    add(0, s1, pb.RouteDecided(route_id="r2", matched=False, reason="no rule"))
    add(0, s1, pb.LegalHoldReleased(hold_id="h1", reason="settled", released_by="ops"))
    # study 2 on partition 1: emptied by deletions, then an instance arrives again
    for i in range(3):
        add(1, s2, _stored(s2, se[3], f"{ROOT}.2.1.{i}", hs[i % 2], patient_id="P2"))
    add(
        1,
        s2,
        pb.InstanceDeleted(
            sop_instance_uid=f"{ROOT}.2.1.0", series_instance_uid=se[3], study_instance_uid=s2
        ),
    )
    add(
        1,
        s2,
        pb.InstanceDeleted(
            sop_instance_uid=f"{ROOT}.2.1.1", series_instance_uid=se[3], study_instance_uid=s2
        ),
    )
    add(
        1,
        s2,
        pb.InstanceDeleted(
            sop_instance_uid=f"{ROOT}.2.1.2",
            series_instance_uid=se[3],
            series_emptied=True,
            study_emptied=True,
            study_instance_uid=s2,
        ),
    )
    add(1, s2, _stored(s2, se[3], f"{ROOT}.2.1.1", hs[0], patient_id="P2-corrected"))
    # quarantine records (events table only), one without a study
    add(
        0,
        s2,
        pb.InstanceQuarantined(reason="missing-uid", detail="no (0020,000D)"),
        topic=quarantine,
    )
    add(0, "", pb.InstanceQuarantined(reason="truncated"), topic=quarantine)
    return out
