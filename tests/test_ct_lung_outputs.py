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
from tests.dicom_validate import dciodvfy_errors
from tests.phantoms import write_ct_phantom
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
