"""Batched index writes (one insert per table per batch, series/study rows deduplicated before
the insert) give exactly the index that writing every event on its own gives; C-FIND reads the
stored header only when a requested key needs it.
"""

from __future__ import annotations

import pytest

from strata.processors.index import checksum
from strata.processors.index.projection import Batch
from strata.processors.index.schema import STATS_ADDED_TYPES, TABLES
from strata.processors.index.search import build_sql
from strata.processors.index.store import IndexStore
from strata.query.find import FindQuery, find
from tests.integration.conftest import other_database
from tests.integration.test_find_chdb import instance, uid
from tests.support.rows import batch, batch_of, expected_rows

pytestmark = pytest.mark.integration


def history() -> list[tuple[int, int, object]]:
    """(partition, offset, event): two studies, several series, a corrected patient name in a
    later instance, a redelivered record and a new version of an instance."""
    s1, s2 = uid(), uid()
    se = [uid() for _ in range(3)]
    sop = [uid() for _ in range(6)]
    ev = [
        (0, 10, instance(patient_id="PB1", study_uid=s1, series_uid=se[0], sop_uid=sop[0])),
        (0, 11, instance(patient_id="PB1", study_uid=s1, series_uid=se[0], sop_uid=sop[1])),
        (0, 12, instance(patient_id="PB1", study_uid=s1, series_uid=se[1], sop_uid=sop[2])),
        (
            0,
            13,
            instance(
                patient_id="PB1",
                study_uid=s1,
                series_uid=se[1],
                sop_uid=sop[3],
                patient_name="Doe^Jane",
                series_number=7,
            ),
        ),
        (0, 11, instance(patient_id="PB1", study_uid=s1, series_uid=se[0], sop_uid=sop[1])),
        (1, 5, instance(patient_id="PB2", study_uid=s2, series_uid=se[2], sop_uid=sop[4])),
        (
            1,
            6,
            instance(
                patient_id="PB2", study_uid=s2, series_uid=se[2], sop_uid=sop[4], modality="MR"
            ),
        ),
        (1, 7, instance(patient_id="PB2", study_uid=s2, series_uid=se[2], sop_uid=sop[5])),
    ]
    return ev  # type: ignore[return-value]


def test_a_batch_keeps_what_final_keeps() -> None:
    rows = [
        {"study_uid": "a", "log_version": 5, "n": 1},
        {"study_uid": "b", "log_version": 1, "n": 2},
        {"study_uid": "a", "log_version": 3, "n": 3},  # older version after a newer one
        {"study_uid": "b", "log_version": 1, "n": 4},  # equal version: the last one wins
    ]
    b = Batch()
    b.add_rows({"studies": rows})
    kept = {r["study_uid"]: r["n"] for r in b.table_rows()["studies"]}  # type: ignore[index]
    assert kept == {"a": 1, "b": 4}


def test_one_batch_equals_event_by_event(chdb_index: IndexStore) -> None:
    one_by_one = other_database(chdb_index)
    batched = other_database(chdb_index)
    events = history()
    for part, off, env in events:
        one_by_one.write(batch_of(env, part, off, "t"))  # type: ignore[arg-type]
    batched.write(batch((env, part, off, "t") for part, off, env in events))  # type: ignore[misc]

    assert checksum.table_checksums(batched) == checksum.table_checksums(one_by_one)
    assert checksum.study_checksums(batched) == checksum.study_checksums(one_by_one)
    # ... with fewer rows inserted: one per study and per series in the batch
    [(n,)] = batched.query(f"SELECT count() FROM {batched.database}.studies")
    assert n == 2
    [(n,)] = batched.query(f"SELECT count() FROM {batched.database}.series")
    assert n == 3


