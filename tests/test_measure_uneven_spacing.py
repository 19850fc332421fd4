"""Mask sizes on an unevenly spaced series (two slices missing from a CT), through the real loader
and the real tools: every volume integrates each slice over its own thickness (half the gap to
each neighbour), never the mean gap. The expected figures are computed here from the slice
positions alone; the mean-gap figure they replaced is checked to differ, so the test can fail."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from image_model.codes import unit
from image_model.loader import load_series
from image_model.measure import mask_size, slice_spacing_known
from image_model.volume import Volume
from testkit.model_files import threshold_conv_state, write_bundle
from testkit.phantoms import write_ct_phantom
from testkit.tiny_models import one_torch_thread, tiny_sam_settings, write_tiny_sam
from tools.medsam import MedSAMTool
from tools.organ3d import OrganSegmentation3D

SLICE_SPACING_MM = 4.0
DROPPED = (3, 4, 9)


@pytest.fixture(scope="module")
def uneven(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("uneven")
    write_ct_phantom(folder, slices=14, rows=32, cols=32, slice_spacing=SLICE_SPACING_MM, drop_slices=DROPPED)
    volume = load_series(folder)
    assert volume.meta.get("uneven_spacing") is True
    return volume


def _expected_ml(mask: np.ndarray, volume: Volume) -> float:
    """Per-slice thickness from the positions: half the gap to each neighbour, ends their one gap."""
    along = np.asarray(volume.positions) @ np.cross(volume.orientation[:3], volume.orientation[3:])
    gaps = np.abs(np.diff(along))
    thickness = np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2.0, [gaps[-1]]])
    _, dy, dx = volume.spacing
    per_slice = mask.reshape(len(mask), -1).sum(axis=1)
    return float((per_slice * thickness).sum() * dy * dx / 1000.0)


def _mean_gap_ml(mask: np.ndarray, volume: Volume) -> float:
    dz, dy, dx = volume.spacing
    return float(mask.sum()) * dz * dy * dx / 1000.0


def _check(measurement_value: float, mask: np.ndarray, volume: Volume) -> None:
    expected = _expected_ml(mask, volume)
    assert measurement_value == pytest.approx(expected, rel=1e-9)
    # The old mean-gap figure is measurably different on this series.
    assert abs(_mean_gap_ml(mask, volume) - expected) > 0.02 * expected


def test_mask_size_integrates_per_slice_thickness(uneven: Volume) -> None:
    mask = np.zeros(uneven.shape, dtype=bool)
    mask[:, 8:20, 6:18] = True
    mask[0, :4, :4] = True  # slices differ in area, so a wrong thickness shows
    size = mask_size(mask, uneven)
    assert size.unit == unit("mL") and slice_spacing_known(uneven)
    _check(size.value, mask, uneven)


def test_organ_volumes_on_an_uneven_series(uneven: Volume, tmp_path: Path) -> None:
    window = (-1000.0, 1000.0)
    bundle = write_bundle(
        tmp_path / "bundle",
        {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        threshold_conv_state((0.0 - window[0]) / (window[1] - window[0])),  # soft tissue > 0 HU
        {"0": "background", "1": "liver"},
        pixdim=None,
        window=window,
        roi_size=[16, 16, 16],
    )
    out = OrganSegmentation3D({"bundle_dir": str(bundle), "device": "cpu"}).run(uneven, {})
    (segment,) = out.segments
    assert segment.mask.any()
    (volume_ml,) = segment.measurements
    assert volume_ml.unit == unit("mL")
    _check(volume_ml.value, segment.mask, uneven)
    assert out.summary["volumes_ml"]["liver"] == pytest.approx(volume_ml.value, abs=0.01)


def test_medsam_volumes_on_an_uneven_series(uneven: Volume, tmp_path: Path) -> None:
    sam = write_tiny_sam(tmp_path / "sam.pth")
    with one_torch_thread():
        out = MedSAMTool(tiny_sam_settings(sam)).run(uneven, {"boxes": [[0.2, 0.2, 0.8, 0.8]], "labels": ["liver"]})
    (segment,) = out.segments
    assert len({int(z) for z in np.flatnonzero(segment.mask.any(axis=(1, 2)))}) > 3
    (volume_ml,) = segment.measurements
    assert volume_ml.unit == unit("mL")
    _check(volume_ml.value, segment.mask, uneven)
