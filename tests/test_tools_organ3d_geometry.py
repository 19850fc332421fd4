"""organ segmentation 3d: patient-space geometry (orientation, resampling round trip) and
alignment of the masks with the source slices, through a real bundle with a known network."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from image_model.measure import mask_volume_ml
from testkit.model_files import (
    ct_phantom,
    dice,
    threshold_conv_state,
    write_bundle,
)
from tools.network_grid import array_axis_directions, from_network_grid, plan_mapping, to_network_grid
from tools.organ3d import OrganSegmentation3D

GEOMETRIES = [
    pytest.param(False, False, id="ascending"),
    pytest.param(True, False, id="descending-slices"),
    pytest.param(True, True, id="descending-slices-rows-anterior"),
]


def _world_centres(volume) -> np.ndarray:  # type: ignore[no-untyped-def]
    """LPS coordinates of every voxel centre, shape (slices, rows, cols, 3)."""
    o = np.asarray(volume.orientation)
    _, rows, cols = volume.pixels.shape
    rr, cc = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    dy, dx = volume.spacing[1], volume.spacing[2]
    plane = rr[..., None] * dy * o[3:] + cc[..., None] * dx * o[:3]
    return volume.positions[:, None, None, :] + plane[None]


@pytest.mark.parametrize("descending,flip_rows", GEOMETRIES)
def test_ras_axes_point_where_their_codes_say(descending: bool, flip_rows: bool) -> None:
    vol = ct_phantom(descending=descending, flip_rows=flip_rows).volume
    mapping = plan_mapping(vol, "RAS", None)
    dirs = array_axis_directions(vol)
    for k, (world_axis, sign) in enumerate([(0, 1), (1, 1), (2, 1)]):
        direction = dirs[mapping.perm[k]] * (-1 if mapping.flips[k] else 1)
        assert direction[world_axis] * sign > 0.99, (k, direction)


@pytest.mark.parametrize("descending,flip_rows", GEOMETRIES)
def test_label_painted_in_network_space_lands_on_the_right_patient_side(descending: bool, flip_rows: bool) -> None:
    """Network grid axis 0 is R (RAS): paint the higher-index half (patient's right, LPS x < 0)
    and the upper (S) third; the source voxels that get the label must be exactly those."""
    vol = ct_phantom(shape=(12, 24, 30), spacing=(3.0, 1.0, 1.0), descending=descending, flip_rows=flip_rows).volume
    mapping = plan_mapping(vol, "RAS", None)  # no resampling: exact round trip expected
    lab = torch.zeros(mapping.network_shape, dtype=torch.int64)
    nx, _, nz = mapping.network_shape
    lab[nx // 2 :, :, 2 * nz // 3 :] = 1
    back = from_network_grid(lab, mapping)
    world = _world_centres(vol)
    x_mid = (world[..., 0].max() + world[..., 0].min()) / 2
    z_cut = world[..., 2].min() + (world[..., 2].max() - world[..., 2].min()) * (2 * nz // 3 - 0.5) / (nz - 1)
    expected = (world[..., 0] < x_mid) & (world[..., 2] > z_cut)
    assert back.shape == vol.pixels.shape
    np.testing.assert_array_equal(back == 1, expected)


def test_resampling_round_trip_keeps_a_known_label_map() -> None:
    vol = ct_phantom(shape=(16, 32, 32), spacing=(2.5, 0.8, 0.8), descending=True).volume
    # A label map on the source grid: a block at a known place.
    truth = np.zeros(vol.pixels.shape, dtype=np.float32)
    truth[4:12, 8:20, 16:28] = 1.0
    mapping = plan_mapping(vol, "RAS", (1.6, 1.6, 1.25))  # half resolution in-plane, double in z
    on_grid = to_network_grid(truth, mapping)[0, 0]
    assert tuple(on_grid.shape) == mapping.network_shape
    assert mapping.network_shape == (16, 16, 32)
    back = from_network_grid((on_grid > 0.5).to(torch.int64), mapping)
    assert dice(back == 1, truth == 1) > 0.9
    moved = np.abs(np.argwhere(back == 1).mean(axis=0) - np.argwhere(truth == 1).mean(axis=0))
    assert moved.max() < 1.0, moved


@pytest.mark.parametrize("descending,flip_rows", GEOMETRIES)
def test_masks_align_with_the_source_slices_through_a_bundle(tmp_path: Path, descending: bool, flip_rows: bool) -> None:
    """A bundle whose network thresholds the scaled intensity: its mask must be the phantom's
    organ, on the source grid, after RAS orientation and resampling to the bundle's pixdim."""
    window = (-1000.0, 1000.0)
    threshold = (200.0 - window[0]) / (window[1] - window[0])  # organ 300 HU, body 40 HU
    bundle = write_bundle(
        tmp_path / "threshold_bundle",
        {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        threshold_conv_state(threshold),
        {"0": "background", "1": "spleen"},
        pixdim=[1.5, 1.5, 2.0],
        window=window,
        roi_size=[16, 16, 16],
    )
    phantom = ct_phantom(shape=(20, 40, 40), spacing=(2.5, 1.0, 1.0), descending=descending, flip_rows=flip_rows)
    tool = OrganSegmentation3D({"bundle_dir": str(bundle), "device": "cpu"})
    assert tool.availability().available
    out = tool.run(phantom.volume, {})
    assert [s.label for s in out.segments] == ["spleen"]
    seg = out.segments[0]
    assert seg.mask.shape == phantom.volume.pixels.shape and seg.mask.dtype == bool
    assert dice(seg.mask, phantom.organ) > 0.85
    world = _world_centres(phantom.volume)
    centre = world[seg.mask].mean(axis=0)
    assert np.linalg.norm(centre - phantom.organ_centre) < 2.5, centre
    assert seg.type.value == "78961009"  # SNOMED Spleen, from the built-in table
    expected_ml = mask_volume_ml(phantom.organ, phantom.volume)
    assert out.summary["volumes_ml"]["spleen"] == pytest.approx(expected_ml, rel=0.15)
    assert out.algorithm.parameters["spacing_mm"] == "[1.5, 1.5, 2.0]"
