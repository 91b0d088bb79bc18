"""Hostile peers of the read side and STOW-RS against one running archive (issue #15): stream
floods that would take every gRPC worker, oversize and overlong STOW-RS requests, a client
gone mid-upload, transfer syntax UIDs crafted to break JSON and headers, frame-list junk, and
an event whose storage key points outside the tier. After each: the archive's promise holds
(assert_consistent) and a legitimate modality is still served (assert_serves)."""

from __future__ import annotations

import hashlib
import json
import queue
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pydicom
import pytest
import requests
from confluent_kafka import Producer

from strata.common.events import envelope
from strata.proto.strata.v1 import events_pb2 as pb
from strata.proto.strata.v1 import query_pb2 as q
from strata.proto.strata.v1 import query_pb2_grpc as q_grpc
from tests.support.consistency import assert_consistent, assert_serves, indexed_sops
from tests.support.stack import Stack, make_stack
from tests.support.synthetic import ct_series

pytestmark = pytest.mark.e2e

MAX_PART = 256 * 1024
MAX_PARTS = 3
WATCH_CAP = 8


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    s = make_stack(tmp_path_factory.mktemp("hostile-http-home"))
    s.env.update(
        STRATA_STOW_MAX_PART_BYTES=str(MAX_PART),
        STRATA_STOW_MAX_PARTS=str(MAX_PARTS),
        STRATA_GRPC_MAX_WATCH_STREAMS=str(WATCH_CAP),
    )
    s.up()
    work = tmp_path_factory.mktemp("hostile-http-data")
    files = ct_series(work / "seed", 2, patient_id="HOSTILE-SEED")
    s.cli("send", "-q", *map(str, files))
    seed = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    acked = {str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in files}
    channel = grpc.insecure_channel(f"127.0.0.1:{s.settings.grpc_port}")
    url = f"http://127.0.0.1:{s.settings.dicomweb_port}{s.settings.dicomweb_prefix}"
    deadline = time.monotonic() + 30
    while acked - indexed_sops(s, str(seed.StudyInstanceUID)):
        assert time.monotonic() < deadline, "the seed study never became queryable"
        time.sleep(0.2)
    try:
        yield {
            "stack": s,
            "stub": q_grpc.QueryServiceStub(channel),
            "url": url,
            "acked": acked,
            "seed": seed,
            "work": work,
        }
    finally:
        channel.close()
        s.down()


def still_sound(h: dict) -> None:
    assert_consistent(h["stack"], h["acked"])
    h["acked"].add(assert_serves(h["stack"], h["work"]))


def temp_files(stack: Stack) -> list[Path]:
    return list(stack.home.rglob("stow-*"))


def multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
        for p in parts
    )
    return body + f"--{boundary}--\r\n".encode(), (
        f'multipart/related; type="application/dicom"; boundary={boundary}'
    )


def stow(h: dict, parts: list[bytes]) -> requests.Response:
    body, ctype = multipart(parts)
    return requests.post(
        h["url"] + "/studies", data=body, headers={"Content-Type": ctype}, timeout=60
    )


def ct_parts(h: dict, n: int) -> tuple[list[bytes], list[str]]:
    files = ct_series(h["work"] / uuid.uuid4().hex, n, patient_id="HOSTILE-STOW")
    sops = [str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID) for f in files]
    return [f.read_bytes() for f in files], sops


def with_transfer_syntax(data: bytes, ts: str) -> bytes:
    """Part 10 bytes (explicit VR little endian) with the meta header's TransferSyntaxUID
    replaced by ``ts`` (pydicom refuses to write a non-UID one)."""
    old = b"\x02\x00\x10\x00UI" + struct.pack("<H", 20) + b"1.2.840.10008.1.2.1\0"
    at = data.index(old)
    value = ts.encode() + (b"\0" if len(ts) % 2 else b"")
    new = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(value)) + value
    (group,) = struct.unpack("<L", data[140:144])  # (0002,0000), right after 'DICM'
    head = data[:140] + struct.pack("<L", group + len(new) - len(old)) + data[144:at]
    return head + new + data[at + len(old) :]


