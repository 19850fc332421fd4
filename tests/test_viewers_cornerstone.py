"""The node's SEG and SR read by dcmjs + @cornerstonejs/adapters (what OHIF uses underneath) in
plain Node: every segment maps to the right source images with the tool's voxel counts, labels and
recommended colours, and MeasurementReport.generateToolState places every SR measurement on a
source image with its values."""
from __future__ import annotations

from typing import Any

import pydicom
import pytest

from tests.viewers import installed
from tests.viewers.expected import close_rgb, distinct, seg_segments, sr_measurement_groups
from tests.viewers.study import Result, ViewerStudy

#: Metrics Cornerstone's adapters restore from an SR group's NUM items (CodeMeaning -> cachedStats key).
RESTORED = {"Mean": "mean", "Area": "area", "Standard Deviation": "stdDev", "Maximum": "max", "Minimum": "min",
            "Length": "length", "Perimeter": "perimeter"}


@pytest.fixture(scope="module")
def reports(viewer_study: ViewerStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    installed.require(installed.NODE_MODULES / "@cornerstonejs" / "adapters", installed.NODE_MODULES / "dcmjs")
    work = tmp_path_factory.mktemp("cornerstone")
    out = {}
    for name, result in (("ct", viewer_study.ct), ("cr", viewer_study.cr)):
        request = {"sources": result.source_files, "seg": result.seg, "sr": result.sr}
        out[name] = installed.run_node("cornerstone_read.mjs", request, work / name)
    return out


def _result(study: ViewerStudy, name: str) -> Result:
    return study.ct if name == "ct" else study.cr


@pytest.mark.parametrize("name", ["ct", "cr"])
def test_seg_segments_map_to_source_images(name: str, reports: dict[str, Any], viewer_study: ViewerStudy) -> None:
    result = _result(viewer_study, name)
    seg = reports[name]["seg"]
    assert "error" not in seg, f"Cornerstone could not read the {name} SEG: {seg.get('error')}"
    declared = seg_segments(result.seg)
    by_label = {s["label"]: s for s in seg["segments"].values()}
    assert set(by_label) == set(declared)
    sources = set(result.source_uids)
    voxels = {s["label"]: s["voxels"] for s in result.summary["segments"]}
    for label, segment in by_label.items():
        assert segment["voxels"] == voxels[label], f"{label}: voxels in Cornerstone's labelmap vs the tool's mask"
        assert segment["sources"] and set(segment["sources"]) <= sources
    assert set(seg["segmentsOnImage"]) <= sources


@pytest.mark.parametrize("name", ["ct", "cr"])
def test_seg_colours_are_the_recommended_ones(name: str, reports: dict[str, Any], viewer_study: ViewerStudy) -> None:
    seg = reports[name]["seg"]
    assert "error" not in seg, f"Cornerstone could not read the {name} SEG: {seg.get('error')}"
    declared = seg_segments(_result(viewer_study, name).seg)
    for segment in seg["segments"].values():
        assert segment["rgb"] is not None, f"{segment['label']}: no RecommendedDisplayCIELabValue"
        assert close_rgb(segment["rgb"], declared[segment["label"]].rgb)
    assert distinct([tuple(s["rgb"]) for s in seg["segments"].values()])


@pytest.mark.parametrize("name", ["ct", "cr"])
def test_sr_measurements_are_placed_with_values(name: str, reports: dict[str, Any], viewer_study: ViewerStudy) -> None:
    result = _result(viewer_study, name)
    sr = reports[name]["sr"]
    assert "error" not in sr, f"generateToolState threw on the {name} SR: {sr.get('error')}"
    assert sr["warnings"] == [], "groups Cornerstone could not turn into tool state"
    groups = sr_measurement_groups(result.sr)
    assert groups, "the SR holds no measurement"
    placed = {m["trackingUid"]: m for m in sr["measurements"]}
    source = pydicom.dcmread(result.source_files[0], stop_before_pixels=True)
    for group in groups:
        assert group.tracking_uid in placed, f"{group.tracking_identifier}: not returned by generateToolState"
        measurement = placed[group.tracking_uid]
        on_source = measurement["referencedSop"] in set(result.source_uids)
        in_frame = measurement["frameOfReference"] == source.get("FrameOfReferenceUID", "-")
        assert on_source or in_frame, f"{group.tracking_identifier}: not placed on the source images"
        for meaning, (value, _unit) in group.values.items():
            if meaning in RESTORED:
                assert measurement["stats"].get(RESTORED[meaning]) == pytest.approx(value, rel=1e-4), meaning
