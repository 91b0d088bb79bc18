"""Retrieve in any transfer syntax the peer accepts (issue #16): one object per compressed
syntax of pydicom's test corpus plus generated RLE / JPEG-LS / JPEG 2000 objects, retrieved
with DCMTK getscu and movescu (to storescp) proposing (a) the stored syntax first and (b)
uncompressed syntaxes only, and with WADO-RS (default, ``*``, a listed syntax). The decoded
pixels equal the original's decoded pixels (pydicom's own decoder output for lossy sources),
every other element is equal, statuses follow PS3.4 and nothing follows the final response
(getscu's release succeeds). An Orthanc destination taking only uncompressed syntaxes
receives a JPEG 2000 study complete."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from tests.support.dcmtk import dcmtk_env, storescu
from tests.support.peers import OrthancPeer, StoreSCP, _echo
from tests.support.stack import Stack, free_port, make_stack, require_tool
from tests.support.synthetic import ct_series
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e

EXPLICIT_LE, IMPLICIT_LE = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
UNCOMPRESSED = {EXPLICIT_LE, IMPLICIT_LE}
RLE, JLS, J2K = "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90"
# one file of pydicom's test corpus per compressed syntax it holds
CORPUS = {
    "1.2.840.10008.1.2.4.50": "SC_rgb_dcmtk_+eb+cy+s2.dcm",  # JPEG baseline, YBR_FULL_422
    "1.2.840.10008.1.2.4.51": "JPGExtended.dcm",
    "1.2.840.10008.1.2.4.70": "SC_rgb_jpeg_gdcm.dcm",
    "1.2.840.10008.1.2.4.80": "MR_small_jpeg_ls_lossless.dcm",
    "1.2.840.10008.1.2.4.81": "JPEGLSNearLossless_16.dcm",
    "1.2.840.10008.1.2.4.90": "MR_small_jp2klossless.dcm",
    "1.2.840.10008.1.2.4.91": "JPEG2000.dcm",
    "1.2.840.10008.1.2.5": "SC_rgb_rle.dcm",
    "1.2.840.10008.1.2.1.99": "image_dfl.dcm",  # deflated explicit VR little endian
}
# DCMTK's "prefer/propose this syntax" flag per syntax (getscu +x?, storescu -x?)
FLAG = {
    "1.2.840.10008.1.2.4.50": "y",
    "1.2.840.10008.1.2.4.51": "x",
    "1.2.840.10008.1.2.4.70": "s",
    "1.2.840.10008.1.2.4.80": "t",
    "1.2.840.10008.1.2.4.81": "u",
    "1.2.840.10008.1.2.4.90": "v",
    "1.2.840.10008.1.2.4.91": "w",
    "1.2.840.10008.1.2.5": "r",
    "1.2.840.10008.1.2.1.99": "d",
}
ALWAYS_LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}
# Image pixel elements a decoder may rewrite (PS3.5 8.2, PS3.3 C.7.6.3), and the lossy flag
MAY_CHANGE = {
    "PixelData",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "LossyImageCompression",
}


def _rewritten(src: Path, out: Path, study: str, series: str, n: int) -> Path:
    """A copy of ``src`` in our study and series, with a fresh instance UID (the compressed
    pixel data untouched)."""
    ds = pydicom.dcmread(str(src))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientName = "TRANSCODE-1", "Transcode^Test"
    ds.InstanceNumber = n
    path = out / f"{n:03d}.dcm"
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _generated(out: Path, study: str, series_of: dict[str, str], n0: int) -> list[Path]:
    """Small CT objects compressed by pydicom's encoders in RLE, JPEG-LS and JPEG 2000
    lossless."""
    base = ct_series(out / "gen-src", 3, patient_id="TRANSCODE-1", rows=32)
    files = []
    for i, (ts, src) in enumerate(zip((RLE, JLS, J2K), base, strict=True)):
        ds = pydicom.dcmread(str(src))
        ds.compress(ts, generate_instance_uid=False)
        ds.save_as(str(src), enforce_file_format=True)
        files.append(_rewritten(src, out, study, series_of[ts], n0 + i))
    return files


def _wait_indexed(url: str, study: str, n: int) -> None:
    def indexed() -> bool:
        r = requests.get(f"{url}/studies/{study}/instances", timeout=10)
        return (len(r.json()) if r.status_code == 200 and r.content else 0) >= n

    wait_for(indexed, 60, f"{n} instances of {study} to be indexed", step=0.2)


class UncompressedSCP(StoreSCP):
    """storescp with its default transfer syntax policy (uncompressed syntaxes only), or
    ``flags`` (``+xi``: implicit VR little endian only)."""

    def __init__(self, root: Path, ae: str, flags: tuple[str, ...] = ()) -> None:
        super().__init__(root, ae)
        self.flags = list(flags)

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["storescp", "-v", *self.flags, "-aet", self.ae, "-od", str(self.out),
                 "--filename-extension", ".dcm", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, env=dcmtk_env(), start_new_session=True,
            )  # fmt: skip
        wait_for(lambda: _echo(self.port, self.ae), 20, step=0.1)  # not up: the test says so


@pytest.fixture(scope="module")
def tc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    for tool in ("getscu", "movescu", "storescu", "storescp"):
        require_tool(tool)
    root = tmp_path_factory.mktemp("transcode")
    src = root / "src"
    src.mkdir()
    study = generate_uid()
    series_of = {ts: generate_uid() for ts in [*CORPUS, RLE, JLS, J2K]}
    originals: dict[str, Path] = {}  # SOP Instance UID -> the file stored
    files = []
    for n, (ts, name) in enumerate(sorted(CORPUS.items())):
        f = _rewritten(Path(get_testdata_file(name)), src, study, series_of[ts], n + 1)
        assert str(pydicom.dcmread(str(f)).file_meta.TransferSyntaxUID) == ts
        files.append(f)
    files += _generated(root, study, series_of, 100)
    # the failure paths: an object whose JPEG data no decoder reads, alone and with a good one
    bad = Path(get_testdata_file("JPEG-lossy.dcm"))
    mixed, bad_only = generate_uid(), generate_uid()
    good = ct_series(root / "good", 1, patient_id="TRANSCODE-1", rows=32)[0]
    extra = [
        _rewritten(good, root / "good", mixed, generate_uid(), 200),
        _rewritten(bad, root / "good", mixed, generate_uid(), 201),
        _rewritten(bad, root / "good", bad_only, generate_uid(), 202),
    ]
    # an Orthanc C-MOVE destination taking only uncompressed syntaxes, and a J2K study for it
    j2k_study = generate_uid()
    j2k_dir = root / "j2k"
    j2k_files = []
    for i, f in enumerate(ct_series(j2k_dir / "src", 5, patient_id="TRANSCODE-1", rows=64)):
        ds = pydicom.dcmread(str(f))
        ds.compress(J2K, generate_instance_uid=False)
        ds.save_as(str(f), enforce_file_format=True)
        j2k_files.append(_rewritten(f, j2k_dir, j2k_study, generate_uid(), 300 + i))
    for f in files + extra + j2k_files:
        originals[str(pydicom.dcmread(str(f), stop_before_pixels=True).SOPInstanceUID)] = f

    ws_all = StoreSCP(root, "WS_ALL")  # accepts every syntax: objects arrive as stored
    ws_unc = UncompressedSCP(root, "WS_UNC")
    ws_impl = UncompressedSCP(root, "WS_IMPL", ("+xi",))
    orthanc = OrthancPeer(
        root, {"AcceptedTransferSyntaxes": [EXPLICIT_LE, IMPLICIT_LE]}, ae="ORTHANC_UNC"
    )
    s = make_stack(root / "home")
    s.env["STRATA_MOVE_DESTINATIONS"] = (
        f"WS_ALL=127.0.0.1:{ws_all.port},WS_UNC=127.0.0.1:{ws_unc.port},"
        f"WS_IMPL=127.0.0.1:{ws_impl.port},"
        f"ORTHANC_UNC=127.0.0.1:{orthanc.port},GETSCU=127.0.0.1:{free_port()}"
    )
    started: list = []
    try:
        for peer in (ws_all, ws_unc, ws_impl, orthanc):
            peer.start()
            started.append(peer)
        s.up()
        started.append(s)
        # each file proposed in exactly its own syntax (one storescu per syntax)
        by_ts: dict[str, list[Path]] = {}
        for f in files + extra + j2k_files:
            ts = str(pydicom.dcmread(str(f), stop_before_pixels=True).file_meta.TransferSyntaxUID)
            by_ts.setdefault(ts, []).append(f)
        for ts, group in by_ts.items():
            flag = [f"-x{FLAG[ts]}"] if ts in FLAG else (["-xv"] if ts == J2K else [])
            code, rsp, out = storescu(
                s.settings.ingest_port, s.settings.ingest_ae_title, group, flag
            )
            assert rsp == ["Success"] * len(group), out
        url = f"http://127.0.0.1:{s.settings.dicomweb_port}{s.settings.dicomweb_prefix}"
        _wait_indexed(url, study, len(files))
        _wait_indexed(url, mixed, 2)
        _wait_indexed(url, bad_only, 1)
        _wait_indexed(url, j2k_study, len(j2k_files))
        hot = s.settings.hot_dir
        stored = {uid: next(hot.rglob(f"{uid}.*.dcm")) for uid in originals}
        yield {
            "stack": s,
            "root": root,
            "url": url,
            "study": study,
            "series_of": series_of,
            "files": files,
            "originals": originals,
            "stored": stored,  # SOP Instance UID -> the object as the archive keeps it
            "mixed": mixed,
            "bad_only": bad_only,
            "j2k_study": j2k_study,
            "j2k_files": j2k_files,
            "ws_all": ws_all,
            "ws_unc": ws_unc,
            "ws_impl": ws_impl,
            "orthanc": orthanc,
        }
    finally:
        for peer in reversed(started):
            if isinstance(peer, Stack):
                peer.down()
            else:
                peer.stop()


# ------------------------------------------------------------------------------ helpers
def _stored_syntax(path: Path) -> str:
    return str(pydicom.dcmread(str(path), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _check_same(received: Dataset, tc: dict, as_stored: bool) -> None:
    """Decoded pixels equal to the stored object's, every other element equal; the pixel
    data's bytes unchanged when the object went out as stored."""
    original_path = tc["stored"][str(received.SOPInstanceUID)]
    original = pydicom.dcmread(str(original_path))
    got_ts = str(received.file_meta.TransferSyntaxUID)
    stored = str(original.file_meta.TransferSyntaxUID)
    where = f"{original_path.name} ({stored} -> {got_ts})"
    if as_stored:
        assert got_ts == stored, where
        assert received.PixelData == original.PixelData, where
    assert np.array_equal(received.pixel_array, original.pixel_array), where
    implicit = got_ts == IMPLICIT_LE
    raw_original = pydicom.dcmread(str(original_path))  # elements left unconverted
    raw_received = pydicom.dcmread(received.filename) if implicit else None
    for elem in original:
        if elem.keyword in MAY_CHANGE:
            continue
        assert elem.tag in received, f"{where}: {elem.tag} missing"
        if implicit and elem.tag.is_private:
            # no VR on the wire: a private value reads back in another type; compare its bytes
            if elem.VR != "SQ":
                got = raw_received.get_item(elem.tag).value  # type: ignore[union-attr]
                want = raw_original.get_item(elem.tag).value
                assert _bytes(got) == _bytes(want), f"{where}: {elem.tag}"
            continue
        assert received[elem.tag].value == elem.value, f"{where}: {elem.tag} differs"
    assert set(received.keys()) - set(original.keys()) <= {
        pydicom.datadict.tag_for_keyword(k) for k in MAY_CHANGE
    }, where
    if "LossyImageCompression" in original:  # kept
        assert received.LossyImageCompression == original.LossyImageCompression, where
    if stored in ALWAYS_LOSSY and not as_stored:  # decoded from a lossy source: marked lossy
        assert received.LossyImageCompression == "01", where


