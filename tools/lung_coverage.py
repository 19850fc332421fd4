"""How much of the lungs a CT shows: per found lung (partial coverage), and per series (routing).

**Per lung** (:func:`lung_coverage`): a lung that runs into the first or last slice, or into the
edge of a field of view that clips the body, is only partly in the volume. Its volume is then the
volume *within the field of view*, and the words say which part is seen: "lung bases only" when
the top of the volume cuts it below the hila, "apex not in the field of view" when the hila are
seen, and likewise "lung apices only" / "base not in the field of view" at the bottom.

**Per series** (:func:`thorax_coverage`): a fast check, for routing, that a CT series covers the
thorax. It loads a subsample of the slices (about one every :data:`SAMPLE_SPACING_MM`, through the
one loader), looks at them at about :data:`SAMPLE_PIXEL_MM` per pixel, and measures over how much
of the body's length there is *lung-like* air: air inside the body whose core has the attenuation
of aerated lung (not the pure gas of bowel or sinuses), in each body half, of at least
:data:`MIN_LUNG_SLICE_CM2`. An abdomen whose first slices hold the lung bases shows a few
centimetres of it; a chest, even one clipped at the apices, shows most of the lungs' ~25 cm.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from scipy import ndimage

from image_model.findings import Coverage
from image_model.header_values import DECODE_ERRORS
from image_model.loader import LoadError, load_series
from image_model.parse_policy import ParseLimits, UnsafeDicom, scan_file
from tools.lung_candidates import CORE_MM, MIN_AIR_FRACTION, PARENCHYMA_HU
from tools.lung_geometry import Grid, canonical
from tools.lung_masks import body_mask

#: A lung cut by the volume whose part in view is at least this tall is most of a lung, whatever
#: the airway shows (an adult lung is ~250 mm tall; bases or apices alone are far shorter).
MOST_OF_LUNG_MM = 180.0
SAMPLE_SPACING_MM = 10.0
SAMPLE_PIXEL_MM = 3.0
MIN_LUNG_SLICE_CM2 = 4.0
BODY_THRESHOLD_HU = -500.0
LUNG_THRESHOLD_HU = -320.0
#: At most this many slices are read for the routing check.
MAX_SAMPLED_SLICES = 64


def lung_coverage(
    mask: np.ndarray, grid: Grid, clipped_slices: np.ndarray, trachea_at_top: bool, carina_seen: bool
) -> Coverage:
    """Coverage of one lung (canonical mask): which edges clip it, and in words.

    Cut at the top: with the trachea in the top slice the hila are in view and only the apex is
    missing; without it the top slice lies below the hila: the lung base only. Cut at the bottom:
    with the carina in view only the base is missing; without it, the apex only."""
    n = mask.shape[0]
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    clipped: list[str] = []
    if present[-1] == n - 1:
        clipped.append("superior")
    if present[0] == 0:
        clipped.append("inferior")
    edge = np.zeros(mask.shape[1:], dtype=bool)
    edge[:2, :] = edge[-2:, :] = edge[:, :2] = edge[:, -2:] = True
    if any(clipped_slices[k] and (mask[k] & edge).any() for k in present):
        clipped.append("in-plane")
    if not clipped:
        return Coverage(True, (), "whole lung in the field of view")
    z = grid.z
    most = float(z[present[-1]] - z[present[0]] + np.median(grid.thickness)) >= MOST_OF_LUNG_MM
    words = []
    if "superior" in clipped and "inferior" in clipped:
        words.append("middle part only: the lung continues above the first and below the last slice")
    elif "superior" in clipped:
        words.append("apex not in the field of view" if trachea_at_top or most else "base only")
    elif "inferior" in clipped:
        words.append("base not in the field of view" if carina_seen or most else "apex only")
    if "in-plane" in clipped:
        words.append("part of it outside the field of view (in-plane)")
    return Coverage(False, tuple(clipped), "; ".join(words))


@dataclass(frozen=True)
class ThoraxCoverage:
    """Outcome of the routing check: does the series cover the thorax?"""

    #: Length along the body (mm) over which lung-like air was seen.
    lung_extent_mm: float
    #: Length of the volume along the body (mm).
    volume_extent_mm: float
    slices_checked: int
    #: Where in the volume the lung-like air is: "none", "top", "bottom", "throughout"...
    where: str
    #: Set when the check could not run (the series is not a CT volume it can read).
    error: str = ""

    def covers(self, min_extent_mm: float, min_fraction: float) -> bool:
        """Lung-like air over ``min_extent_mm``, or over ``min_fraction`` of the volume's length."""
        if self.error or self.lung_extent_mm <= 0:
            return False
        return self.lung_extent_mm >= min(min_extent_mm, min_fraction * self.volume_extent_mm)

    def describe(self) -> str:
        if self.error:
            return f"thorax coverage not checked: {self.error}"
        if self.lung_extent_mm == 0:
            return (
                f"no lung-like air in {self.slices_checked} sampled slices over "
                f"{self.volume_extent_mm:.0f} mm of the body"
            )
        return (
            f"lung-like air over {self.lung_extent_mm:.0f} mm ({self.where}) of "
            f"{self.volume_extent_mm:.0f} mm, in {self.slices_checked} sampled slices"
        )


