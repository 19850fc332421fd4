"""The pixels of a secondary-capture overlay: the source slice windowed to 8-bit grey, each
segment a translucent colour fill with an opaque outline."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from image_model.volume import Volume

#: Opacity of the colour fill inside a segment; outlines are opaque.
FILL_ALPHA = 0.3
#: Percentiles of the volume's values used as the grey window when the source gives none.
AUTO_WINDOW_PERCENTILES = (1.0, 99.0)


def grey_window(volume: Volume) -> tuple[float, float]:
    """(low, high) modality values mapped to black and white: the source's first VOI window
    (PS3.3 C.11.2.1.2, linear) when it has one, else the volume's 1st-99th percentile."""
    center, width = volume.meta.get("window_center"), volume.meta.get("window_width")
    if center is not None and width is not None and width > 1:
        return center - width / 2.0, center + width / 2.0
    low, high = np.percentile(volume.pixels, AUTO_WINDOW_PERCENTILES)
    return float(low), float(max(high, low + 1.0))


def to_grey(plane: np.ndarray, window: tuple[float, float], monochrome1: bool) -> np.ndarray:
    """One slice as 8-bit display grey; MONOCHROME1 is inverted (low values display white)."""
    low, high = window
    grey = np.clip((plane.astype(np.float32) - low) / (high - low), 0.0, 1.0)
    if monochrome1:
        grey = 1.0 - grey
    return np.round(grey * 255.0).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """The mask's boundary pixels (the mask minus its 4-connected erosion)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def render_slice(grey: np.ndarray, masks: Sequence[tuple[tuple[int, int, int], np.ndarray]]) -> np.ndarray:
    """RGB (rows, cols, 3) uint8: grey, then each (RGB colour, mask) as a translucent fill and an
    opaque outline, in segment order (a later segment draws over an earlier one). The colours
    are the SEG's (:mod:`sr_templates.seg.palette`), so overlay and SEG look alike."""
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    for rgb_colour, mask in masks:
        colour = np.asarray(rgb_colour, dtype=np.float32)
        rgb[mask] = (1.0 - FILL_ALPHA) * rgb[mask] + FILL_ALPHA * colour
        rgb[outline(mask)] = colour
    return np.round(rgb).astype(np.uint8)