# ---------------------------------------------------------------------------- gRPC streams


def test_fifty_watch_streams_leave_searches_answered(h: dict) -> None:
    stub = h["stub"]
    outcomes: queue.Queue[tuple[int, str]] = queue.Queue()
    calls = [
        stub.WatchEvents(q.WatchRequest(from_beginning=True, event_types=["InstanceStored"]))
        for _ in range(50)
    ]

    def consume(i: int) -> None:
        first = True
        try:
            for _ev in calls[i]:
                if first:
                    outcomes.put((i, "event"))  # served: and the stream stays open
                    first = False
        except grpc.RpcError as exc:
            if first:
                outcomes.put((i, exc.code().name))

    threads = [threading.Thread(target=consume, args=(i,), daemon=True) for i in range(50)]
    for t in threads:
        t.start()
    try:
        got = [outcomes.get(timeout=60)[1] for _ in range(50)]
        assert got.count("event") == WATCH_CAP
        assert got.count("RESOURCE_EXHAUSTED") == 50 - WATCH_CAP
        # every allowed stream is open and holds its thread: searches are still answered
        r = stub.SearchStudies(q.SearchRequest(match={"PatientID": "HOSTILE-SEED"}), timeout=30)
        assert r.total == 1
        qido = requests.get(h["url"] + "/studies", params={"PatientID": "HOSTILE-SEED"}, timeout=30)
        assert qido.status_code == 200 and len(qido.json()) == 1
    finally:
        for c in calls:
            c.cancel()
        for t in threads:
            t.join(30)
    still_sound(h)


# ---------------------------------------------------------------------------- STOW-RS


def test_stow_oversize_part_is_refused_without_temp_files(h: dict) -> None:
    r = stow(h, [b"\0" * (4 * MAX_PART)])
    assert r.status_code == 413
    assert f"larger than {MAX_PART} bytes" in json.dumps(r.json())
    assert temp_files(h["stack"]) == []
    still_sound(h)


def test_stow_with_too_many_parts_is_refused_after_the_limit(h: dict) -> None:
    parts, sops = ct_parts(h, MAX_PARTS + 2)
    r = stow(h, parts)
    assert r.status_code == 413
    body = r.json()
    stored = [i["00081155"]["Value"][0] for i in body["00081199"]["Value"]]
    assert stored == sops[:MAX_PARTS]  # what was stored before the limit is reported stored
    assert body["00081198"]["Value"][-1]["00081197"]["Value"] == [0xA700]
    h["acked"].update(stored)
    assert temp_files(h["stack"]) == []
    still_sound(h)