def test_header_is_read_only_when_a_key_needs_it(chdb_index: IndexStore) -> None:
    study, series = uid(), uid()
    env = instance(
        patient_id="PB-HDR",
        study_uid=study,
        series_uid=series,
        InstitutionName="General Hospital",
    )
    chdb_index.write(batch_of(env, 0, 900_001))
    columns_only = FindQuery(
        "STUDY", [("StudyInstanceUID", study), ("PatientName", ""), ("StudyDate", "")], 10
    )
    sql, _params, _cols = build_sql(columns_only, chdb_index.database)
    assert "header_json" not in sql
    with_header = FindQuery("STUDY", [("StudyInstanceUID", study), ("InstitutionName", "")], 10)
    sql, _params, _cols = build_sql(with_header, chdb_index.database)
    assert "header_json" in sql
    [ds] = find(chdb_index, with_header)
    assert ds.InstitutionName == "General Hospital"
    [ds] = find(chdb_index, columns_only)
    assert str(ds.PatientName) == "Doe^John" and ds.StudyDate == "20240115"
    # IMAGE level: a lookup by SOP Instance UID alone (bloom filter on a key column)
    sop = env.instance_stored.sop_instance_uid
    [ds] = find(
        chdb_index, FindQuery("IMAGE", [("SOPInstanceUID", sop), ("InstanceNumber", "")], 10)
    )
    assert ds.SOPInstanceUID == sop and int(ds.InstanceNumber) == 1


def test_find_reads_study_aggregates_from_study_stats(chdb_index: IndexStore) -> None:
    study = uid()
    for n, modality in ((1, "CT"), (2, "MR")):
        env = instance(
            patient_id="PB-AGG",
            study_uid=study,
            series_uid=uid(),
            modality=modality,
            instance_number=n,
        )
        chdb_index.write(batch_of(env, 0, 900_100 + n))
    lean = FindQuery(
        "STUDY",
        [
            ("StudyInstanceUID", study),
            ("ModalitiesInStudy", "CT"),
            ("NumberOfStudyRelatedInstances", ""),
        ],
        10,
    )
    # Precomputed per study at write time: the search does not aggregate instances.
    sql, _p, _c = build_sql(lean, chdb_index.database, only_requested=True)
    assert "study_stats FINAL" in sql and ".instances" not in sql
    # ... and the study's attributes from the same row: one table, no join with `studies`.
    assert "JOIN" not in sql and ".studies" not in sql
    [ds] = find(chdb_index, lean)
    assert list(ds.ModalitiesInStudy) == ["CT", "MR"] and int(ds.NumberOfStudyRelatedInstances) == 2
    both = FindQuery(
        "STUDY", [("StudyInstanceUID", study), ("NumberOfStudyRelatedSeries", "2")], 10
    )
    [ds] = find(chdb_index, both)
    assert int(ds.NumberOfStudyRelatedSeries) == 2


def _deleted(
    study: str, series: str, sop: str, series_emptied: bool, study_emptied: bool
) -> object:
    from strata.proto.strata.v1 import events_pb2 as pb

    env = pb.Envelope(event_id=f"del-{sop}", event_type="InstanceDeleted")
    env.study_instance_uid = study
    env.instance_deleted.CopyFrom(
        pb.InstanceDeleted(
            series_instance_uid=series,
            sop_instance_uid=sop,
            series_emptied=series_emptied,
            study_emptied=study_emptied,
        )
    )
    return env


def _study_rows(index: IndexStore, study: str) -> list[tuple[object, ...]]:
    q = FindQuery(
        "STUDY",
        [
            ("StudyInstanceUID", study),
            ("ModalitiesInStudy", ""),
            ("SOPClassesInStudy", ""),
            ("NumberOfStudyRelatedSeries", ""),
            ("NumberOfStudyRelatedInstances", ""),
        ],
        10,
    )

    def values(v: object) -> list[str]:  # pydicom gives one value as itself, several as a list
        return [] if v in (None, "") else [v] if isinstance(v, str) else list(v)  # type: ignore[call-overload]

    return [
        (
            values(ds.ModalitiesInStudy),
            len(values(ds.SOPClassesInStudy)),
            int(ds.NumberOfStudyRelatedSeries),
            int(ds.NumberOfStudyRelatedInstances),
        )
        for ds in find(index, q)
    ]


