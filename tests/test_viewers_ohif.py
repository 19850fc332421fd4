"""The node's SEG and SR in OHIF Viewer, as a radiologist opens them: OHIF's ready-built dist/
(npm @ohif/app, pinned in tests/viewers/package.json) served same-origin with DICOMweb proxied to
a real Orthanc + orthanc-dicomweb, driven in headless Debian chromium by puppeteer-core.

One study (tests/viewers/study.py) holds a CT with the lung SEG and SR and a CR with a MedSAM SEG
and SR; each is opened by StudyInstanceUID URL with its series as the initial one. Screenshots and
browser logs are kept in test-artifacts/viewers/ohif/ (or $MMED_VIEWER_ARTIFACTS), printed below.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.orthanc_helpers import DICOMWEB_PLUGIN, start_orthanc
from tests.viewers import installed
from tests.viewers.expected import close_rgb, distinct, seg_segments, sr_measurement_groups
from tests.viewers.ohif_server import serve_ohif
from tests.viewers.study import ViewerStudy

REPO = Path(__file__).resolve().parent.parent
VIEWS = {"ct-seg": ("ct", "seg"), "ct-sr": ("ct", "sr"), "cr-seg": ("cr", "seg"), "cr-sr": ("cr", "sr")}


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("MMED_VIEWER_ARTIFACTS") or REPO / "test-artifacts" / "viewers") / "ohif"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _series(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SeriesInstanceUID)


@pytest.fixture(scope="module")
def ohif(viewer_study: ViewerStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    installed.require(installed.OHIF_DIST / "index.html", installed.NODE_MODULES / "puppeteer-core",
                      installed.CHROMIUM, DICOMWEB_PLUGIN)
    out = artifacts_dir()
    print(f"\nOHIF screenshots and browser logs: {out}")
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc-dicomweb"), node_port=1, auto_route=False, dicomweb=True)
    try:
        orthanc.upload(viewer_study.all_files)
        results = {"ct": viewer_study.ct, "cr": viewer_study.cr}
        views = [{"name": name, "series": _series(getattr(results[kind], panel)), "panel": panel}
                 for name, (kind, panel) in VIEWS.items()]
        with serve_ohif(installed.OHIF_DIST, orthanc.http_port) as base:
            request = {"base": base, "study": viewer_study.study_uid, "outDir": out,
                       "profileDir": tmp_path_factory.mktemp("chromium-profile"),
                       "chromium": installed.CHROMIUM, "views": views}
            report = installed.run_node("ohif_check.mjs", request, out)
    finally:
        orthanc.stop()
    return report


@pytest.mark.parametrize("view", list(VIEWS))
def test_no_page_error(view: str, ohif: dict[str, Any]) -> None:
    assert ohif[view]["errors"] == [], f"OHIF page errors ({ohif[view]['screenshot']})"


@pytest.mark.parametrize("kind", ["ct", "cr"])
def test_seg_overlay_lists_segments_by_label(kind: str, ohif: dict[str, Any], viewer_study: ViewerStudy) -> None:
    seen = ohif[f"{kind}-seg"]
    declared = seg_segments(getattr(viewer_study, kind).seg)
    assert sorted(s["label"] for s in seen["segments"]) == sorted(declared), seen["screenshot"]
    rows = seen["panelText"]
    assert all(label in rows for label in declared), f"segmentation panel shows {rows!r}"


@pytest.mark.parametrize("kind", ["ct", "cr"])
def test_seg_overlay_uses_the_recommended_distinct_colours(kind: str, ohif: dict[str, Any],
                                                          viewer_study: ViewerStudy) -> None:
    seen = ohif[f"{kind}-seg"]
    declared = seg_segments(getattr(viewer_study, kind).seg)
    assert seen["segments"], f"no segment hydrated ({seen['screenshot']})"
    for segment in seen["segments"]:
        expected = declared[segment["label"]]
        assert expected.rgb is not None, f"{expected.label}: no RecommendedDisplayCIELabValue, OHIF used its own palette"
        assert close_rgb(segment["color"], expected.rgb), (segment, expected)
    assert distinct([tuple(s["color"]) for s in seen["segments"]])


def _numbers(text: str) -> list[float]:
    return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*\.?\d*", text)]


@pytest.mark.parametrize("kind", ["ct", "cr"])
def test_sr_measurements_listed_with_values(kind: str, ohif: dict[str, Any], viewer_study: ViewerStudy) -> None:
    seen = ohif[f"{kind}-sr"]
    groups = sr_measurement_groups(getattr(viewer_study, kind).sr)
    assert groups
    loaded = {m["label"]: m for m in seen.get("measurements", [])}
    panel = seen["panelText"]
    shown = _numbers(panel)
    for group in groups:
        assert group.tracking_identifier in loaded, f"{group.tracking_identifier}: not loaded ({seen['screenshot']})"
        assert loaded[group.tracking_identifier]["placed"], f"{group.tracking_identifier}: not placed on an image"
        assert group.tracking_identifier in panel, f"measurement panel shows {panel!r}"
        for meaning, (value, _unit) in group.values.items():
            assert any(abs(n - value) <= max(0.01, abs(value) * 0.005) for n in shown), (
                f"{group.tracking_identifier}: {meaning} {value} not in the measurement panel {panel!r}")
