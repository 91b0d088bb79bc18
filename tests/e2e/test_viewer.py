"""The OHIF viewer, in a real browser (Debian's chromium driven by playwright-core), against
this archive's DICOMweb: the study list finds a stored CT study, the viewer opens it and the
viewport shows a rendered image, with no failed DICOMweb request."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import requests
from PIL import Image

from tests.support.stack import Stack, make_stack, require_tool
from tests.support.wait import wait_for

pytestmark = pytest.mark.e2e
HERE = Path(__file__).parent / "viewer"
CT = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"


@pytest.fixture(scope="module")
def vstack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_tool("node")
    if not Path("/usr/bin/chromium").exists():
        raise AssertionError("Debian's chromium is not installed (make deps)")
    if not (HERE / "node_modules" / "playwright-core").is_dir():
        raise AssertionError("playwright-core is not installed (make deps: npm ci)")
    s = make_stack(tmp_path_factory.mktemp("viewer-home"))
    s.cli("viewer", "install", timeout=900)
    s.up()
    s.cli("send", "-q", str(CT))
    study = str(pydicom.dcmread(str(CT), stop_before_pixels=True).StudyInstanceUID)
    qido = f"http://127.0.0.1:{s.settings.dicomweb_port}{s.settings.dicomweb_prefix}/studies"

    def indexed() -> bool:  # the study list the viewer opens with finds the study
        r = requests.get(qido, params={"StudyInstanceUID": study}, timeout=10)
        return r.status_code == 200 and len(r.json()) == 1

    wait_for(indexed, 30, "the CT study to be found by QIDO-RS")
    try:
        yield s
    finally:
        s.down()


def test_ohif_opens_a_stored_ct_study(vstack: Stack, tmp_path: Path) -> None:
    ct = pydicom.dcmread(str(CT), stop_before_pixels=True)
    family = str(ct.PatientName).split("^")[0]
    out = tmp_path / "viewport.png"
    base = f"http://127.0.0.1:{vstack.settings.dicomweb_port}"
    r = subprocess.run(
        ["node", str(HERE / "ohif.mjs"), base, family, str(ct.StudyInstanceUID), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=HERE,
    )
    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert "error" not in report, report
    assert report["failed"] == [], report["failed"]
    assert report["dicomweb"] >= 3  # QIDO, metadata, frames at least
    assert report["lit_pixels"] > 1000, report
    img = Image.open(out).convert("L")
    hist = img.histogram()
    lit = sum(hist[40:])
    assert lit > 0.05 * img.width * img.height, "the viewport screenshot is (nearly) blank"
    shutil.copy(out, vstack.home / "viewport.png")
