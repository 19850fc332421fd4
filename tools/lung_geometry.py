"""Where the lung tool's voxels are in the patient: a canonical view of the volume and its grid.

The anatomical rules of :mod:`tools.lung_candidates` speak of superior, posterior, lateral. Rather
than carry the image orientation through every rule, the tool looks at the volume in one
canonical orientation: slices ascending towards the head (+z), rows towards the patient's back
(+y), columns towards the patient's left (+x) in LPS patient coordinates (PS3.3 C.7.6.2.1.1).
:class:`CanonicalView` flips and transposes the pixel array into that view and the masks back.
Slices up to :data:`tools.ct_lung.MAX_AXIAL_TILT_DEG` from axial map onto the nearest axes.

Gravity matters too: gas rises and fluid settles, so an air-fluid level lies across the direction
of gravity, which Patient Position (PS3.3 C.7.3.1.1.2) gives: supine (HFS, FFS) pulls towards the
back (+y), prone (HFP, FFP) towards the front, decubitus towards a side.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from image_model.geometry import slice_thicknesses
from image_model.measure import integrate_ml
from image_model.volume import Volume


@dataclass(frozen=True)
class CanonicalView:
    """How to turn the volume's (slice, row, col) array into the canonical view and back."""

    transpose: bool
    flip_slices: bool
    flip_rows: bool
    flip_cols: bool

    def forward(self, array: np.ndarray) -> np.ndarray:
        out = np.swapaxes(array, 1, 2) if self.transpose else array
        return self._flip(out)

    def backward(self, array: np.ndarray) -> np.ndarray:
        out = self._flip(array)
        out = np.swapaxes(out, 1, 2) if self.transpose else out
        return np.ascontiguousarray(out)

    def _flip(self, array: np.ndarray) -> np.ndarray:
        axes = tuple(a for a, f in ((0, self.flip_slices), (1, self.flip_rows), (2, self.flip_cols)) if f)
        return np.flip(array, axis=axes) if axes else array


