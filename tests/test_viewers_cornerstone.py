"""The node's SEG and SR read by dcmjs + @cornerstonejs/adapters (what OHIF uses underneath) in
plain Node, for the result of every tool (tests/viewers/study.py): every segment maps to the right
source images with the tool's voxel counts, labels and recommended colours, and
MeasurementReport.generateToolState turns every finding of the SR into a drawn tool on a source
image (or in its Frame of Reference), labelled by the finding with its values."""
from __future__ import annotations

from typing import Any

import pydicom
import pytest

from tests.viewers import installed
from tests.viewers.expected import (
    close_rgb,
    distinct,
    numbers_in,
    seg_segments,
    shown,
    sr_findings,
    sr_tracking_uids,
)
from tests.viewers.study import RUNS, WITH_SEG, Result, ViewerStudy

#: Metrics Cornerstone's adapters restore from an SR group's NUM items (CodeMeaning -> cachedStats key).
RESTORED = {"Mean": "mean", "Area": "area", "Standard Deviation": "stdDev", "Maximum": "max", "Minimum": "min",
            "Length": "length", "Perimeter": "perimeter"}


@pytest.fixture(scope="module")
def reports(viewer_study: ViewerStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    installed.require(installed.NODE_MODULES / "@cornerstonejs" / "adapters", installed.NODE_MODULES / "dcmjs")
    work = tmp_path_factory.mktemp("cornerstone")
    request = {name: {"sources": r.source_files, "seg": r.seg, "sr": r.sr} for name, r in viewer_study.results.items()}
    return installed.run_node("cornerstone_read.mjs", {"results": request}, work)


def _seg_report(reports: dict[str, Any], name: str) -> dict[str, Any]:
    seg: dict[str, Any] = reports[name]["seg"]
    assert "error" not in seg, f"Cornerstone could not read the {name} SEG: {seg.get('error')}"
    return seg


@pytest.mark.parametrize("name", WITH_SEG)
def test_seg_segments_map_to_source_images(name: str, reports: dict[str, Any], viewer_study: ViewerStudy) -> None:
    result: Result = viewer_study.results[name]
    assert result.seg is not None
    seg = _seg_report(reports, name)
    declared = seg_segments(result.seg)
    by_label = {s["label"]: s for s in seg["segments"].values()}
    assert set(by_label) == set(declared)
    sources = set(result.source_uids)
    voxels = {s["label"]: s["voxels"] for s in result.summary["segments"]}
    for label, segment in by_label.items():
        assert segment["voxels"] == voxels[label], f"{label}: voxels in Cornerstone's labelmap vs the tool's mask"
        assert segment["sources"] and set(segment["sources"]) <= sources
    assert set(seg["segmentsOnImage"]) <= sources


@pytest.mark.parametrize("name", WITH_SEG)
def test_seg_colours_are_the_recommended_ones(name: str, reports: dict[str, Any], viewer_study: ViewerStudy) -> None:
    result = viewer_study.results[name]
    assert result.seg is not None
    seg = _seg_report(reports, name)
    declared = seg_segments(result.seg)
    for segment in seg["segments"].values():
        assert segment["rgb"] is not None, f"{segment['label']}: no RecommendedDisplayCIELabValue"
        assert close_rgb(segment["rgb"], declared[segment["label"]].rgb)
    assert distinct([tuple(s["rgb"]) for s in seg["segments"].values()])


@pytest.mark.parametrize("name", list(RUNS))
def test_sr_findings_are_drawn_with_their_values(name: str, reports: dict[str, Any],
                                                viewer_study: ViewerStudy) -> None:
    """Per finding (groups merged by tracking UID): one drawn tool on a source image or in its
    frame, labelled by the finding's name and every value of all its groups, the values
    Cornerstone restores as statistics equal to the SR's. Every group (labels and answer too) is
    drawn, or is the standard readers' twin of a finding drawn (a segment's TID 1411)."""
    result = viewer_study.results[name]
    sr = reports[name]["sr"]
    assert "error" not in sr, f"generateToolState threw on the {name} SR: {sr.get('error')}"
    findings = sr_findings(result.sr)
    drawn: dict[str, list[dict[str, Any]]] = {}
    for measurement in sr["measurements"]:
        drawn.setdefault(measurement["trackingUid"], []).append(measurement)
    source = pydicom.dcmread(result.source_files[0], stop_before_pixels=True)
    for uid, finding in findings.items():
        assert len(drawn.get(uid, [])) == 1, f"{finding.label}: drawn {len(drawn.get(uid, []))} times"
        (tool,) = drawn[uid]
        on_source = tool["referencedSop"] in set(result.source_uids)
        in_frame = tool["frameOfReference"] == source.get("FrameOfReferenceUID", "-")
        assert on_source or in_frame, f"{finding.label}: not placed on the source images"
        label = tool["label"] or ""
        assert label.startswith(finding.label), f"{finding.label}: labelled {label!r}"
        stats = tool["stats"]
        for meaning, value, unit in finding.numbers:
            restored = RESTORED.get(meaning)
            assert shown(value, numbers_in(label)) or (restored and stats.get(restored) == pytest.approx(value)), (
                f"{finding.label}: {meaning} {value} {unit} neither in the label {label!r} nor in {stats}")
    assert set(sr_tracking_uids(result.sr)) == set(drawn), "groups with neither a drawing nor a drawn twin"
    assert {w["trackingUid"] for w in sr["warnings"]} <= set(drawn), f"groups not drawn: {sr['warnings']}"
