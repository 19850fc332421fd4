"""A volume's (slice, row, col) array <-> a 3D network's oriented, resampled grid.

The array axes are mapped to the network's axis codes (MONAI's ``Orientationd(axcodes="RAS")``
convention: an axis coded "R" increases towards the patient's right) by a permutation and flips
read from ImageOrientationPatient and the slice positions (PS3.3 C.7.6.2.1.1: DICOM patient
coordinates are LPS), then resampled to the network's voxel spacing (field of view kept,
trilinear); label maps go back the same way (nearest), so every mask voxel sits on its source voxel.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import permutations
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from image_model.volume import Volume

#: Where each axis code points, in RAS world axes: (world axis, sign).
AXIS_CODES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
)
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


@dataclass(frozen=True)
class GridMapping:
    """How the volume's (slice, row, col) array becomes the network's oriented, resampled grid."""

    #: Network axis k takes source array axis ``perm[k]``.
    perm: tuple[int, int, int]
    #: Network axis k is flipped after the permutation.
    flips: tuple[bool, bool, bool]
    #: Source shape after permutation, and the network grid shape.
    oriented_shape: tuple[int, int, int]
    network_shape: tuple[int, int, int]


def array_axis_directions(volume: Volume) -> np.ndarray:
    """Unit vectors (RAS) along which the slice, row and col indices increase, shape (3, 3).

    Column index runs along the first ImageOrientationPatient triplet, row index along the second
    (PS3.3 C.7.6.2.1.1); the slice direction comes from the slice positions (so a descending
    series is handled), or the normal for a single slice.
    """
    o = np.asarray(volume.orientation, dtype=float)
    along_col, along_row = o[:3], o[3:]
    positions = np.asarray(volume.positions, dtype=float).reshape(-1, 3)
    step = positions[-1] - positions[0] if len(positions) > 1 else np.cross(along_col, along_row)
    norm = float(np.linalg.norm(step))
    along_slice = step / norm if norm > 0 else np.cross(along_col, along_row)
    return np.stack([along_slice, along_row, along_col]) * _LPS_TO_RAS


def plan_mapping(volume: Volume, axcodes: str, spacing: tuple[float, float, float] | None) -> GridMapping:
    """The permutation/flips that best align the array with ``axcodes``, and the target shape."""
    dirs = array_axis_directions(volume)
    targets = [AXIS_CODES[c] for c in axcodes.upper()]
    best = max(permutations(range(3)), key=lambda p: sum(abs(dirs[p[k], targets[k][0]]) for k in range(3)))
    flips = tuple(bool(dirs[best[k], targets[k][0]] * targets[k][1] < 0) for k in range(3))
    oriented = tuple(volume.pixels.shape[a] for a in best)
    src_spacing = [float(volume.spacing[a]) for a in best]
    if spacing is None:
        network = oriented
    else:
        network = tuple(max(1, round(n * s / t)) for n, s, t in zip(oriented, src_spacing, spacing))
    return GridMapping(best, flips, oriented, network)  # type: ignore[arg-type]


def to_network_grid(pixels: np.ndarray, mapping: GridMapping) -> torch.Tensor:
    """(slices, rows, cols) -> float tensor (1, 1, *network_shape), trilinear, field of view kept."""
    import torch

    arr = np.transpose(pixels, mapping.perm)
    flip_axes = [k for k in range(3) if mapping.flips[k]]
    if flip_axes:
        arr = np.flip(arr, axis=tuple(flip_axes))
    tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if tuple(tensor.shape[2:]) != mapping.network_shape:
        tensor = torch.nn.functional.interpolate(
            tensor, size=mapping.network_shape, mode="trilinear", align_corners=False
        )
    return tensor


def from_network_grid(labels: torch.Tensor, mapping: GridMapping) -> np.ndarray:
    """Label map on the network grid (X, Y, Z) -> (slices, rows, cols) uint16 on the source grid.

    "nearest-exact" samples at voxel centres, the same correspondence trilinear
    ``align_corners=False`` used on the way in.
    """
    import torch

    lab = labels.to("cpu")
    if tuple(lab.shape) != mapping.oriented_shape:
        lab = torch.nn.functional.interpolate(
            lab[None, None].to(torch.float32), size=mapping.oriented_shape, mode="nearest-exact"
        )[0, 0]
    arr = lab.numpy().astype(np.uint16)
    flip_axes = [k for k in range(3) if mapping.flips[k]]
    if flip_axes:
        arr = np.flip(arr, axis=tuple(flip_axes))
    return np.ascontiguousarray(np.transpose(arr, np.argsort(mapping.perm)))