def _bytes(value: object) -> bytes:
    """A raw value's bytes (an empty or text one as pydicom may give it), padding stripped."""
    if isinstance(value, bytes):
        return value.rstrip(b" \x00")
    return str(value).encode("latin-1").rstrip(b" \x00") if value else b""


def _getscu(tc: dict, out: Path, keys: dict[str, str], flags: list[str]) -> str:
    s: Stack = tc["stack"]
    out.mkdir(parents=True, exist_ok=True)
    args = [
        "getscu",
        "-v",
        "+B",
        "-S",
        "-aet",
        "GETSCU",
        "-aec",
        s.settings.qr_ae_title,
        "-od",
        str(out),
    ]
    for k, v in keys.items():
        args += ["-k", f"{k}={v}"]
    r = subprocess.run(
        [*args, *flags, "127.0.0.1", str(s.settings.qr_port)],
        env=dcmtk_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    text = r.stdout + r.stderr
    out.with_suffix(".log").write_text(text)
    # nothing follows the final response: the association is released cleanly
    assert r.returncode == 0 and "Release Failed" not in text and "P-Data PDU" not in text, text
    return text


def _movescu(tc: dict, dest: str, study: str, success: bool = True) -> str:
    s: Stack = tc["stack"]
    r = subprocess.run(
        ["movescu", "-v", "-S", "-aet", "MOVESCU", "-aec", s.settings.qr_ae_title,
         "-aem", dest, "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
         "127.0.0.1", str(s.settings.qr_port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    text = r.stdout + r.stderr
    # movescu exits non-zero on a warning or failure status: only the release must succeed then
    assert (r.returncode == 0 or not success) and "Release Failed" not in text, text
    assert "Releasing Association" in text and "Aborting" not in text, text
    return text


# DCMTK's names of the final statuses: B000 (some sub-operations failed), A702 (all failed)
B000 = "Warning: SubOperationsCompleteOneOrMoreFailures"
A702 = "Refused: OutOfResourcesSubOperations"


def _final_status(text: str) -> str:
    """The status text of the final C-GET / C-MOVE response in DCMTK's verbose output."""
    found = re.findall(r"Received (?:Final )?(?:C-GET|Move) Response[^\n]*\(([^)]*)\)", text)
    return found[-1] if found else ""


def _received(d: Path) -> dict[str, Dataset]:
    out = {}
    for f in d.rglob("*"):
        if f.is_file():
            try:
                ds = pydicom.dcmread(str(f))
            except Exception:  # noqa: BLE001 - not a DICOM file
                continue
            out[str(ds.SOPInstanceUID)] = ds
    return out


# ------------------------------------------------------------------------------ C-GET
def test_get_each_syntax_proposed_first_goes_out_unchanged(tc: dict) -> None:
    for ts, series in sorted(tc["series_of"].items()):
        out = tc["root"] / "get-a" / ts
        text = _getscu(
            tc,
            out,
            {"QueryRetrieveLevel": "SERIES", "StudyInstanceUID": tc["study"],
             "SeriesInstanceUID": series},
            [f"+x{FLAG[ts]}"],
        )  # fmt: skip
        got = _received(out)
        want = {u: p for u, p in tc["originals"].items() if _in_series(p, series)}
        assert want and set(got) == set(want), text
        for ds in got.values():
            _check_same(ds, tc, as_stored=True)


def _in_series(path: Path, series: str) -> bool:
    return str(pydicom.dcmread(str(path), stop_before_pixels=True).SeriesInstanceUID) == series


def test_get_uncompressed_only_decodes_every_syntax(tc: dict) -> None:
    out = tc["root"] / "get-b"
    # getscu's default proposal: uncompressed syntaxes only
    text = _getscu(tc, out, {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": tc["study"]}, [])
    got = _received(out)
    assert set(got) == {str(pydicom.dcmread(str(f)).SOPInstanceUID) for f in tc["files"]}, text
    assert "Completed Suboperations : " + str(len(tc["files"])) in " ".join(text.split()), text
    for ds in got.values():
        assert str(ds.file_meta.TransferSyntaxUID) in UNCOMPRESSED
        _check_same(ds, tc, as_stored=False)


def _stored_of(tc: dict, uid: str) -> str:
    return _stored_syntax(tc["originals"][uid])


def test_get_statuses_when_objects_cannot_be_decoded(tc: dict) -> None:
    """Some sub-operations failed: B000 with the counts; all failed: A702; either way the
    association is released cleanly afterwards (no stray PDU)."""
    text = _getscu(
        tc,
        tc["root"] / "get-mixed",
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": tc["mixed"]},
        [],
    )
    assert _final_status(text) == B000, text
    assert re.search(r"Completed Suboperations\s*:\s*1", text), text
    assert re.search(r"Failed Suboperations\s*:\s*1", text), text
    assert len(_received(tc["root"] / "get-mixed")) == 1
    text = _getscu(
        tc,
        tc["root"] / "get-bad",
        {"QueryRetrieveLevel": "STUDY", "StudyInstanceUID": tc["bad_only"]},
        [],
    )
    assert _final_status(text) == A702, text
    assert re.search(r"Failed Suboperations\s*:\s*1", text), text
    assert not _received(tc["root"] / "get-bad")


# ------------------------------------------------------------------------------ C-MOVE
def test_move_to_a_destination_taking_every_syntax_sends_as_stored(tc: dict) -> None:
    text = _movescu(tc, "WS_ALL", tc["study"])
    got = {u: pydicom.dcmread(str(p)) for u, p in tc["ws_all"].received().items()}
    want = {str(pydicom.dcmread(str(f)).SOPInstanceUID): f for f in tc["files"]}
    assert set(want) <= set(got), text
    for uid in want:
        _check_same(got[uid], tc, as_stored=True)


def test_move_to_an_uncompressed_only_destination_decodes(tc: dict) -> None:
    text = _movescu(tc, "WS_UNC", tc["study"])
    got = {u: pydicom.dcmread(str(p)) for u, p in tc["ws_unc"].received().items()}
    want = {str(pydicom.dcmread(str(f)).SOPInstanceUID): f for f in tc["files"]}
    assert set(want) <= set(got), text
    for uid in want:
        assert str(got[uid].file_meta.TransferSyntaxUID) in UNCOMPRESSED
        _check_same(got[uid], tc, as_stored=False)


def test_move_to_an_implicit_vr_only_destination_decodes_to_implicit(tc: dict) -> None:
    text = _movescu(tc, "WS_IMPL", tc["study"])
    got = {u: pydicom.dcmread(str(p)) for u, p in tc["ws_impl"].received().items()}
    want = {str(pydicom.dcmread(str(f)).SOPInstanceUID) for f in tc["files"]}
    assert want <= set(got), text
    for uid in want:
        assert str(got[uid].file_meta.TransferSyntaxUID) == IMPLICIT_LE
        _check_same(got[uid], tc, as_stored=False)


def test_move_statuses_when_objects_cannot_be_decoded(tc: dict) -> None:
    before = set(tc["ws_unc"].received())
    text = _movescu(tc, "WS_UNC", tc["mixed"], success=False)
    assert _final_status(text) == B000, text
    assert len(set(tc["ws_unc"].received()) - before) == 1  # the decodable one
    text = _movescu(tc, "WS_UNC", tc["bad_only"], success=False)
    assert _final_status(text) == A702, text
    assert len(set(tc["ws_unc"].received()) - before) == 1


def test_orthanc_taking_only_uncompressed_receives_a_j2k_study_complete(tc: dict) -> None:
    orthanc: OrthancPeer = tc["orthanc"]
    text = _movescu(tc, "ORTHANC_UNC", tc["j2k_study"])
    want = {str(pydicom.dcmread(str(f)).SOPInstanceUID): f for f in tc["j2k_files"]}
    assert orthanc.sop_uids() == set(want), text + orthanc.log_tail()
    for uid in want:
        from io import BytesIO

        ds = pydicom.dcmread(BytesIO(orthanc.file_of(uid)))
        assert str(ds.file_meta.TransferSyntaxUID) in UNCOMPRESSED
        _check_same(ds, tc, as_stored=False)


# ------------------------------------------------------------------------------ WADO-RS
def _parts(r: requests.Response) -> list[tuple[str, bytes]]:
    """(part content type, body) of a multipart/related response."""
    ctype = r.headers["Content-Type"]
    boundary = re.search(r"boundary=\"?([^\";]+)", ctype).group(1)  # type: ignore[union-attr]
    out = []
    for chunk in r.content.split(b"--" + boundary.encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, body = chunk.lstrip(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n") if ": " in line)
        n = int(headers.get("Content-Length", len(body) - 2))
        out.append((headers.get("Content-Type", ""), body[:n]))
    return out


@pytest.mark.parametrize("mode", ["default", "*", "explicit"])
def test_wado_rs_study_in_the_asked_syntax(tc: dict, mode: str) -> None:
    from io import BytesIO

    accept = 'multipart/related; type="application/dicom"'
    if mode == "*":
        accept += "; transfer-syntax=*"
    elif mode == "explicit":
        accept += f"; transfer-syntax={EXPLICIT_LE}"
    r = requests.get(f"{tc['url']}/studies/{tc['study']}", headers={"Accept": accept}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    parts = _parts(r)
    assert len(parts) == len(tc["files"])
    for ctype, body in parts:
        ds = pydicom.dcmread(BytesIO(body))
        uid = str(ds.SOPInstanceUID)
        stored = _stored_of(tc, uid)
        want = stored if mode == "*" else EXPLICIT_LE
        assert str(ds.file_meta.TransferSyntaxUID) == want
        assert f"transfer-syntax={want}" in ctype
        if mode == "*":  # the stored file, unchanged
            hot = tc["stack"].settings.hot_dir
            assert body == next(hot.rglob(f"{uid}.*.dcm")).read_bytes()
        _check_same(ds, tc, as_stored=mode == "*")


def test_wado_rs_frames_uncompressed_by_default_and_compressed_when_asked(tc: dict) -> None:
    import jpeg_ls

    rle = next(
        f
        for f in tc["files"]
        if _stored_syntax(f) == RLE and pydicom.dcmread(str(f)).Modality == "CT"
    )
    ds = pydicom.dcmread(str(rle))
    base = (
        f"{tc['url']}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}/frames/1"
    )
    r = requests.get(base, timeout=30)
    assert r.status_code == 200
    [(ctype, body)] = _parts(r)
    assert ctype.startswith("application/octet-stream")
    assert body == ds.pixel_array.astype("<u2").tobytes()
    accept = f'multipart/related; type="image/jls"; transfer-syntax={JLS}'
    r = requests.get(base, headers={"Accept": accept}, timeout=30)
    assert r.status_code == 200, r.text
    [(ctype, body)] = _parts(r)
    assert ctype.startswith("image/jls") and f"transfer-syntax={JLS}" in ctype
    decoded = jpeg_ls.decode(np.frombuffer(body, dtype=np.uint8))
    assert np.array_equal(decoded.reshape(ds.pixel_array.shape), ds.pixel_array)


def test_unknown_dicomweb_paths_answer_404_json(tc: dict) -> None:
    for path in (f"/studies/{tc['study']}/rendered", "/no/such/resource"):
        r = requests.get(tc["url"] + path, timeout=10)
        assert r.status_code == 404, path
        assert r.headers["Content-Type"].startswith("application/json") and r.json()["error"]


def test_wado_rs_in_a_syntax_that_cannot_be_produced_is_406(tc: dict) -> None:
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.50'
    r = requests.get(f"{tc['url']}/studies/{tc['study']}", headers={"Accept": accept}, timeout=30)
    assert r.status_code == 406 and r.json()["error"]


def test_get_encodes_losslessly_when_the_peer_prefers_a_compressed_syntax(tc: dict) -> None:
    """An object stored uncompressed, retrieved by a getscu preferring JPEG 2000 lossless (a
    syntax the archive holds CT objects in, so it is accepted): encoded, pixels identical."""
    good = next(p for p in tc["originals"].values() if p.name == "200.dcm")  # the CT, ELE
    ds = pydicom.dcmread(str(good), stop_before_pixels=True)
    out = tc["root"] / "get-j2k"
    keys = {
        "QueryRetrieveLevel": "IMAGE",
        "StudyInstanceUID": ds.StudyInstanceUID,
        "SeriesInstanceUID": ds.SeriesInstanceUID,
        "SOPInstanceUID": ds.SOPInstanceUID,
    }
    text = _getscu(tc, out, keys, ["+xv"])
    [got] = _received(out).values()
    assert str(got.file_meta.TransferSyntaxUID) == J2K, text
    _check_same(got, tc, as_stored=False)


def test_the_matrix_covers_every_compressed_syntax_of_the_corpus() -> None:
    """No stack: pydicom's test corpus holds no compressed syntax the matrix above leaves out."""
    from pydicom.data import get_testdata_files

    found = set()
    for f in get_testdata_files("*.dcm"):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the corpus holds deliberately broken files
            continue
        ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
        if ts and ts not in (EXPLICIT_LE, IMPLICIT_LE, "1.2.840.10008.1.2.2"):
            found.add(ts)
    assert found <= set(CORPUS), sorted(found - set(CORPUS))
