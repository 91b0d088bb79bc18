"""C-FIND against the real embedded ClickHouse engine (chDB).

Events are built the way ingest builds them (an InstanceStored payload in an Envelope, the
header as DICOM JSON), projected into a Batch at a log position and written with IndexStore;
then query.find answers identifiers. All tests share one chDB path (one per process) and keep
their data apart with distinct UIDs and patient ids.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from io import BytesIO

import pytest
from pydicom import Dataset
from pynetdicom.dsutils import decode, encode

from strata.common.dicom import header_json
from strata.common.errors import Invalid
from strata.common.events import envelope, timestamp
from strata.processors.index.store import IndexStore
from strata.proto.strata.v1 import events_pb2 as pb
from strata.query.find import FindQuery, find, parse_identifier
from tests.support.rows import batch_of

pytestmark = pytest.mark.integration

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
US = "1.2.840.10008.5.1.4.1.1.6.1"
SR = "1.2.840.10008.5.1.4.1.1.88.22"
SOP_CLASS = {"CT": CT, "MR": MR, "US": US, "SR": SR}
EXPLICIT_LE = "1.2.840.10008.1.2.1"
ROOT = "1.2.826.0.1.3680043.10.543"

_uid_seq = itertools.count(1)
_offset_seq = itertools.count(1_000)


def uid(tag: str = "") -> str:
    """A fresh UID, distinct across the whole session."""
    return f"{ROOT}.{next(_uid_seq)}{'.' + tag if tag else ''}"


def instance(
    *,
    patient_id: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    patient_name: str = "Doe^John",
    modality: str = "CT",
    study_date: str = "20240115",
    study_time: str = "101500",
    accession: str = "",
    study_description: str = "",
    series_number: int = 1,
    instance_number: int = 1,
    issuer: str = "",
    **extra: object,
) -> pb.Envelope:
    """An InstanceStored envelope as ingest would publish it."""
    sop_uid = sop_uid or uid()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SOP_CLASS[modality]
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.StudyTime = study_time
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = study_description
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    payload = pb.InstanceStored(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=sop_uid,
        series_instance_uid=series_uid,
        study_instance_uid=study_uid,
        patient=pb.PatientRef(patient_id=patient_id, issuer_of_patient_id=issuer),
        modality=modality,
        transfer_syntax_uid=EXPLICIT_LE,
        size_bytes=1234,
        sha256="0" * 64,
        location=pb.StorageLocation(tier="hot", key=f"{study_uid}/{series_uid}/{sop_uid}"),
        calling_ae_title="MODALITY",
        called_ae_title="STRATA",
        peer_address="127.0.0.1:40000",
        ingest_node="ingest-0",
        received_at=timestamp(datetime(2024, 1, 15, 10, 15, tzinfo=UTC)),
        header_json=header_json(ds),
        received_via="store",
    )
    return envelope(
        payload,
        study_uid=study_uid,
        service="ingest",
        node="ingest-0",
        occurred_at=datetime(2024, 1, 15, 10, 15, tzinfo=UTC),
        event_id=f"event-{sop_uid}",
    )


def store(index: IndexStore, *envs: pb.Envelope, offset: int | None = None) -> None:
    """Project each event at the next log offset (or the given one) and write the rows."""
    for env in envs:
        index.write(batch_of(env, 0, next(_offset_seq) if offset is None else offset))


def query(index: IndexStore, level: str, limit: int = 1000, **keys: str) -> list[Dataset]:
    """Run a C-FIND the way the SCP does: identifier -> parse_identifier -> find."""
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ident, keyword, value)
    return list(find(index, parse_identifier(ident, limit)))


def values(ds: Dataset, keyword: str) -> list[str]:
    """The values of a multi-valued attribute as a list (pydicom unwraps a single value)."""
    value = ds[keyword].value
    return [value] if isinstance(value, str) else list(value)


def test_study_level_patient_name_wildcard_is_case_insensitive(chdb_index: IndexStore) -> None:
    studies = {
        name: uid() for name in ("Zyxwild^Anna", "Zyxwild^Bert", "Other^Zyxwild", "O'Zyxwild^Cara")
    }
    for name, study in studies.items():
        store(
            chdb_index,
            instance(
                patient_id=f"PID-{name}", patient_name=name, study_uid=study, series_uid=uid()
            ),
        )

    def names(value: str) -> list[str]:
        found = query(chdb_index, "STUDY", PatientName=value, StudyInstanceUID="")
        return sorted(str(ds.PatientName) for ds in found)

    assert names("zyxwild^a*") == ["Zyxwild^Anna"]
    assert names("ZYXWILD*") == ["Zyxwild^Anna", "Zyxwild^Bert"]
    assert names("?YXWILD^bert") == ["Zyxwild^Bert"]
    assert names("zyxwild^anna") == ["Zyxwild^Anna"]  # single value, case-insensitive
    assert names("*zyxwild") == ["Other^Zyxwild"]
    assert names("zyxwild") == []  # single value matching is not a prefix match
    assert names("o'zyx*") == ["O'Zyxwild^Cara"]  # quotes travel as parameters, not SQL
    found = query(chdb_index, "STUDY", PatientName="zyxwild^b*", StudyInstanceUID="")
    assert [ds.StudyInstanceUID for ds in found] == [studies["Zyxwild^Bert"]]


def test_study_level_date_and_time_ranges(chdb_index: IndexStore) -> None:
    pid = "PID-DATES"
    by_date = {
        "20230101": ("083000", uid()),
        "20230615": ("101500.25", uid()),
        "20231231": ("1400", uid()),
        "": ("", uid()),  # a study without date and time
    }
    for date, (time, study) in by_date.items():
        store(
            chdb_index,
            instance(
                patient_id=pid, study_uid=study, series_uid=uid(), study_date=date, study_time=time
            ),
        )

    def dates(**keys: str) -> list[str]:
        found = query(chdb_index, "STUDY", PatientID=pid, **{"StudyDate": "", **keys})
        return sorted(str(ds.StudyDate or "") for ds in found)

    assert dates(StudyDate="20230601-20231231") == ["20230615", "20231231"]
    assert dates(StudyDate="20230615-") == ["20230615", "20231231"]
    assert dates(StudyDate="-20230615") == ["20230101", "20230615"]
    assert dates(StudyDate="20230615") == ["20230615"]
    assert dates(StudyDate="20240101-") == []
    assert dates() == ["", "20230101", "20230615", "20231231"]  # universal includes empty

    assert dates(StudyTime="0800-1000") == ["20230101"]
    assert dates(StudyTime="10") == ["20230615"]  # a single hour matches the whole hour
    assert dates(StudyTime="101500") == ["20230615"]  # fraction ignored
    assert dates(StudyTime="1200-") == ["20231231"]
    assert dates(StudyTime="-1015") == ["20230101", "20230615"]

    with pytest.raises(Invalid), pytest.warns(UserWarning, match="Invalid value for VR DA"):
        query(chdb_index, "STUDY", PatientID=pid, StudyDate="2023-06-15")


def test_study_level_modalities_in_study(chdb_index: IndexStore) -> None:
    pid = "PID-MODS"
    ct_sr, mr, us = uid(), uid(), uid()
    store(
        chdb_index,
        instance(patient_id=pid, study_uid=ct_sr, series_uid=uid(), modality="CT"),
        instance(patient_id=pid, study_uid=ct_sr, series_uid=uid(), modality="SR", series_number=2),
        instance(patient_id=pid, study_uid=mr, series_uid=uid(), modality="MR"),
        instance(patient_id=pid, study_uid=us, series_uid=uid(), modality="US"),
    )

    def match(value: str) -> dict[str, list[str]]:
        found = query(
            chdb_index, "STUDY", PatientID=pid, StudyInstanceUID="", ModalitiesInStudy=value
        )
        return {ds.StudyInstanceUID: values(ds, "ModalitiesInStudy") for ds in found}

    assert match("CT\\MR") == {ct_sr: ["CT", "SR"], mr: ["MR"]}
    assert match("MR") == {mr: ["MR"]}
    assert match("SR") == {ct_sr: ["CT", "SR"]}
    assert match("XA") == {}
    assert match("") == {ct_sr: ["CT", "SR"], mr: ["MR"], us: ["US"]}


def test_study_level_accession_number_is_exact_and_case_sensitive(
    chdb_index: IndexStore,
) -> None:
    pid = "PID-ACC"
    studies = {acc: uid() for acc in ("ACCX-123", "ACCX-1234", "accx-123")}
    for acc, study in studies.items():
        store(
            chdb_index, instance(patient_id=pid, study_uid=study, series_uid=uid(), accession=acc)
        )

    found = query(chdb_index, "STUDY", AccessionNumber="ACCX-123", StudyInstanceUID="")
    assert [(ds.AccessionNumber, ds.StudyInstanceUID) for ds in found] == [
        ("ACCX-123", studies["ACCX-123"])
    ]
    found = query(chdb_index, "STUDY", AccessionNumber="ACCX-12*", StudyInstanceUID="")
    assert sorted(ds.AccessionNumber for ds in found) == ["ACCX-123", "ACCX-1234"]


def test_like_metacharacters_in_values_are_literal(chdb_index: IndexStore) -> None:
    pid = "PID-LIKE"
    studies = {d: uid() for d in ("50%_off total", "50ab_off total", "50%xoff total")}
    for description, study in studies.items():
        store(
            chdb_index,
            instance(
                patient_id=pid, study_uid=study, series_uid=uid(), study_description=description
            ),
        )

    def descriptions(value: str) -> list[str]:
        found = query(chdb_index, "STUDY", PatientID=pid, StudyDescription=value)
        return sorted(ds.StudyDescription for ds in found)

    assert descriptions("50%_off*") == ["50%_off total"]
    assert descriptions("50%_off total") == ["50%_off total"]
    assert descriptions("50?_off*") == ["50%_off total"]
    assert descriptions("50*off total") == sorted(studies)


def test_study_level_study_instance_uid_list(chdb_index: IndexStore) -> None:
    pid = "PID-UIDLIST"
    a, b, c = uid(), uid(), uid()
    for study in (a, b, c):
        store(chdb_index, instance(patient_id=pid, study_uid=study, series_uid=uid()))

    found = query(chdb_index, "STUDY", StudyInstanceUID=f"{a}\\{c}")
    assert sorted(ds.StudyInstanceUID for ds in found) == sorted([a, c])
    found = query(chdb_index, "STUDY", StudyInstanceUID=b)
    assert [ds.StudyInstanceUID for ds in found] == [b]
    assert query(chdb_index, "STUDY", StudyInstanceUID=uid()) == []


def test_study_level_related_counts(chdb_index: IndexStore) -> None:
    pid = "PID-COUNTS"
    study, s1, s2 = uid(), uid(), uid()
    store(
        chdb_index,
        *[
            instance(patient_id=pid, study_uid=study, series_uid=s1, instance_number=n)
            for n in (1, 2, 3)
        ],
    )
    store(
        chdb_index,
        *[
            instance(
                patient_id=pid,
                study_uid=study,
                series_uid=s2,
                modality="MR",
                series_number=2,
                instance_number=n,
            )
            for n in (1, 2)
        ],
    )

    [ds] = query(
        chdb_index,
        "STUDY",
        StudyInstanceUID=study,
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
        ModalitiesInStudy="",
    )
    assert int(ds.NumberOfStudyRelatedSeries) == 2
    assert int(ds.NumberOfStudyRelatedInstances) == 5
    assert values(ds, "ModalitiesInStudy") == ["CT", "MR"]
    assert ds.QueryRetrieveLevel == "STUDY"

    # the counts are matching keys too (matched after grouping)
    assert len(query(chdb_index, "STUDY", PatientID=pid, NumberOfStudyRelatedInstances="5")) == 1
    assert query(chdb_index, "STUDY", PatientID=pid, NumberOfStudyRelatedInstances="4") == []


def test_series_level_restricted_by_study(chdb_index: IndexStore) -> None:
    pid = "PID-SERIES"
    study, other_study = uid(), uid()
    ct, mr, other = uid(), uid(), uid()
    store(
        chdb_index,
        *[
            instance(
                patient_id=pid,
                study_uid=study,
                series_uid=ct,
                series_number=1,
                instance_number=n,
                SeriesDescription="Thorax",
            )
            for n in (1, 2, 3)
        ],
    )
    store(
        chdb_index,
        instance(
            patient_id=pid,
            study_uid=study,
            series_uid=mr,
            modality="MR",
            series_number=2,
            SeriesDescription="Brain",
        ),
    )
    store(chdb_index, instance(patient_id=pid, study_uid=other_study, series_uid=other))

    found = query(
        chdb_index,
        "SERIES",
        StudyInstanceUID=study,
        SeriesInstanceUID="",
        Modality="",
        SeriesNumber="",
        SeriesDescription="",
        NumberOfSeriesRelatedInstances="",
    )
    got = [
        (
            ds.SeriesInstanceUID,
            ds.Modality,
            int(ds.SeriesNumber),
            ds.SeriesDescription,
            int(ds.NumberOfSeriesRelatedInstances),
            ds.StudyInstanceUID,
            ds.QueryRetrieveLevel,
        )
        for ds in found
    ]
    assert got == [
        (ct, "CT", 1, "Thorax", 3, study, "SERIES"),
        (mr, "MR", 2, "Brain", 1, study, "SERIES"),
    ]

    found = query(chdb_index, "SERIES", StudyInstanceUID=study, Modality="MR", SeriesInstanceUID="")
    assert [ds.SeriesInstanceUID for ds in found] == [mr]
    # relational: a patient-level key restricts series too
    found = query(chdb_index, "SERIES", PatientID=pid, SeriesInstanceUID="")
    assert sorted(ds.SeriesInstanceUID for ds in found) == sorted([ct, mr, other])
    found = query(
        chdb_index,
        "SERIES",
        StudyInstanceUID=study,
        NumberOfSeriesRelatedInstances="3",
        SeriesInstanceUID="",
    )
    assert [ds.SeriesInstanceUID for ds in found] == [ct]
    # study-level date/time ranges restrict series (time matched on the normalised column)
    found = query(
        chdb_index,
        "SERIES",
        PatientID=pid,
        StudyDate="20240101-20240131",
        StudyTime="1015",
        SeriesInstanceUID="",
    )
    assert sorted(ds.SeriesInstanceUID for ds in found) == sorted([ct, mr, other])
    assert query(chdb_index, "SERIES", PatientID=pid, StudyTime="1016-") == []


def test_series_level_does_not_answer_study_counts_with_series_counts(
    chdb_index: IndexStore,
) -> None:
    study, s1, s2 = uid(), uid(), uid()
    store(
        chdb_index,
        *[
            instance(patient_id="PID-SERCOUNT", study_uid=study, series_uid=s, instance_number=n)
            for s in (s1, s2)
            for n in (1, 2)
        ],
    )
    found = query(
        chdb_index,
        "SERIES",
        StudyInstanceUID=study,
        SeriesInstanceUID=s1,
        NumberOfSeriesRelatedInstances="",
        NumberOfStudyRelatedInstances="",
    )
    [ds] = found
    assert int(ds.NumberOfSeriesRelatedInstances) == 2
    # a study-level count is not known at series level: empty, never the series' count
    assert "NumberOfStudyRelatedInstances" in ds
    assert ds.NumberOfStudyRelatedInstances in (None, "")


def test_image_level_by_series(chdb_index: IndexStore) -> None:
    study, series = uid(), uid()
    sops = {n: uid() for n in (3, 1, 2)}
    store(
        chdb_index,
        *[
            instance(
                patient_id="PID-IMAGE",
                study_uid=study,
                series_uid=series,
                sop_uid=sop,
                instance_number=n,
            )
            for n, sop in sops.items()
        ],
    )
    store(chdb_index, instance(patient_id="PID-IMAGE", study_uid=study, series_uid=uid()))

    found = query(
        chdb_index,
        "IMAGE",
        StudyInstanceUID=study,
        SeriesInstanceUID=series,
        SOPInstanceUID="",
        SOPClassUID="",
        InstanceNumber="",
    )
    assert [(ds.SOPInstanceUID, ds.SOPClassUID, int(ds.InstanceNumber)) for ds in found] == [
        (sops[1], CT, 1),
        (sops[2], CT, 2),
        (sops[3], CT, 3),
    ]
    assert all(ds.QueryRetrieveLevel == "IMAGE" for ds in found)

    found = query(
        chdb_index, "IMAGE", SeriesInstanceUID=series, InstanceNumber="1\\3", SOPInstanceUID=""
    )
    assert [ds.SOPInstanceUID for ds in found] == [sops[1], sops[3]]
    found = query(chdb_index, "IMAGE", SeriesInstanceUID=series, SOPInstanceUID=sops[2])
    assert [ds.SOPInstanceUID for ds in found] == [sops[2]]
    assert len(query(chdb_index, "IMAGE", SeriesInstanceUID=series, limit=2)) == 2


def test_patient_level_related_counts(chdb_index: IndexStore) -> None:
    pid, other_pid = "PID-PATLEVEL-1", "PID-PATLEVEL-2"
    st1, st2, st3 = uid(), uid(), uid()
    store(
        chdb_index,
        instance(patient_id=pid, patient_name="Patlevel^One", study_uid=st1, series_uid=uid()),
        instance(patient_id=pid, patient_name="Patlevel^One", study_uid=st2, series_uid=uid()),
        instance(patient_id=pid, patient_name="Patlevel^One", study_uid=st2, series_uid=uid()),
        instance(
            patient_id=other_pid, patient_name="Patlevel^Two", study_uid=st3, series_uid=uid()
        ),
    )

    found = query(
        chdb_index,
        "PATIENT",
        PatientID="PID-PATLEVEL-*",
        PatientName="",
        PatientBirthDate="",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedSeries="",
        NumberOfPatientRelatedInstances="",
    )
    got = [
        (
            ds.PatientID,
            str(ds.PatientName),
            ds.PatientBirthDate,
            int(ds.NumberOfPatientRelatedStudies),
            int(ds.NumberOfPatientRelatedSeries),
            int(ds.NumberOfPatientRelatedInstances),
        )
        for ds in found
    ]
    assert got == [
        (pid, "Patlevel^One", "19700101", 2, 3, 3),
        (other_pid, "Patlevel^Two", "19700101", 1, 1, 1),
    ]
    found = query(
        chdb_index,
        "PATIENT",
        PatientName="patlevel^*",
        NumberOfPatientRelatedStudies="2",
        PatientID="",
    )
    assert [ds.PatientID for ds in found] == [pid]


def test_return_key_not_indexed_is_answered_from_header(chdb_index: IndexStore) -> None:
    study = uid()
    store(
        chdb_index,
        instance(
            patient_id="PID-HEADER",
            study_uid=study,
            series_uid=uid(),
            PatientAge="045Y",
            InstitutionName="St. Mary's Hospital",
        ),
    )

    [ds] = query(chdb_index, "STUDY", StudyInstanceUID=study, PatientAge="", InstitutionName="")
    assert ds.PatientAge == "045Y"
    assert ds.InstitutionName == "St. Mary's Hospital"
    [ds] = query(chdb_index, "PATIENT", PatientID="PID-HEADER", PatientAge="", PatientName="")
    assert ds.PatientAge == "045Y" and ds.PatientID == "PID-HEADER"


def test_requested_key_absent_everywhere_is_returned_empty(chdb_index: IndexStore) -> None:
    study = uid()
    store(chdb_index, instance(patient_id="PID-ABSENT", study_uid=study, series_uid=uid()))

    [ds] = query(
        chdb_index,
        "STUDY",
        StudyInstanceUID=study,
        PatientWeight="",
        OtherPatientIDs="",
        StudyDescription="",
    )
    for keyword in ("PatientWeight", "OtherPatientIDs", "StudyDescription"):
        assert keyword in ds, keyword
        assert ds[keyword].value in (None, ""), keyword


def test_study_level_does_not_leak_lower_level_values(chdb_index: IndexStore) -> None:
    study = uid()
    store(chdb_index, instance(patient_id="PID-LOWER", study_uid=study, series_uid=uid()))

    [ds] = query(
        chdb_index, "STUDY", StudyInstanceUID=study, SeriesInstanceUID="", SOPInstanceUID=""
    )
    # keys below the query level are not answered from one arbitrary instance's header
    assert ds.SeriesInstanceUID in (None, "")
    assert ds.SOPInstanceUID in (None, "")


def test_later_event_for_same_instance_supersedes(chdb_index: IndexStore) -> None:
    study, series, sop = uid(), uid(), uid()
    first = instance(
        patient_id="PID-VERSION",
        patient_name="Old^Name",
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        study_description="First",
        instance_number=1,
    )
    second = instance(
        patient_id="PID-VERSION",
        patient_name="New^Name",
        study_uid=study,
        series_uid=series,
        sop_uid=sop,
        study_description="Second",
        instance_number=7,
    )
    # the later log position wins whatever the order the rows reach the store in
    store(chdb_index, second, offset=500_020)
    store(chdb_index, first, offset=500_010)

    found = query(chdb_index, "IMAGE", StudyInstanceUID=study, SOPInstanceUID="", InstanceNumber="")
    assert [(ds.SOPInstanceUID, int(ds.InstanceNumber)) for ds in found] == [(sop, 7)]
    [ds] = query(
        chdb_index,
        "STUDY",
        StudyInstanceUID=study,
        PatientName="",
        StudyDescription="",
        NumberOfStudyRelatedInstances="",
    )
    assert (str(ds.PatientName), ds.StudyDescription) == ("New^Name", "Second")
    assert int(ds.NumberOfStudyRelatedInstances) == 1
    assert query(chdb_index, "STUDY", StudyInstanceUID=study, PatientName="old*") == []
    [ds] = query(chdb_index, "PATIENT", PatientID="PID-VERSION", PatientName="")
    assert str(ds.PatientName) == "New^Name"


def test_writing_the_same_rows_twice_is_idempotent(chdb_index: IndexStore) -> None:
    study, series = uid(), uid()
    envs = [
        instance(patient_id="PID-IDEMPOTENT", study_uid=study, series_uid=series, instance_number=n)
        for n in (1, 2)
    ]
    for _ in range(2):  # a redelivered batch
        for i, env in enumerate(envs):
            chdb_index.write(batch_of(env, 3, 700_000 + i))

    found = query(chdb_index, "IMAGE", StudyInstanceUID=study, SOPInstanceUID="")
    assert len(found) == 2
    [ds] = query(
        chdb_index,
        "STUDY",
        StudyInstanceUID=study,
        NumberOfStudyRelatedSeries="",
        NumberOfStudyRelatedInstances="",
    )
    assert (int(ds.NumberOfStudyRelatedSeries), int(ds.NumberOfStudyRelatedInstances)) == (1, 2)
    [ds] = query(chdb_index, "SERIES", SeriesInstanceUID=series, NumberOfSeriesRelatedInstances="")
    assert int(ds.NumberOfSeriesRelatedInstances) == 2
    [ds] = query(
        chdb_index,
        "PATIENT",
        PatientID="PID-IDEMPOTENT",
        NumberOfPatientRelatedStudies="",
        NumberOfPatientRelatedInstances="",
    )
    assert int(ds.NumberOfPatientRelatedStudies) == 1
    assert int(ds.NumberOfPatientRelatedInstances) == 2


def test_non_ascii_patient_name_round_trips_as_utf8(chdb_index: IndexStore) -> None:
    study, ascii_study = uid(), uid()
    store(
        chdb_index,
        instance(
            patient_id="PID-UTF8", patient_name="Müller^Jürgen", study_uid=study, series_uid=uid()
        ),
    )
    store(
        chdb_index,
        instance(
            patient_id="PID-UTF8-ASCII",
            patient_name="Mueller^Juergen",
            study_uid=ascii_study,
            series_uid=uid(),
        ),
    )

    for value in ("Müller^Jürgen", "müller*", "MÜLLER^JÜRGEN", "*ü*"):
        found = query(
            chdb_index, "STUDY", PatientName=value, PatientID="PID-UTF8*", StudyInstanceUID=""
        )
        assert [ds.StudyInstanceUID for ds in found] == [study], value

    [ds] = query(chdb_index, "STUDY", StudyInstanceUID=study, PatientName="")
    assert str(ds.PatientName) == "Müller^Jürgen"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    # the identifier survives the wire encoding the SCP applies
    wire = encode(ds, True, True)
    assert wire is not None and "Müller^Jürgen".encode() in wire
    back = decode(BytesIO(wire), True, True)
    assert str(back.PatientName) == "Müller^Jürgen"

    [ds] = query(chdb_index, "STUDY", StudyInstanceUID=ascii_study, PatientName="")
    assert str(ds.PatientName) == "Mueller^Juergen"
    assert "SpecificCharacterSet" not in ds


def test_non_ascii_inside_sequences_and_multi_values_declares_utf8(
    chdb_index: IndexStore,
) -> None:
    study = uid()
    code = Dataset()
    code.CodeValue = "CTSCH"
    code.CodingSchemeDesignator = "99LOCAL"
    code.CodeMeaning = "CT Schädel"
    store(
        chdb_index,
        instance(
            patient_id="PID-UTF8-SEQ",
            study_uid=study,
            series_uid=uid(),
            ProcedureCodeSequence=[code],
            OtherPatientIDs=["Zürich-1", "Z2"],
        ),
    )

    [ds] = query(chdb_index, "STUDY", StudyInstanceUID=study, ProcedureCodeSequence=[])
    assert ds.ProcedureCodeSequence[0].CodeMeaning == "CT Schädel"
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    back = decode(BytesIO(encode(ds, True, True)), True, True)
    assert back.ProcedureCodeSequence[0].CodeMeaning == "CT Schädel"

    [ds] = query(chdb_index, "STUDY", StudyInstanceUID=study, OtherPatientIDs="")
    assert list(ds.OtherPatientIDs) == ["Zürich-1", "Z2"]
    assert ds.SpecificCharacterSet == "ISO_IR 192"


@pytest.mark.parametrize("level", ["", "FOO", "SERIESX"])
def test_invalid_query_retrieve_level_is_rejected(level: str) -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    ident.PatientID = "X"
    with pytest.raises(Invalid):
        parse_identifier(ident, 10)


def test_missing_query_retrieve_level_is_rejected() -> None:
    ident = Dataset()
    ident.PatientID = "X"
    with pytest.raises(Invalid):
        parse_identifier(ident, 10)


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")
def test_parse_identifier_keeps_keys_and_multi_values() -> None:
    ident = Dataset()
    ident.QueryRetrieveLevel = "study"
    ident.SpecificCharacterSet = "ISO_IR 100"
    ident.PatientName = "Doe*"
    ident.ModalitiesInStudy = ["CT", "MR"]
    ident.StudyDate = ""
    q = parse_identifier(ident, 25)
    assert q == FindQuery(
        "STUDY",
        # in tag order, as pydicom iterates
        [("StudyDate", ""), ("ModalitiesInStudy", "CT\\MR"), ("PatientName", "Doe*")],
        25,
    )