def test_study_stats_follow_deletions_moves_and_batching(chdb_index: IndexStore) -> None:
    """study_stats (the precomputed study aggregates) equal an aggregation of the current
    instances after every kind of change, whether events are written one by one or batched,
    and an index made before the table existed gets it filled on migrate."""
    study, ct, mr = uid(), uid(), uid()
    sops = [uid() for _ in range(3)]
    events = [
        (0, 1, instance(patient_id="PB-ST", study_uid=study, series_uid=ct, sop_uid=sops[0])),
        (0, 2, instance(patient_id="PB-ST", study_uid=study, series_uid=ct, sop_uid=sops[1])),
        (
            0,
            3,
            instance(
                patient_id="PB-ST", study_uid=study, series_uid=mr, sop_uid=sops[2], modality="MR"
            ),
        ),
        (0, 2, instance(patient_id="PB-ST", study_uid=study, series_uid=ct, sop_uid=sops[1])),
    ]
    one = other_database(chdb_index)
    batched = other_database(chdb_index)

    def apply(evs: list[tuple[int, int, object]]) -> None:
        for part, off, env in evs:
            one.write(batch_of(env, part, off, "t"))  # type: ignore[arg-type]
        batched.write(batch((env, p, o, "t") for p, o, env in evs))  # type: ignore[misc]
        assert checksum.table_checksums(batched) == checksum.table_checksums(one)

    apply(events)
    assert _study_rows(one, study) == [(["CT", "MR"], 2, 2, 3)]
    # the MR instance deleted (its series emptied): MR leaves ModalitiesInStudy
    apply([(0, 4, _deleted(study, mr, sops[2], True, False))])
    assert _study_rows(one, study) == [(["CT"], 1, 1, 2)]
    assert _study_rows(batched, study) == [(["CT"], 1, 1, 2)]
    # a tier move changes nothing the search returns
    moved = instance(patient_id="PB-ST", study_uid=study, series_uid=ct, sop_uid=sops[0])
    apply([(0, 5, moved)])
    assert _study_rows(one, study) == [(["CT"], 1, 1, 2)]
    # every instance deleted, the study emptied: no longer found
    apply(
        [
            (0, 6, _deleted(study, ct, sops[0], False, False)),
            (0, 7, _deleted(study, ct, sops[1], True, True)),
        ]
    )
    assert _study_rows(one, study) == [] and _study_rows(batched, study) == []
    # ... and it comes back with a later arrival
    apply([(0, 8, instance(patient_id="PB-ST", study_uid=study, series_uid=mr, modality="MR"))])
    assert _study_rows(one, study) == [(["MR"], 1, 1, 1)]

    # An index made before study_stats: dropped here, migrate() derives it again.
    before = checksum.table_checksums(one)
    one.client.command(f"DROP TABLE {one.database}.study_stats")
    one.migrate()
    assert checksum.table_checksums(one)["study_stats"] == before["study_stats"]
    assert _study_rows(one, study) == [(["MR"], 1, 1, 1)]
    # An index whose study_stats predates the study attributes in it: migrate() adds the
    # columns (same order as a fresh table) and fills them; searches match on them again.
    for c in STATS_ADDED_TYPES:
        one.client.command(f"ALTER TABLE {one.database}.study_stats DROP COLUMN {c}")
    one.migrate()
    assert checksum.table_checksums(one)["study_stats"] == before["study_stats"]
    [ds] = find(one, FindQuery("STUDY", [("PatientID", "PB-ST"), ("StudyInstanceUID", "")], 10))
    assert ds.StudyInstanceUID == study


def write_expected(index: IndexStore, rows: dict) -> None:
    """The expected rows (tests/support/rows.py: rows_for of each event, series/studies
    reduced to what FINAL keeps) inserted the plain way: every column pivoted from the row
    dicts (datetimes as they are) and inserted by the driver; study_stats; events last."""
    from strata.processors.index.schema import study_stats_sql

    for table, rs in rows.items():
        if table == "events" or not rs:
            continue
        cols = index._columns[table]
        data = [[r[c] for r in rs] for c in cols]
        index.client.insert(
            f"{index.database}.{table}", data, column_names=cols, column_oriented=True
        )
    studies = {r["study_uid"] for r in rows.get("instances", ())}
    if studies:
        index.client.command(
            study_stats_sql(index.database, "study_uid IN {studies:Array(String)}"),
            parameters={"studies": sorted(studies)},
        )
    if rows.get("events"):
        cols = index._columns["events"]
        data = [[r[c] for r in rows["events"]] for c in cols]
        index.client.insert(
            f"{index.database}.events", data, column_names=cols, column_oriented=True
        )