def thorax_coverage(paths: Sequence[Path]) -> ThoraxCoverage:
    """Check a CT series on disk (its instance files) for thoracic coverage, reading a subsample."""
    try:
        chosen = _sample_files(paths)
        volume = load_series(chosen)
    except (LoadError, OSError, InvalidDicomError, ValueError) as exc:
        return ThoraxCoverage(0.0, 0.0, 0, "none", error=str(exc))
    if volume.modality.upper() != "CT" or volume.pixels.shape[0] < 2:
        return ThoraxCoverage(0.0, 0.0, int(volume.pixels.shape[0]), "none", error="not a CT volume")
    view, grid = canonical(volume)
    hu = view.forward(volume.pixels)
    step_r = max(1, round(SAMPLE_PIXEL_MM / grid.dy))
    step_c = max(1, round(SAMPLE_PIXEL_MM / grid.dx))
    hu = hu[:, ::step_r, ::step_c]
    grid = Grid(grid.positions, grid.row, grid.col, grid.dy * step_r, grid.dx * step_c, grid.thickness)
    body, _ = body_mask(hu, BODY_THRESHOLD_HU, grid)
    air = body & (hu < LUNG_THRESHOLD_HU)
    lung_like = np.array([_lung_like_slice(hu[k], air[k], grid) for k in range(hu.shape[0])])
    z = grid.z
    volume_extent = float(z[-1] - z[0]) + SAMPLE_SPACING_MM
    found = np.flatnonzero(lung_like)
    if found.size == 0:
        return ThoraxCoverage(0.0, volume_extent, len(z), "none")
    gaps = np.diff(z)
    spacing = float(np.median(gaps)) if gaps.size else SAMPLE_SPACING_MM
    extent = float(z[found[-1]] - z[found[0]]) + spacing
    return ThoraxCoverage(extent, volume_extent, len(z), _where(found, len(z)))


def _where(found: np.ndarray, n: int) -> str:
    top, bottom = found[-1] == n - 1, found[0] == 0
    if top and bottom:
        return "throughout the volume"
    if top:
        return "at the top of the volume"
    if bottom:
        return "at the bottom of the volume"
    return "within the volume"


def _lung_like_slice(hu: np.ndarray, air: np.ndarray, grid: Grid) -> bool:
    """Some air region of this slice is big, has parenchymal attenuation and is not a mottle."""
    labels, count = ndimage.label(air)
    if count == 0:
        return False
    pixel_cm2 = grid.pixel_mm2 / 100.0
    areas = np.bincount(labels.ravel())
    depth = ndimage.distance_transform_edt(air, sampling=(grid.dy, grid.dx))
    low, high = PARENCHYMA_HU
    for i in np.flatnonzero(areas * pixel_cm2 >= MIN_LUNG_SLICE_CM2):
        if i == 0:
            continue
        region = labels == i
        core = region & (depth >= CORE_MM)
        if core.sum() < 5 or not low <= float(np.median(hu[core])) <= high:
            continue
        if region.sum() >= MIN_AIR_FRACTION * ndimage.binary_fill_holes(region).sum():
            return True
    return False


#: What reading one file's position may raise: the file or one of its values is unreadable.
READ_ERRORS: tuple[type[Exception], ...] = (InvalidDicomError, OSError, EOFError, *DECODE_ERRORS)
#: A file to sample: its place along the slice normal, or MULTIFRAME for an enhanced instance.
MULTIFRAME = -math.inf


