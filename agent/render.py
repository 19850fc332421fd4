"""What the planner sees of a series: one rendered key image, and the DICOM metadata as text.

The MLLM of MMedAgent reads one 2D RGB image. A series is turned into one: CT is windowed
(lung or soft tissue by the instruction, else the series' own VOI LUT window, PS3.3 C.11.2),
MONOCHROME1 is inverted so that air is dark as in MONOCHROME2 (PS3.3 C.7.6.3.1.2), and a volume
shows its key slice (the one with most signal) or a montage of three slices.
"""
from __future__ import annotations

import re
from typing import Any

import numpy as np

from image_model.volume import Volume
from tools.imaging import (
    CT_DEFAULT_WINDOW,
    META_KEYS,
    STRETCH_PERCENTILES,
    Window,
    first_number,
)

#: CT windows by name (centre, width in HU), the usual radiology presets.
CT_WINDOWS: dict[str, Window] = {
    "lung": Window(-600.0, 1500.0),
    "soft_tissue": CT_DEFAULT_WINDOW,
    "bone": Window(400.0, 1800.0),
    "brain": Window(40.0, 80.0),
}

#: Instruction words that pick a CT window (first match wins, in this order).
WINDOW_HINTS: tuple[tuple[str, str], ...] = (
    (r"\b(lungs?|pulmonary|airways?|emphysema|nodules?|pneumothorax)\b", "lung"),
    (r"\b(bones?|fractures?|skeletal|spine|vertebra\w*|rib|ribs)\b", "bone"),
    (r"\b(brain|intracranial|hemorrhage|haemorrhage|stroke)\b", "brain"),
    (r"\b(liver|spleen|kidneys?|pancreas|abdomen|abdominal|soft tissue|organs?)\b", "soft_tissue"),
)

#: Header fields given to the planner as text; never patient identifiers (PS3.15 Annex E).
METADATA_FIELDS: tuple[tuple[str, str], ...] = (
    ("Modality", "Modality"),
    ("BodyPartExamined", "Body part"),
    ("StudyDescription", "Study description"),
    ("SeriesDescription", "Series description"),
    ("ProtocolName", "Protocol"),
    ("ViewPosition", "View position"),
    ("ImageType", "Image type"),
    ("ContrastBolusAgent", "Contrast agent"),
)


def meta_value(volume: Volume, keyword: str) -> Any:
    """A header value: ``volume.meta`` first (the loader's key, or the keyword itself), then the
    first source dataset (for multi-frame sources, the loader's meta is the reliable one); None if absent."""
    for key in (META_KEYS.get(keyword, keyword), keyword):
        if key in volume.meta and volume.meta[key] not in (None, ""):
            return volume.meta[key]
    if volume.datasets:
        value = getattr(volume.datasets[0], keyword, None)
        if value not in (None, ""):
            return value
    return None


def choose_window(volume: Volume, hint: str = "") -> Window:
    """CT: preset by instruction hint, else the series' window, else soft tissue. Others: the
    series' window, else the 0.5-99.5 percentile range of the pixels."""
    if volume.modality == "CT":
        for pattern, name in WINDOW_HINTS:
            if re.search(pattern, hint, re.IGNORECASE):
                return CT_WINDOWS[name]
    center = first_number(meta_value(volume, "WindowCenter"))
    width = first_number(meta_value(volume, "WindowWidth"))
    if center is not None and width is not None and width > 0:
        return Window(center, width)
    if volume.modality == "CT":
        return CT_WINDOWS["soft_tissue"]
    lo, hi = np.percentile(volume.pixels, STRETCH_PERCENTILES)
    return Window(float(lo + hi) / 2.0, max(float(hi - lo), 1e-6))


def apply_window(pixels: np.ndarray, window: Window, invert: bool = False) -> np.ndarray:
    """Linear VOI LUT (PS3.3 C.11.2.1.2, simplified to the linear form) to uint8."""
    scaled = (pixels.astype(np.float32) - window.low) / window.width
    out = np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return 255 - out if invert else out


#: The middle slice is the key slice unless its signal is below this share of the best slice's.
MIDDLE_SIGNAL_SHARE = 0.5


def key_slice_index(volume: Volume) -> int:
    """The middle slice (where scanned anatomy usually centres), unless it is nearly empty: then the
    slice with most signal (pixels above the volume's mean), ties going to the middle."""
    n = volume.pixels.shape[0]
    if n == 1:
        return 0
    threshold = float(volume.pixels.mean())
    signal = (volume.pixels > threshold).reshape(n, -1).sum(axis=1)
    middle = (n - 1) // 2
    if signal[middle] >= MIDDLE_SIGNAL_SHARE * signal.max():
        return middle
    best = np.flatnonzero(signal == signal.max())
    return int(best[np.argmin(np.abs(best - (n - 1) / 2.0))])


def montage_indices(volume: Volume) -> list[int]:
    """Three slices at 25%, 50% and 75% of the stack (or fewer for short stacks)."""
    n = volume.pixels.shape[0]
    return sorted({min(n - 1, round(f * (n - 1))) for f in (0.25, 0.5, 0.75)})


def render_key_image(
    volume: Volume, *, hint: str = "", montage: bool = False, max_size: int | None = 1024
) -> np.ndarray:
    """The (rows, cols, 3) uint8 image the planner sees."""
    window = choose_window(volume, hint)
    invert = str(meta_value(volume, "PhotometricInterpretation") or "").upper() == "MONOCHROME1"
    indices = montage_indices(volume) if montage and volume.is_3d else [key_slice_index(volume)]
    tiles = [apply_window(volume.pixels[i], window, invert) for i in indices]
    gray = np.concatenate(tiles, axis=1) if len(tiles) > 1 else tiles[0]
    if max_size is not None and max(gray.shape) > max_size:
        gray = _shrink(gray, max_size)
    return np.repeat(gray[:, :, None], 3, axis=2)


def _shrink(gray: np.ndarray, max_size: int) -> np.ndarray:
    from PIL import Image

    scale = max_size / max(gray.shape)
    size = (max(1, round(gray.shape[1] * scale)), max(1, round(gray.shape[0] * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.BILINEAR))


def volume_meta(volume: Volume) -> dict[str, Any]:
    """The METADATA_FIELDS present for this series, as plain strings."""
    out: dict[str, Any] = {}
    for keyword, _ in METADATA_FIELDS:
        value = meta_value(volume, keyword)
        if value is None:
            continue
        if keyword == "ImageType" and not isinstance(value, str):
            value = "\\".join(str(v) for v in value)
        out[keyword] = str(value) if keyword != "Modality" else str(value).upper()
    out.setdefault("Modality", volume.modality)
    return out


def metadata_text(volume: Volume) -> str:
    """Modality, body part, descriptions, geometry: one ``Label: value`` line each; no identifiers."""
    meta = volume_meta(volume)
    lines = [f"{label}: {meta[kw]}" for kw, label in METADATA_FIELDS if kw in meta]
    slices, rows, cols = volume.shape
    kind = "3D volume" if volume.is_3d else "2D image"
    lines.append(f"Image: {kind}, {slices} slice(s) of {rows}x{cols}")
    dz, dy, dx = volume.spacing
    lines.append(f"Spacing (slice, row, column): {dz:g} x {dy:g} x {dx:g} mm")
    return "\n".join(lines)
