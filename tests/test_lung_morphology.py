"""The lung tool's fast in-plane morphology gives exactly scipy's voxels (it replaced scipy's
generic binary morphology and per-slice hole filling for speed and memory)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from tools.lung_geometry import Grid
from tools.lung_masks import dilate_disk, disk, erode_disk, fill_holes_in_plane, label


def _masks(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(ndimage.binary_opening(rng.random((3, 41, 53)) > 0.45))


@pytest.mark.parametrize("radius", [1, 2, 5, 9, 45])
def test_disk_dilation_and_erosion_equal_scipy(radius: int) -> None:
    mask = _masks(radius)
    structure = disk(radius)[None]
    assert np.array_equal(dilate_disk(mask, radius), ndimage.binary_dilation(mask, structure=structure))
    assert np.array_equal(
        erode_disk(mask, radius), ndimage.binary_erosion(mask, structure=structure, border_value=1)
    )
    assert np.array_equal(erode_disk(mask, radius, border=False), ndimage.binary_erosion(mask, structure=structure))


def test_fill_holes_in_plane_equals_per_slice_fill() -> None:
    for seed in range(4):
        mask = _masks(seed)
        expected = np.stack([ndimage.binary_fill_holes(s) for s in mask])
        assert np.array_equal(fill_holes_in_plane(mask), expected)


def test_label_falls_back_to_32_bits_beyond_65535_components() -> None:
    mask = np.zeros((1, 512, 512), dtype=bool)
    mask[0, ::2, ::2] = True  # 65536 isolated voxels
    labels, count = label(mask)
    assert count == 65536 and labels.dtype.itemsize >= 4
    assert label(mask[:, :256])[0].dtype == np.uint16


def test_left_of_equals_patient_x_comparison() -> None:
    grid = Grid(np.array([[-100.0, 5.0, 0.0], [-99.0, 5.0, 2.5]]), np.array([1.0, 0.0, 0.0]),
                np.array([0.0, 1.0, 0.0]), 0.7, 0.7, np.array([2.5, 2.5]))
    shape = (2, 30, 300)
    assert np.array_equal(grid.left_of(3.2, shape), grid.patient_x(shape) > 3.2)


def test_bounding_box_and_centroid_equal_their_definitions() -> None:
    mask = np.zeros((6, 30, 40), dtype=bool)
    mask[2, 5, 7] = mask[4, 20, 33] = mask[3, 11, 2] = True
    from tools.lung_masks import bounding_box

    assert bounding_box(mask) == (slice(2, 5), slice(5, 21), slice(2, 34))
    assert bounding_box(mask, margin=3) == (slice(0, 6), slice(2, 24), slice(0, 37))
    assert bounding_box(np.zeros_like(mask)) is None
    grid = Grid(np.array([[0.0, 0.0, 2.0 * k] for k in range(6)]), np.array([1.0, 0.0, 0.0]),
                np.array([0.0, 1.0, 0.0]), 0.5, 0.7, np.full(6, 2.0))
    k, r, c = np.nonzero(mask)
    expected = [c.mean() * 0.7, r.mean() * 0.5, (2.0 * k).mean()]
    np.testing.assert_allclose(grid.centroid(mask), expected)


def test_label_sizes_equal_bincount() -> None:
    from tools.lung_masks import label_sizes

    labels, count = label(_masks(7))
    assert np.array_equal(label_sizes(labels, count), np.bincount(labels.ravel(), minlength=count + 1))


def test_open_air_equals_scipy_in_plane_opening() -> None:
    from tools.lung_masks import open_air

    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)
    mask = _masks(11)
    assert np.array_equal(open_air(mask), ndimage.binary_opening(mask, structure=cross))


def test_disk_morphology_wide_radius_and_several_slabs() -> None:
    """A radius of 128+ counts in two bytes; a mask of several slabs runs them on threads."""
    from tools.lung_masks import SLAB_VOXELS, slabs

    points = np.zeros((1, 300, 320), dtype=bool)
    points[0, 20, 30] = points[0, 250, 300] = True
    near = ndimage.distance_transform_edt(~points[0]) ** 2 <= 130**2
    assert np.array_equal(dilate_disk(points, 130)[0], near)
    assert np.array_equal(erode_disk(~points, 130)[0], ~near)
    rng = np.random.default_rng(3)
    big = rng.random((SLAB_VOXELS // (64 * 64) + 5, 64, 64)) > 0.3  # two slabs or more
    assert len(slabs(big.shape[0], 64 * 64)) > 1
    structure = disk(3)[None]
    assert np.array_equal(dilate_disk(big, 3), ndimage.binary_dilation(big, structure=structure))
    assert np.array_equal(erode_disk(big, 3, border=False), ndimage.binary_erosion(big, structure=structure))
