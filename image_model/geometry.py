"""Slice-stack geometry in patient coordinates (PS3.3 C.7.6.2.1.1), as pure functions.

The loader orders slices by their position along the slice normal (``row x col`` of
ImageOrientationPatient), never by InstanceNumber or file name: neither is required to follow
anatomy. Spacing is measured from positions, not from SliceThickness (which is the reconstructed
slab width and may differ from the distance between slices, PS3.3 C.7.6.2.1.1 note).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Two orientations whose cosines differ by less than this are the same orientation.
ORIENTATION_TOLERANCE = 1e-3
#: Slices closer than this along the normal are "at the same position" (mm).
SAME_POSITION_MM = 1e-3
#: Gaps differing from their mean by more than this fraction make the spacing "uneven".
UNEVEN_SPACING_FRACTION = 0.01
#: A stack whose positions leave a straight line by more than this is not one stack (mm).
STACK_LINE_TOLERANCE_MM = 0.5
#: Shear angles below this are rounding, not gantry tilt (degrees).
TILT_TOLERANCE_DEG = 0.1


class GeometryError(ValueError):
    """The slices do not form one orderable stack; the message says why."""


@dataclass(frozen=True)
class Stack:
    """How a set of slices forms one volume."""

    #: Indices into the input slices, in ascending position along the normal.
    order: np.ndarray
    #: Positions (ImagePositionPatient) in that order, shape (n, 3).
    positions: np.ndarray
    normal: np.ndarray
    #: Distances between consecutive slices along the normal (n - 1 values).
    gaps: np.ndarray
    #: Slice spacing to report: the mean gap (equal to every gap unless ``uneven``).
    spacing: float
    uneven: bool
    #: Angle between the stacking direction and the normal (gantry tilt), degrees.
    tilt_deg: float


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:
        raise GeometryError("ImageOrientationPatient row and column directions are not orthogonal")
    return normal / norm


def same_orientation(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), atol=ORIENTATION_TOLERANCE))


def order_stack(positions: np.ndarray, orientation: np.ndarray) -> Stack:
    """Order slices by position along the normal and measure spacing, tilt and evenness.

    Raises :class:`GeometryError` when two slices share a position (several acquisitions or
    temporal phases in one series) or when the positions do not lie on one straight line.
    """
    positions = np.asarray(positions, float).reshape(-1, 3)
    normal = slice_normal(orientation)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    ordered = positions[order]
    if len(order) == 1:
        return Stack(order, ordered, normal, np.zeros(0), 0.0, False, 0.0)
    gaps = np.diff(along[order])
    if np.any(gaps < SAME_POSITION_MM):
        count = int(np.sum(gaps < SAME_POSITION_MM)) + 1
        raise GeometryError(
            f"{count} slices share a position along the slice normal (several acquisitions, "
            "echoes or temporal phases in one series?); cannot build one volume"
        )
    # Positions must lie on one line: fit position = p0 + t * direction over the along-normal coordinate.
    t = along[order] - along[order][0]
    direction = (ordered[-1] - ordered[0]) / t[-1]
    predicted = ordered[0] + t[:, None] * direction[None, :]
    residual = float(np.max(np.linalg.norm(ordered - predicted, axis=1)))
    if residual > STACK_LINE_TOLERANCE_MM:
        raise GeometryError(
            f"slice positions do not lie on one line (off by up to {residual:.1f} mm): "
            "not a single stack that can be ordered"
        )
    cos_tilt = 1.0 / float(np.linalg.norm(direction))
    tilt = math.degrees(math.acos(min(1.0, cos_tilt)))
    mean_gap = float(np.mean(gaps))
    uneven = bool(np.max(np.abs(gaps - mean_gap)) > UNEVEN_SPACING_FRACTION * mean_gap)
    return Stack(order, ordered, normal, gaps, mean_gap, uneven, tilt if tilt > TILT_TOLERANCE_DEG else 0.0)


def slice_thicknesses(positions: np.ndarray, orientation: np.ndarray, default: float) -> np.ndarray:
    """Thickness each slice stands for, for volume integration: half the gap to each neighbour.

    ``positions`` must already be in stack order. End slices take their single neighbour's gap; a
    lone slice takes ``default``. With even spacing every value equals the spacing; with a missing
    slice its neighbours each cover half the hole, which keeps integrated volumes right.
    """
    positions = np.asarray(positions, float).reshape(-1, 3)
    if len(positions) == 1:
        return np.array([default])
    along = positions @ slice_normal(orientation)
    gaps = np.abs(np.diff(along))
    out = np.empty(len(positions))
    out[0], out[-1] = gaps[0], gaps[-1]
    out[1:-1] = (gaps[:-1] + gaps[1:]) / 2.0
    return out
