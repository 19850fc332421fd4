"""The node's SEG and SR through dcmqi, 3D Slicer's DICOM converter (PyPI wheel ``dcmqi``), for the
result of every tool (tests/viewers/study.py): ``segimage2itkimage`` must give back the source
geometry, the tool's voxel counts, the laterality (dcmqi reads it only from the modifier nested in
SegmentedPropertyTypeCodeSequence) and distinct recommended colours (from
RecommendedDisplayCIELabValue); ``tid1500reader`` must list every measurement with its value."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from image_model.loader import load_series
from tests.viewers import installed
from tests.viewers.expected import close_rgb, distinct, seg_segments, sr_findings, sr_tracking_uids
from tests.viewers.nrrd import read_nrrd
from tests.viewers.study import RUNS, WITH_SEG, ViewerStudy

TIMEOUT_S = 120


def _require() -> None:
    for tool in ("segimage2itkimage", "tid1500reader"):
        if shutil.which(tool) is None:
            installed.require(Path(f"<{tool} on PATH (pip install dcmqi)>"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


@pytest.fixture(scope="module")
def segs(viewer_study: ViewerStudy, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    _require()
    out = {}
    for name in WITH_SEG:
        folder = tmp_path_factory.mktemp(f"dcmqi-{name}")
        seg = viewer_study.results[name].seg
        proc = _run("segimage2itkimage", "--inputDICOM", str(seg), "--outputDirectory", str(folder), "-t", "nrrd")
        meta = folder / "meta.json"
        out[name] = {"proc": proc, "folder": folder,
                     "meta": json.loads(meta.read_text()) if meta.is_file() else None}
    return out


def _segments(read: dict[str, Any]) -> list[tuple[dict[str, Any], Path]]:
    """(attributes, nrrd file) for every segment dcmqi wrote; files are numbered from 1."""
    proc = read["proc"]
    assert proc.returncode == 0 and read["meta"], f"segimage2itkimage failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return [(attrs, read["folder"] / f"{i}.nrrd")
            for i, group in enumerate(read["meta"]["segmentAttributes"], start=1) for attrs in group]


@pytest.mark.parametrize("name", WITH_SEG)
def test_seg_geometry_and_voxel_counts(name: str, segs: dict[str, Any], viewer_study: ViewerStudy) -> None:
    """Every segment's voxels where the tool put them, on the source's grid: its plane and pixel
    spacing; slice by slice on the source's positions where it has them (a projection image is
    on its assumed plane: origin 0, rows along x)."""
    result = viewer_study.results[name]
    voxels = {s["label"]: s["voxels"] for s in result.summary["segments"]}
    volume = load_series(result.source_files)
    _, row_step, column_step = volume.spacing
    orientation = np.asarray(volume.orientation)
    for attrs, path in _segments(segs[name]):
        image = read_nrrd(path)
        assert int((image.voxels == attrs["labelID"]).sum()) == voxels[attrs["SegmentLabel"]], attrs["SegmentLabel"]
        assert image.voxels.shape[1:] == volume.shape[1:]
        np.testing.assert_allclose(image.directions[0], orientation[:3] * column_step, atol=1e-4)  # along a row
        np.testing.assert_allclose(image.directions[1], orientation[3:] * row_step, atol=1e-4)  # down a column
        for k in range(image.voxels.shape[0]):
            slice_origin = image.origin + k * image.directions[2]
            distance = np.min(np.linalg.norm(volume.positions - slice_origin, axis=1))
            assert distance < 0.01, f"slice {k} is no source slice"


@pytest.mark.parametrize("name", WITH_SEG)
def test_seg_laterality_from_the_nested_modifier(name: str, segs: dict[str, Any], viewer_study: ViewerStudy) -> None:
    """dcmqi reads the side the SEG declares (nested in the type, PS3.3 C.8.20.2); a segment whose
    label names a side declares it."""
    seg = viewer_study.results[name].seg
    assert seg is not None
    declared = seg_segments(seg)
    for attrs, _ in _segments(segs[name]):
        segment = declared[attrs["SegmentLabel"]]
        modifier = attrs.get("SegmentedPropertyTypeModifierCodeSequence")
        assert (modifier or {}).get("CodeMeaning") == segment.modifier, attrs["SegmentLabel"]
        side = {"left", "right"} & set(segment.label.lower().split())
        if side and segment.type == "Lung":
            assert segment.modifier == side.pop().capitalize(), f"{segment.label}: no laterality modifier"


@pytest.mark.parametrize("name", WITH_SEG)
def test_seg_recommended_colours(name: str, segs: dict[str, Any], viewer_study: ViewerStudy) -> None:
    seg = viewer_study.results[name].seg
    assert seg is not None
    declared = seg_segments(seg)
    colours = []
    for attrs, _ in _segments(segs[name]):
        segment = declared[attrs["SegmentLabel"]]
        assert segment.cielab is not None, f"{segment.label}: no RecommendedDisplayCIELabValue (dcmqi uses a default)"
        assert close_rgb(attrs["recommendedDisplayRGBValue"], segment.rgb)
        colours.append(tuple(attrs["recommendedDisplayRGBValue"]))
    assert distinct(colours)


@pytest.mark.parametrize("name", list(RUNS))
def test_sr_measurements_read_by_tid1500reader(name: str, viewer_study: ViewerStudy, tmp_path: Path) -> None:
    """Every group read; every number of every finding, with its unit, among what tid1500reader
    reads for the finding's tracking UID (the groups of one finding merged, as they share it)."""
    _require()
    result = viewer_study.results[name]
    out = tmp_path / "sr.json"
    proc = _run("tid1500reader", "--inputDICOM", str(result.sr), "--outputMetadata", str(out))
    assert proc.returncode == 0 and out.is_file(), f"tid1500reader failed:\n{proc.stdout}{proc.stderr}"
    read: dict[str, list[tuple[str, float, str]]] = {}
    for group in json.loads(out.read_text())["Measurements"]:
        read.setdefault(group.get("TrackingUniqueIdentifier"), []).extend(
            (i["quantity"]["CodeMeaning"], float(i["value"]), i["units"]["CodeValue"]) for i in group["measurementItems"]
        )
    assert set(read) == set(sr_tracking_uids(result.sr)), "groups tid1500reader did not read"
    for uid, finding in sr_findings(result.sr).items():
        assert uid in read, f"{finding.label}: not read"
        for meaning, value, unit in finding.numbers:
            assert any(m == meaning and u == unit and v == pytest.approx(value, rel=1e-6) for m, v, u in read[uid]), (
                f"{finding.label}: {meaning} {value} {unit} not read ({read[uid]})")
