"""The node's SEG and SR through dcmqi, 3D Slicer's DICOM converter (PyPI wheel ``dcmqi``):
``segimage2itkimage`` must give back the source geometry, the tool's voxel counts, the laterality
(dcmqi reads it only from the modifier nested in SegmentedPropertyTypeCodeSequence) and distinct
recommended colours (from RecommendedDisplayCIELabValue); ``tid1500reader`` must list every
measurement with its value."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.viewers import installed
from tests.viewers.expected import close_rgb, distinct, seg_segments, sr_measurement_groups
from tests.viewers.nrrd import read_nrrd
from tests.viewers.study import Result, ViewerStudy

TIMEOUT_S = 120
LATERALITY = {"ct": {"Left lung": "Left", "Right lung": "Right"}, "cr": {"right lung": "Right"}}


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
    for name, result in (("ct", viewer_study.ct), ("cr", viewer_study.cr)):
        folder = tmp_path_factory.mktemp(f"dcmqi-{name}")
        proc = _run("segimage2itkimage", "--inputDICOM", str(result.seg), "--outputDirectory", str(folder), "-t", "nrrd")
        meta = folder / "meta.json"
        out[name] = {"proc": proc, "folder": folder,
                     "meta": json.loads(meta.read_text()) if meta.is_file() else None}
    return out


def _result(study: ViewerStudy, name: str) -> Result:
    return study.ct if name == "ct" else study.cr


def _segments(read: dict[str, Any]) -> list[tuple[dict[str, Any], Path]]:
    """(attributes, nrrd file) for every segment dcmqi wrote; files are numbered from 1."""
    proc = read["proc"]
    assert proc.returncode == 0 and read["meta"], f"segimage2itkimage failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
    return [(attrs, read["folder"] / f"{i}.nrrd")
            for i, group in enumerate(read["meta"]["segmentAttributes"], start=1) for attrs in group]


@pytest.mark.parametrize("name", ["ct", "cr"])
def test_seg_geometry_and_voxel_counts(name: str, segs: dict[str, Any], viewer_study: ViewerStudy) -> None:
    result = _result(viewer_study, name)
    voxels = {s["label"]: s["voxels"] for s in result.summary["segments"]}
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in result.source_files]
    first = sources[0]
    spacing = [float(v) for v in first.get("PixelSpacing") or first.ImagerPixelSpacing]
    for attrs, path in _segments(segs[name]):
        image = read_nrrd(path)
        assert int((image.voxels == attrs["labelID"]).sum()) == voxels[attrs["SegmentLabel"]], attrs["SegmentLabel"]
        assert image.voxels.shape[1:] == (int(first.Rows), int(first.Columns))
        assert np.linalg.norm(image.directions[0]) == pytest.approx(spacing[1], abs=1e-3)  # along a row
        assert np.linalg.norm(image.directions[1]) == pytest.approx(spacing[0], abs=1e-3)  # down a column
        if "ImageOrientationPatient" in first:
            iop = np.array([float(v) for v in first.ImageOrientationPatient])
            np.testing.assert_allclose(image.directions[0] / spacing[1], iop[:3], atol=1e-4)
            np.testing.assert_allclose(image.directions[1] / spacing[0], iop[3:], atol=1e-4)
            positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
            for k in range(image.voxels.shape[0]):
                slice_origin = image.origin + k * image.directions[2]
                assert np.min(np.linalg.norm(positions - slice_origin, axis=1)) < 0.01, f"slice {k} is no source slice"


@pytest.mark.parametrize("name", ["ct", "cr"])
def test_seg_laterality_from_the_nested_modifier(name: str, segs: dict[str, Any]) -> None:
    for attrs, _ in _segments(segs[name]):
        modifier = attrs.get("SegmentedPropertyTypeModifierCodeSequence")
        assert modifier, f"{attrs['SegmentLabel']}: dcmqi read no laterality modifier"
        assert modifier["CodeMeaning"] == LATERALITY[name][attrs["SegmentLabel"]]


@pytest.mark.parametrize("name", ["ct", "cr"])
def test_seg_recommended_colours(name: str, segs: dict[str, Any], viewer_study: ViewerStudy) -> None:
    declared = seg_segments(_result(viewer_study, name).seg)
    colours = []
    for attrs, _ in _segments(segs[name]):
        segment = declared[attrs["SegmentLabel"]]
        assert segment.cielab is not None, f"{segment.label}: no RecommendedDisplayCIELabValue (dcmqi uses a default)"
        assert close_rgb(attrs["recommendedDisplayRGBValue"], segment.rgb)
        colours.append(tuple(attrs["recommendedDisplayRGBValue"]))
    assert distinct(colours)


@pytest.mark.parametrize("name", ["ct", "cr"])
def test_sr_measurements_read_by_tid1500reader(name: str, viewer_study: ViewerStudy, tmp_path: Path) -> None:
    _require()
    result = _result(viewer_study, name)
    out = tmp_path / "sr.json"
    proc = _run("tid1500reader", "--inputDICOM", str(result.sr), "--outputMetadata", str(out))
    assert proc.returncode == 0 and out.is_file(), f"tid1500reader failed:\n{proc.stdout}{proc.stderr}"
    read = {m.get("TrackingUniqueIdentifier"): m for m in json.loads(out.read_text())["Measurements"]}
    groups = sr_measurement_groups(result.sr)
    assert groups
    for group in groups:
        assert group.tracking_uid in read, f"{group.tracking_identifier}: not read"
        items = {i["quantity"]["CodeMeaning"]: i for i in read[group.tracking_uid]["measurementItems"]}
        for meaning, (value, unit) in group.values.items():
            assert meaning in items, f"{group.tracking_identifier}: {meaning} not read"
            assert float(items[meaning]["value"]) == pytest.approx(value, rel=1e-6)
            assert items[meaning]["units"]["CodeValue"] == unit