def test_a_client_gone_mid_upload_leaves_no_temp_file(h: dict) -> None:
    stack = h["stack"]
    boundary = uuid.uuid4().hex
    head = (
        f"POST {stack.settings.dicomweb_prefix}/studies HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f'Content-Type: multipart/related; type="application/dicom"; boundary={boundary}\r\n'
        f"Content-Length: {100 * MAX_PART}\r\n\r\n"
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", stack.settings.dicomweb_port), 10) as sock:
        sock.sendall(head + b"\0" * (MAX_PART // 2))
        deadline = time.monotonic() + 30
        while not temp_files(stack):  # the part is being written to its temp file
            assert time.monotonic() < deadline, "the upload never reached a temp file"
            time.sleep(0.05)
    deadline = time.monotonic() + 30
    while temp_files(stack):  # the connection is gone: the partial part is removed
        assert time.monotonic() < deadline, f"temp files left: {temp_files(stack)}"
        time.sleep(0.05)
    still_sound(h)


@pytest.mark.parametrize(
    "ts", ['1.2.840.10008.1.2.1"],"vr":"UI"},"x":{"Value":["', "1.2.840.10008.1.2.1\r\nX-Evil: 1"]
)
def test_a_transfer_syntax_that_is_not_a_uid_is_refused(h: dict, ts: str) -> None:
    parts, sops = ct_parts(h, 1)
    r = stow(h, [with_transfer_syntax(parts[0], ts)])
    assert r.status_code == 409
    (failure,) = r.json()["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [0xC000]
    assert "TransferSyntaxUID" in failure["00741048"]["Value"][0]
    qido = requests.get(h["url"] + "/instances", params={"SOPInstanceUID": sops[0]}, timeout=30)
    assert qido.status_code == 200 and qido.json() == []
    assert temp_files(h["stack"]) == []
    still_sound(h)


# ---------------------------------------------------------------------------- WADO-RS frames


def test_frame_list_junk_is_400_and_out_of_range_is_404(h: dict) -> None:
    seed = h["seed"]
    base = (
        f"{h['url']}/studies/{seed.StudyInstanceUID}/series/{seed.SeriesInstanceUID}"
        f"/instances/{seed.SOPInstanceUID}"
    )
    assert requests.get(base + "/frames/1", timeout=30).status_code == 200
    for junk in ["abc", "0", "1_0", "+1", "1,,2", "%201", "1.5", ",".join(["1"] * 1001)]:
        r = requests.get(f"{base}/frames/{junk}", timeout=30)
        assert r.status_code == 400, junk
        assert "error" in r.json()
    r = requests.get(base + "/frames/1,99", timeout=30)
    assert r.status_code == 404 and "error" in r.json()
    for junk in ["x", "0", "99999999999"]:
        r = requests.get(f"{base}/frames/{junk}/rendered", timeout=30)
        assert r.status_code == 400, junk
    assert requests.get(base + "/frames/2/rendered", timeout=30).status_code == 404
    still_sound(h)


# ---------------------------------------------------------------------------- storage keys


@pytest.mark.parametrize("key", ["../../../../../../../../../etc/passwd", "/etc/passwd"])
def test_an_event_pointing_outside_the_tier_is_never_served(h: dict, key: str) -> None:
    """An InstanceStored event crafted into the study topic whose key names /etc/passwd, with
    that file's true size and SHA-256 (so nothing but the key check stands in the way)."""
    stack = h["stack"]
    secret = Path("/etc/passwd").read_bytes()
    study, series, sop = (pydicom.uid.generate_uid() for _ in range(3))
    header = pydicom.Dataset()
    header.PatientID = "HOSTILE-KEY"
    header.StudyInstanceUID, header.SeriesInstanceUID, header.SOPInstanceUID = study, series, sop
    header.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    header.Modality = "CT"
    event = pb.InstanceStored(
        sop_class_uid=header.SOPClassUID,
        sop_instance_uid=sop,
        series_instance_uid=series,
        study_instance_uid=study,
        patient=pb.PatientRef(patient_id="HOSTILE-KEY"),
        modality="CT",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size_bytes=len(secret),
        sha256=hashlib.sha256(secret).hexdigest(),
        location=pb.StorageLocation(tier="hot", key=key),
        calling_ae_title="MODALITY",
        called_ae_title="STRATA",
        peer_address="127.0.0.1:1",
        ingest_node="crafted",
        header_json=header.to_json(),
        received_via="store",
    )
    env = envelope(event, study_uid=study, service="ingest", node="crafted")
    p = Producer({"bootstrap.servers": stack.settings.kafka_bootstrap})
    p.produce(stack.settings.study_topic, key=study.encode(), value=env.SerializeToString())
    assert p.flush(30) == 0
    deadline = time.monotonic() + 30
    while sop not in indexed_sops(stack, study):
        assert time.monotonic() < deadline, "the crafted event was never indexed"
        time.sleep(0.2)

    inst = f"{h['url']}/studies/{study}/series/{series}/instances/{sop}"
    for url in (inst, f"{h['url']}/studies/{study}", inst + "/frames/1", inst + "/rendered"):
        r = requests.get(url, timeout=30)
        assert r.status_code == 404, url
        assert b"root:" not in r.content
    with pytest.raises(grpc.RpcError) as info:
        list(h["stub"].RetrieveInstances(q.RetrieveRequest(study_instance_uid=study), timeout=30))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "root:" not in (info.value.details() or "")
    still_sound(h)