@dataclass(frozen=True)
class Grid:
    """Voxel -> patient coordinates of the canonical view (PS3.3 C.7.6.2.1.1)."""

    positions: np.ndarray  # (slices, 3): patient position of voxel (k, 0, 0)
    row: np.ndarray  # patient direction of increasing column index (~ +x)
    col: np.ndarray  # patient direction of increasing row index (~ +y)
    dy: float
    dx: float
    thickness: np.ndarray  # (slices,) mm

    @property
    def pixel_mm2(self) -> float:
        return self.dx * self.dy

    @property
    def z(self) -> np.ndarray:
        """Patient z of each slice (ascending)."""
        return np.asarray(self.positions[:, 2], dtype=float)

    def window(self, box: tuple[slice, ...]) -> Grid:
        """The grid of the sub-array ``[box]`` (slices, rows, cols; steps of 1)."""
        slices, rows, cols = box
        r0, c0 = rows.start or 0, cols.start or 0
        origin = self.positions[slices] + r0 * self.dy * self.col + c0 * self.dx * self.row
        return Grid(origin, self.row, self.col, self.dy, self.dx, self.thickness[slices])

    def volume_ml(self, mask: np.ndarray) -> float:
        return integrate_ml(mask, self.thickness, self.pixel_mm2)

    def slice_ml(self, mask: np.ndarray) -> np.ndarray:
        """Volume (mL) of ``mask`` in each slice."""
        return np.asarray(mask.sum(axis=(1, 2)) * self.thickness * self.pixel_mm2 / 1000.0, dtype=float)

    def centroid(self, mask: np.ndarray) -> np.ndarray:
        """Centroid of ``mask`` in patient coordinates (mm)."""
        counts = mask.sum(axis=(1, 2)).astype(float)
        total = counts.sum()
        # Mean row and column from per-row and per-column counts (no index arrays per voxel).
        r = float(mask.sum(axis=(0, 2)) @ np.arange(mask.shape[1])) / total
        c = float(mask.sum(axis=(0, 1)) @ np.arange(mask.shape[2])) / total
        origin = (counts[:, None] * self.positions).sum(axis=0) / total
        return np.asarray(origin + r * self.dy * self.col + c * self.dx * self.row, dtype=float)

    def patient_x(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Patient x (+ is patient left) of every voxel."""
        _, rows, cols = shape
        r = np.arange(rows)[:, None] * self.dy * self.col[0]
        c = np.arange(cols)[None, :] * self.dx * self.row[0]
        return np.asarray(self.positions[:, 0][:, None, None] + (r + c)[None], dtype=float)

    def left_of(self, x: float, shape: tuple[int, int, int]) -> np.ndarray:
        """Whether each voxel lies to the patient's left of patient x ``x`` (mm): the values of
        ``patient_x(shape) > x``, built slice by slice (one byte per voxel, not eight)."""
        _, rows, cols = shape
        plane = np.arange(rows)[:, None] * self.dy * self.col[0] + np.arange(cols)[None, :] * self.dx * self.row[0]
        out = np.empty(shape, dtype=bool)
        for k in range(shape[0]):
            np.greater(self.positions[k, 0] + plane, x, out=out[k])
        return out

    def slice_x(self, k: int, shape: tuple[int, int]) -> np.ndarray:
        """Patient x of every pixel of slice ``k``."""
        rows, cols = shape
        return np.asarray(
            self.positions[k, 0]
            + np.arange(rows)[:, None] * self.dy * self.col[0]
            + np.arange(cols)[None, :] * self.dx * self.row[0],
            dtype=float,
        )


def canonical(volume: Volume) -> tuple[CanonicalView, Grid]:
    """The view that puts ``volume`` in canonical orientation, and the grid of that view."""
    orientation = np.asarray(volume.orientation, float)
    row, col = orientation[:3], orientation[3:]
    positions = np.asarray(volume.positions, float)
    dy, dx = float(volume.spacing[1]), float(volume.spacing[2])
    thickness = slice_thicknesses(volume.positions, orientation, volume.spacing[0])
    transpose = abs(row[0]) < abs(row[1])
    if transpose:  # columns run along y: swap the roles of rows and columns
        row, col, dy, dx = col, row, dx, dy
    flip_cols, flip_rows = bool(row[0] < 0), bool(col[1] < 0)
    n, rows, cols = volume.shape
    if transpose:
        rows, cols = cols, rows
    flip_slices = bool(n > 1 and positions[-1, 2] < positions[0, 2])
    view = CanonicalView(transpose, flip_slices, flip_rows, flip_cols)
    origin = positions.copy()
    if flip_cols:
        origin = origin + (cols - 1) * dx * row
        row = -row
    if flip_rows:
        origin = origin + (rows - 1) * dy * col
        col = -col
    if flip_slices:
        origin, thickness = origin[::-1], thickness[::-1]
    return view, Grid(origin, row, col, dy, dx, np.asarray(thickness, float))


#: Patient Position (PS3.3 C.7.3.1.1.2) -> the patient axis and sign gravity pulls along.
_GRAVITY = {
    "HFS": (1, 1.0), "FFS": (1, 1.0),  # supine: towards the back (+y)
    "HFP": (1, -1.0), "FFP": (1, -1.0),  # prone: towards the front
    "HFDR": (0, -1.0), "FFDR": (0, -1.0),  # right side down (-x)
    "HFDL": (0, 1.0), "FFDL": (0, 1.0),
}


def gravity(volume: Volume) -> tuple[int, float, str]:
    """(patient axis 0=x/1=y, sign, how it was decided) of gravity; supine when not stated."""
    position = str(volume.datasets[0].get("PatientPosition", "") or "").strip().upper()
    if position in _GRAVITY:
        axis, sign = _GRAVITY[position]
        return axis, sign, f"Patient Position {position}"
    return 1, 1.0, "supine assumed (no Patient Position)"