def _place(path: Path) -> float | None:
    """Where one instance lies along its slice normal (mm); MULTIFRAME for a multi-frame
    instance; None for a file to leave out: unreadable, a localizer, no position, or a value a
    peer wrote malformed (the routing check does without that one file), or one the parse
    policy refuses (the loader would refuse it too). Read from the raw values the parse
    policy's scan returns (:func:`image_model.parse_policy.scan_file`: it walks the element
    structure without building values, ~5x cheaper than pydicom's parse of a real CT header),
    through pydicom only when a value is anything but plain."""
    scanned = _scanned_place(path)
    return _read_place(path) if scanned is UNKNOWN else scanned


class _Scan(Enum):
    #: A value is not plainly valid: pydicom reads the file (with its own reading of odd values).
    UNKNOWN = "unknown"


UNKNOWN = _Scan.UNKNOWN
IMAGE_TYPE, NUMBER_OF_FRAMES, POSITION, ORIENTATION = 0x00080008, 0x00280008, 0x00200032, 0x00200037
_DECIMAL = re.compile(rb"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(rb"[+-]?\d+")


def _scanned_place(path: Path) -> float | None | Literal[_Scan.UNKNOWN]:
    """:func:`_place` from the scanned raw values; UNKNOWN when a value is not plainly valid."""
    try:
        values = scan_file(path, ParseLimits(), (IMAGE_TYPE, NUMBER_OF_FRAMES, POSITION, ORIENTATION)).values
    except (UnsafeDicom, OSError):
        return None
    image_type = _plain_values(values.get(IMAGE_TYPE, b""))
    frames = _plain_values(values.get(NUMBER_OF_FRAMES, b""))
    position = _plain_values(values.get(POSITION, b""))
    orientation = _plain_values(values.get(ORIENTATION, b""))
    if image_type is None or frames is None or len(frames) > 1 or position is None or orientation is None:
        return UNKNOWN
    if b"LOCALIZER" in [v.upper() for v in image_type]:
        return None
    if frames:
        if not _INTEGER.fullmatch(frames[0]):
            return UNKNOWN
        if int(frames[0]) > 1:
            return MULTIFRAME
    if len(position) != 3 or len(orientation) != 6 or not all(_DECIMAL.fullmatch(v) for v in position + orientation):
        return UNKNOWN
    o = np.array([float(v) for v in orientation])
    place = float(np.dot(np.cross(o[:3], o[3:]), np.array([float(v) for v in position])))
    return place if math.isfinite(place) else UNKNOWN


def _plain_values(raw: bytes) -> list[bytes] | None:
    """The backslash-separated values of a text value with only trailing padding (space or NUL);
    None when a value has other spaces around it (pydicom's reading of those decides)."""
    text = raw.rstrip(b" \0")
    if not text:
        return []
    parts = text.split(b"\\")
    return None if any(part != part.strip() or not part for part in parts) else parts


def _read_place(path: Path) -> float | None:
    """:func:`_place` through pydicom."""
    try:
        ds = dcmread(path, stop_before_pixels=True, specific_tags=[
            "ImagePositionPatient", "ImageOrientationPatient", "ImageType", "NumberOfFrames",
        ])
        if "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]:
            return None
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            return MULTIFRAME
        position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if position is None or orientation is None:
            return None
        o = np.asarray(orientation, float)
        place = float(np.dot(np.cross(o[:3], o[3:]), np.asarray(position, float)))
    except READ_ERRORS:
        return None
    return place if math.isfinite(place) else None


def _sample_files(paths: Sequence[Path]) -> list[Path]:
    """About one file every SAMPLE_SPACING_MM along the slice normal (localizers left out)."""
    located: list[tuple[float, Path]] = []
    for path in paths:
        place = _place(path)
        if place == MULTIFRAME:
            return [path]  # one enhanced multi-frame instance: the whole volume
        if place is not None:
            located.append((place, path))
    if len(located) < 2:
        raise LoadError("fewer than two slices with a position")
    located.sort(key=lambda item: item[0])
    along = np.array([a for a, _ in located])
    targets = np.arange(along[0], along[-1] + SAMPLE_SPACING_MM / 2, SAMPLE_SPACING_MM)
    if targets.size > MAX_SAMPLED_SLICES:
        targets = np.linspace(along[0], along[-1], MAX_SAMPLED_SLICES)
    picks = sorted({int(np.argmin(np.abs(along - t))) for t in targets} | {0, len(located) - 1})
    return [located[i][1] for i in picks]
