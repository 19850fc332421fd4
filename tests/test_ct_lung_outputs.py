"""The lung tool's results through the real SEG/SR encoders: dciodvfy-clean, and the SEG read back
with highdicom still gives the phantom's analytic lung volumes."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from config.schema import OutputConfig
from image_model.geometry import slice_thicknesses
from image_model.loader import load_series
from sr_templates.outputs import build_outputs
from testkit.phantoms import write_ct_phantom
from tests.dicom_validate import dciodvfy_errors
from tools.ct_lung import CTLungSegmentation


def test_seg_read_back_gives_analytic_volumes(tmp_path: Path) -> None:
    truth = write_ct_phantom(
        tmp_path / "in", slices=24, slice_spacing=10.0, reverse_order=True, shuffle_files=True, bronchi=True
    )
    volume = load_series(tmp_path / "in")
    output = CTLungSegmentation().run(volume, {"image": "<imagepath>"})
    datasets = build_outputs(
        volume, [output], "Lung volumes measured.", OutputConfig(), "Segment the lungs.", "rules"
    )
    assert len(datasets) == 2
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(tmp_path / f"out{i}.dcm")
        ds.save_as(paths[-1])
    for path in paths:
        assert dciodvfy_errors(path) == []

    seg = hd.seg.segread(paths[0])
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in seg.SegmentSequence}
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    thickness = slice_thicknesses(volume.positions, np.asarray(volume.orientation), volume.spacing[0])
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, segment_numbers=sorted(labels), ignore_spatial_locations=True
    )
    voxel_mm2 = volume.spacing[1] * volume.spacing[2]
    measured = {
        labels[number]: float((pixels[..., i].sum(axis=(1, 2)) * thickness).sum() * voxel_mm2 / 1000.0)
        for i, number in enumerate(sorted(labels))
    }
    assert measured["Left lung"] == pytest.approx(truth.left_lung_ml, rel=0.05)
    assert measured["Right lung"] == pytest.approx(truth.right_lung_ml, rel=0.05)


# --- partial lungs and refusals, on realistic body phantoms (tests/body_cases.py) --------------

INSTRUCTION = "Segment the lungs and measure their volumes."


def _run_job(name: str, tmp_path: Path) -> dict:
    import pydicom

    from config.loader import load_config
    from dicom_node.jobs.pipeline import JobSpec, WorkerContext, run_job
    from tests.body_cases import named

    folder = named(name).folder
    first = pydicom.dcmread(named(name).truth.files[0], stop_before_pixels=True)
    config = load_config(overrides={"node": {"data_dir": str(tmp_path / "var")}})
    spec = JobSpec(
        job_id=name, study_uid=str(first.StudyInstanceUID), series_uid=str(first.SeriesInstanceUID),
        series_dir=str(folder), result_dir=str(tmp_path / "result"), route="ct-lungs",
        instruction=INSTRUCTION, planner="rules", destinations=["pacs"],
    )
    return run_job(spec, WorkerContext.build(config)).to_dict()


def test_lung_bases_only_seg_and_sr_say_partial(tmp_path: Path) -> None:
    """Through the real pipeline: the SEG segments say "base only", the SR puts the caveat next to
    each volume, the answer says "lung bases only" and gives no whole-lung volume."""
    manifest = _run_job("abdomen-lung-bases", tmp_path)
    assert "lung bases only" in manifest["answer"]
    assert "total lung" not in manifest["answer"] and "total in view" in manifest["answer"]
    seg_path, sr_path = (Path(p) for p in manifest["files"])
    for path in (seg_path, sr_path):
        assert dciodvfy_errors(path) == []
    seg = hd.seg.segread(seg_path)
    assert sorted(str(s.SegmentLabel) for s in seg.SegmentSequence) == ["Left lung (base only)", "Right lung (base only)"]
    sr = hd.sr.srread(sr_path)
    texts = [str(item.TextValue) for item in _walk(sr) if getattr(item, "ValueType", "") == "TEXT"]
    caveats = [t for t in texts if t.startswith("partial: base only")]
    assert len(caveats) == 4, texts  # in both groups of each lung: TID 1411 (volume), TID 1410 (outline)
    assert all("within the field of view only" in t for t in caveats)


def _walk(ds: object) -> list:
    items = []
    for item in getattr(ds, "ContentSequence", []):
        items.append(item)
        items.extend(_walk(item))
    return items


def test_ct_without_lungs_fails_the_job_and_writes_nothing(tmp_path: Path) -> None:
    from dicom_node.jobs.pipeline import JobFailed

    with pytest.raises(JobFailed) as info:
        _run_job("upper-abdomen", tmp_path)
    reason = str(info.value)
    assert "ct lung segmentation: refused: no lungs found" in reason and "pure gas" in reason
    assert not any((tmp_path / "result").glob("*.dcm"))