def test_batch_writes_give_the_expected_index(chdb_index: IndexStore) -> None:
    """The awkward log's expected rows inserted plainly (event by event, and all at once) and
    the log written as a Batch (the driver's insert: the live node's; Arrow: a replay's), checksum
    for checksum."""
    from tests.support.awkward_log import records

    log = [(env, part, off, topic) for part, off, topic, env in records()]
    want = other_database(chdb_index)
    for event in log:
        write_expected(want, expected_rows([event]))
    want_batched = other_database(chdb_index)
    write_expected(want_batched, expected_rows(log))
    new = other_database(chdb_index)
    b = batch(log)
    new.write(b)  # the driver's insert (a store's default, the live node's)
    arrow = other_database(chdb_index)
    assert arrow.use_arrow()  # as a replay writes
    arrow.write(b)
    arrow.stop_arrow()
    for index in (want_batched, new, arrow):
        assert checksum.table_checksums(index) == checksum.table_checksums(want)
        assert checksum.study_checksums(index) == checksum.study_checksums(want)
        assert checksum.positions(index) == checksum.positions(want)


def test_arrow_hand_off_equals_the_driver_insert(chdb_index: IndexStore) -> None:
    """The embedded store inserts Arrow columns straight into chDB; a ClickHouse server gets
    the driver's Native insert. Both give the same index, checksum for checksum, on a log of
    every event kind with awkward headers (tests/support/awkward_log.py), whether the log is
    written event by event through the driver or in batches of any size through Arrow."""
    from tests.support.awkward_log import records

    log = records()
    assert chdb_index._arrow is None  # a store's default: the driver's insert
    driver = other_database(chdb_index)
    for part, off, topic, env in log:
        driver.write(batch_of(env, part, off, topic))
    want_tables = checksum.table_checksums(driver)
    want_studies = checksum.study_checksums(driver)
    assert {t for t, (n, _) in want_tables.items() if n} >= set(TABLES)  # every table has rows
    for size in (len(log), 4, 1):
        arrow = other_database(chdb_index)
        assert arrow.use_arrow()
        for i in range(0, len(log), size):
            arrow.write(batch((env, p, o, t) for p, o, t, env in log[i : i + size]))
        assert checksum.table_checksums(arrow) == want_tables, size
        assert checksum.study_checksums(arrow) == want_studies, size
        assert checksum.positions(arrow) == checksum.positions(driver)
        arrow.stop_arrow()


def test_arrow_refuses_what_it_would_not_carry_exactly() -> None:
    """Values the Arrow hand-off cannot carry as the driver would (NULL in a non-Nullable
    column, bools, naive datetimes, unknown types) send the table through the driver."""
    from datetime import UTC, datetime

    from strata.processors.index.store import _arrow_columns, _NotArrow

    ok = _arrow_columns(
        ["String", "Nullable(Int64)", "DateTime64(3, 'UTC')", "UInt8", "Array(String)"],
        [["a"], [None], [datetime(2024, 1, 1, 0, 0, 0, 999999, tzinfo=UTC)], [1], [["x"]]],
    )
    assert ok.column(2).to_pylist()[0] == datetime(2024, 1, 1, 0, 0, 0, 999000, tzinfo=UTC)
    for types, cols in [
        (["String"], [[None]]),
        (["UInt8"], [[True]]),
        (["DateTime64(3, 'UTC')"], [[datetime(2024, 1, 1)]]),
        (["Map(String, String)"], [[{}]]),
        (["UInt8"], [[256]]),
        (["Array(String)"], [[["a", None]]]),
    ]:
        with pytest.raises(_NotArrow):
            _arrow_columns(types, cols)
