"""Turning volume slices into the RGB pictures 2D vision models were trained on, and mapping boxes.

Grounding DINO and MedSAM were trained on 8-bit RGB images, not on Hounsfield units, so each slice
is windowed the way a radiologist would see it: the source's own VOI window (PS3.3 C.11.2,
WindowCenter/WindowWidth) when it has one, a soft-tissue window for CT otherwise, and a robust
min-max stretch for everything else. MONOCHROME1 images (PS3.3 C.7.6.3.1.2: minimum value is white,
common for CR/DX) are inverted so that bone is bright for every input.

Boxes travel in the MMedAgent protocol normalised to 0-1 of the image's columns (x) and rows (y);
:func:`to_pixels` and :func:`to_normalised` convert between that and pixel coordinates, where a box
``(x0, y0, x1, y1)`` spans pixel edges (pixel ``c`` covers ``[c, c+1)``), so a full-image box is
``(0, 0, cols, rows)``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from image_model.volume import Volume

#: Percentiles used to stretch non-CT images without a window (robust to a few hot pixels).
STRETCH_PERCENTILES: tuple[float, float] = (0.5, 99.5)

BoxTuple = tuple[float, float, float, float]


@dataclass(frozen=True)
class Window:
    """A linear VOI window (PS3.3 C.11.2.1.2): ``center`` and ``width`` in modality units."""

    center: float
    width: float

    @property
    def low(self) -> float:
        return self.center - self.width / 2.0

    @property
    def high(self) -> float:
        return self.center + self.width / 2.0


#: Soft-tissue window (centre 40, width 400 HU) for CT without a window of its own.
CT_DEFAULT_WINDOW = Window(40.0, 400.0)


def first_number(value: Any) -> float | None:
    """WindowCenter/Width are multi-valued (VM 1-n); the first pair is the default view."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and not isinstance(value, str)):
        items = list(value)
        if not items:
            return None
        value = items[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


#: Where the loader (``image_model.loader``) puts each display attribute in ``Volume.meta``.
META_KEYS: dict[str, str] = {
    "WindowCenter": "window_center",
    "WindowWidth": "window_width",
    "PhotometricInterpretation": "photometric_interpretation",
}


def _hint(volume: Volume, keyword: str) -> Any:
    """A display attribute from ``volume.meta`` (loader key or DICOM keyword), else from the
    first source header."""
    for key in (META_KEYS.get(keyword, keyword), keyword):
        if key in volume.meta:
            return volume.meta[key]
    if volume.datasets:
        return volume.datasets[0].get(keyword)
    return None


def display_window(volume: Volume) -> Window | None:
    """The window to show ``volume`` with: its own, a CT default, or None (stretch per slice)."""
    center = first_number(_hint(volume, "WindowCenter"))
    width = first_number(_hint(volume, "WindowWidth"))
    if center is not None and width is not None and width > 0:
        return Window(center, width)
    if volume.modality.upper() == "CT":
        return CT_DEFAULT_WINDOW
    return None


def is_monochrome1(volume: Volume) -> bool:
    if volume.meta.get("monochrome1"):
        return True
    value = _hint(volume, "PhotometricInterpretation")
    return str(value or "").strip().upper() == "MONOCHROME1"


def slice_to_gray(pixels: np.ndarray, window: Window | None, invert: bool) -> np.ndarray:
    """One 2D slice in modality units -> uint8 grey (rows, cols)."""
    plane = np.asarray(pixels, dtype=np.float32)
    if window is not None:
        low, high = window.low, window.high
    else:
        finite = plane[np.isfinite(plane)]
        if finite.size == 0:
            return np.zeros(plane.shape, dtype=np.uint8)
        low, high = (float(v) for v in np.percentile(finite, STRETCH_PERCENTILES))
    span = max(high - low, 1e-6)
    scaled = np.clip((np.nan_to_num(plane, nan=low) - low) / span, 0.0, 1.0)
    if invert:
        scaled = 1.0 - scaled
    return np.round(scaled * 255.0).astype(np.uint8)


def volume_to_rgb(volume: Volume, slices: Sequence[int] | None = None) -> np.ndarray:
    """Slices of ``volume`` as uint8 RGB, shape (n, rows, cols, 3), windowed for display.

    The window is chosen once per volume so all slices share one greyscale mapping; only
    windowless non-CT images are stretched slice by slice.
    """
    indices = list(range(volume.shape[0])) if slices is None else list(slices)
    window = display_window(volume)
    invert = is_monochrome1(volume)
    rows, cols = volume.shape[1:]
    out = np.empty((len(indices), rows, cols, 3), dtype=np.uint8)
    for i, index in enumerate(indices):
        out[i] = slice_to_gray(volume.pixels[index], window, invert)[..., None]
    return out


def to_pixels(box: Sequence[float], rows: int, cols: int) -> BoxTuple:
    """Normalised (x0, y0, x1, y1) -> pixel-edge coordinates on a (rows, cols) image."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (x0 * cols, y0 * rows, x1 * cols, y1 * rows)


def to_normalised(box: Sequence[float], rows: int, cols: int) -> BoxTuple:
    """Pixel-edge (x0, y0, x1, y1) on a (rows, cols) image -> normalised 0-1, clipped."""
    x0, y0, x1, y1 = (float(v) for v in box)
    clip = lambda v: min(max(v, 0.0), 1.0)
    return (clip(x0 / cols), clip(y0 / rows), clip(x1 / cols), clip(y1 / rows))


def check_normalised(box: Sequence[float]) -> BoxTuple:
    """Validate a protocol box: four numbers in 0-1 with x0 < x1 and y0 < y1."""
    if len(box) != 4:
        raise ValueError(f"a box needs 4 numbers (x0, y0, x1, y1), got {len(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    if not all(0.0 <= v <= 1.0 for v in (x0, y0, x1, y1)):
        raise ValueError(f"box {list(box)} is not normalised to 0-1")
    if not (x0 < x1 and y0 < y1):
        raise ValueError(f"box {list(box)} is empty (needs x0 < x1 and y0 < y1)")
    return (x0, y0, x1, y1)


def slice_indices(volume: Volume, requested: Sequence[int] | None) -> list[int]:
    """The slices a tool should look at: all of them by default, else the requested ones checked."""
    count = volume.shape[0]
    if requested is None:
        return list(range(count))
    out = []
    for index in requested:
        if not 0 <= int(index) < count:
            raise ValueError(f"slice {index} is outside the volume (0-{count - 1})")
        out.append(int(index))
    return sorted(set(out))
