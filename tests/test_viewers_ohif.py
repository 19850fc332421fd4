"""The node's SEG and SR in OHIF Viewer, as a radiologist opens them: OHIF's ready-built dist/
(npm @ohif/app, pinned in tests/viewers/package.json) served same-origin with DICOMweb proxied to
a real Orthanc + orthanc-dicomweb, driven in headless Debian chromium by puppeteer-core.

The studies (tests/viewers/study.py) hold a CT with the lung SEG and SR and the grounding + MedSAM
SR (boxes in patient coordinates), a CR with a MedSAM SEG and SR, and an Enhanced CT with a MedSAM
SEG and SR; each source's page opens its first object by the study's URL with that series as the
initial one and shows the others in the same viewport, in parallel pages of one browser.
Screenshots and browser logs are kept in
test-artifacts/viewers/ohif/ (or $MMED_VIEWER_ARTIFACTS), printed below.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.orthanc_helpers import DICOMWEB_PLUGIN, start_orthanc
from tests.viewers import installed
from tests.viewers.expected import close_rgb, distinct, numbers_in, seg_segments, shown, sr_findings
from tests.viewers.ohif_server import serve_ohif
from tests.viewers.study import ViewerStudy

#: Starts Orthanc and a browser, and loads OHIF several times.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
#: The views opened: name -> (result, object). The organ SEG and the CR's grounding and
#: classification SRs are read by Cornerstone and dcmqi only (no case OHIF's views lack).
VIEWS = {
    "ct-lung-seg": ("ct-lung", "seg"), "ct-lung-sr": ("ct-lung", "sr"), "ct-grounded-sr": ("ct-grounded", "sr"),
    "cr-seg": ("cr-medsam", "seg"), "cr-sr": ("cr-medsam", "sr"),
    "ect-seg": ("ect-medsam", "seg"), "ect-sr": ("ect-medsam", "sr"),
}
#: One page per source: its first view opened by URL, the others shown in the same viewport.
PAGES = (("ct-lung-seg", "ct-lung-sr"), ("ct-grounded-sr",), ("cr-seg", "cr-sr"), ("ect-seg", "ect-sr"))
SEG_VIEWS = [name for name, (_, kind) in VIEWS.items() if kind == "seg"]
SR_VIEWS = [name for name, (_, kind) in VIEWS.items() if kind == "sr"]
#: Pages loading at once: the suite's machine has two cores, and OHIF renders in software.
CONCURRENCY = 2


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("MMED_VIEWER_ARTIFACTS") or REPO / "test-artifacts" / "viewers") / "ohif"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _uids(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


def open_in_ohif(study: ViewerStudy, out: Path, scratch: Path) -> dict[str, Any]:
    """Upload the studies to a DICOMweb Orthanc and open every view in OHIF; the page report."""
    orthanc = start_orthanc(scratch / "orthanc", node_port=1, auto_route=False, dicomweb=True)
    try:
        orthanc.upload(study.all_files)
        views = {}
        for name, (result, kind) in VIEWS.items():
            study_uid, series_uid = _uids(getattr(study.results[result], kind))
            views[name] = {"name": name, "study": study_uid, "series": series_uid, "panel": kind}
        pages = [[views[name] for name in page] for page in PAGES]
        with serve_ohif(installed.OHIF_DIST, orthanc.http_port) as base:
            request = {"base": base, "outDir": out, "profileDir": scratch / "chromium-profile",
                       "chromium": installed.CHROMIUM, "pages": pages, "concurrency": CONCURRENCY}
            return installed.run_node("ohif_check.mjs", request, out)
    finally:
        orthanc.stop()


@pytest.fixture(scope="module")
def ohif(viewer_study: ViewerStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    installed.require(installed.OHIF_DIST / "index.html", installed.NODE_MODULES / "puppeteer-core",
                      installed.CHROMIUM, DICOMWEB_PLUGIN)
    out = artifacts_dir()
    print(f"\nOHIF screenshots and browser logs: {out}")
    return open_in_ohif(viewer_study, out, tmp_path_factory.mktemp("ohif"))


def _object(study: ViewerStudy, view: str) -> Path:
    result, kind = VIEWS[view]
    path = getattr(study.results[result], kind)
    assert path is not None
    return Path(path)


@pytest.mark.parametrize("view", list(VIEWS))
def test_no_page_error(view: str, ohif: dict[str, Any]) -> None:
    assert ohif[view]["errors"] == [], f"OHIF page errors ({ohif[view]['screenshot']})"


@pytest.mark.parametrize("view", SEG_VIEWS)
def test_seg_overlay_lists_segments_by_label(view: str, ohif: dict[str, Any], viewer_study: ViewerStudy) -> None:
    seen = ohif[view]
    declared = seg_segments(_object(viewer_study, view))
    assert sorted(s["label"] for s in seen["segments"]) == sorted(declared), seen["screenshot"]
    rows = seen["panelText"]
    assert all(label in rows for label in declared), f"segmentation panel shows {rows!r}"


@pytest.mark.parametrize("view", SEG_VIEWS)
def test_seg_overlay_uses_the_recommended_distinct_colours(view: str, ohif: dict[str, Any],
                                                          viewer_study: ViewerStudy) -> None:
    seen = ohif[view]
    declared = seg_segments(_object(viewer_study, view))
    assert seen["segments"], f"no segment hydrated ({seen['screenshot']})"
    for segment in seen["segments"]:
        expected = declared[segment["label"]]
        assert expected.rgb is not None, f"{expected.label}: no RecommendedDisplayCIELabValue, OHIF used its own palette"
        assert close_rgb(segment["color"], expected.rgb), (segment, expected)
    assert distinct([tuple(s["color"]) for s in seen["segments"]])


@pytest.mark.parametrize("view", SR_VIEWS)
def test_sr_measurements_listed_with_values(view: str, ohif: dict[str, Any], viewer_study: ViewerStudy) -> None:
    """Every finding with numbers is placed on an image, and the measurement panel lists it by
    its name with its numbers: those of all its groups (its volume too), of its drawn region
    the area (OHIF shows the region's pixel statistics on the image, not in the list)."""
    seen = ohif[view]
    findings = sr_findings(_object(viewer_study, view))
    assert findings
    loaded = {m["uid"]: m for m in seen.get("measurements", [])}
    panel = seen["panelText"]
    numbers = numbers_in(panel)
    for uid, finding in findings.items():
        assert uid in loaded, f"{finding.label}: not loaded ({seen['screenshot']})"
        assert loaded[uid]["placed"], f"{finding.label}: not placed on an image ({seen['screenshot']})"
        assert finding.label in panel, f"{finding.label}: not in the measurement panel {panel!r}"
        for meaning, value, unit in finding.headline_numbers:
            assert shown(value, numbers), f"{finding.label}: {meaning} {value} {unit} not in the panel {panel!r}"
