"""Sizes of masks, measured one way for every tool.

A volume integrates each slice's area over that slice's own thickness (half the gap to each
neighbour, :func:`image_model.geometry.slice_thicknesses`), never a mean-gap voxel: on an unevenly
spaced series, or one missing a slice, the mean gap overstates some slices and understates others.

A size is stated in millimetres only when the source says how large its pixels are (and, for a
volume, how far apart its slices are); otherwise it is a count of pixels or voxels, and its unit
says so (UCUM annotations ``{pixels}`` / ``{voxels}``): a wrong millimetre figure is worse than an
honest pixel count (PS3.3 C.7.6.2.1.1 and 10.7.1.3 on Pixel Spacing and Imager Pixel Spacing).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from image_model.codes import concept, unit
from image_model.findings import Code, Measurement
from image_model.geometry import slice_thicknesses
from image_model.volume import Volume

#: ``Volume.meta["pixel_spacing_source"]`` values the loader writes when it had to assume 1 mm.
ASSUMED = "assumed"


def pixel_spacing_known(volume: Volume) -> bool:
    """False when the loader assumed the pixel spacing (no usable PixelSpacing / ImagerPixelSpacing)."""
    return not str(volume.meta.get("pixel_spacing_source", "")).startswith(ASSUMED)


def slice_spacing_known(volume: Volume) -> bool:
    """False when the distance between slices (or a lone slice's thickness) was assumed: positions
    synthesised by the loader (``meta["geometry"]``) or no Slice Thickness on a single image."""
    if volume.shape[0] == 1:
        return volume.meta.get("slice_spacing_source") != ASSUMED
    return "geometry" not in volume.meta


def pixel_spacing_note(volume: Volume) -> str | None:
    """What a reader must know about the in-plane unit: None for Pixel Spacing (patient plane);
    a sentence for Imager Pixel Spacing (detector plane, not corrected for magnification) or an
    unknown spacing (sizes in pixels)."""
    source = str(volume.meta.get("pixel_spacing_source", "PixelSpacing"))
    if source.startswith(ASSUMED):
        return "pixel spacing unknown (no usable Pixel Spacing or Imager Pixel Spacing): sizes in pixels"
    if source == "ImagerPixelSpacing":
        return "sizes from Imager Pixel Spacing: at the detector plane, not corrected for magnification"
    if source == "NominalScannedPixelSpacing":
        return "sizes from Nominal Scanned Pixel Spacing: the scanned film, not the patient"
    return None


def slice_thickness_mm(volume: Volume) -> np.ndarray:
    """The thickness (mm) each slice of ``volume`` stands for, in slice order."""
    return slice_thicknesses(volume.positions, np.asarray(volume.orientation), volume.spacing[0])


def integrate_ml(mask: np.ndarray, thickness_mm: Sequence[float] | np.ndarray, pixel_area_mm2: float) -> float:
    """Volume (mL) of a (slices, rows, cols) mask: each slice's pixel count x its thickness x the
    pixel area. The one formula behind every volume the node reports."""
    counts = np.asarray(mask, dtype=bool).reshape(len(mask), -1).sum(axis=1)
    return float(counts @ np.asarray(thickness_mm, dtype=float)) * pixel_area_mm2 / 1000.0


def mask_volume_ml(mask: np.ndarray, volume: Volume) -> float:
    """Volume (mL) of ``mask`` (shaped like ``volume.pixels``), integrating per-slice thickness."""
    if mask.shape != volume.shape:
        raise ValueError(f"mask shape {mask.shape} != volume shape {volume.shape}")
    _, dy, dx = volume.spacing
    return integrate_ml(mask, slice_thickness_mm(volume), dy * dx)


def area_size(pixels: float, volume: Volume) -> Measurement:
    """An in-plane area of ``pixels`` pixels (a count, or a polygon's area in pixel units) of
    ``volume``: in mm2 when the pixel spacing is known, else in pixels."""
    if pixel_spacing_known(volume):
        _, dy, dx = volume.spacing
        return Measurement(concept("area"), float(pixels) * dy * dx, unit("mm2"))
    return Measurement(concept("area"), float(pixels), unit("pixels"))


def mask_size(mask: np.ndarray, volume: Volume) -> Measurement:
    """The size of a tool's mask as the report states it: a volume on a multi-slice series, an
    area on a single image; in mL / mm2 when the spacing is known, else in voxels / pixels."""
    if volume.is_3d:
        if pixel_spacing_known(volume) and slice_spacing_known(volume):
            return Measurement(concept("volume"), mask_volume_ml(mask, volume), unit("mL"))
        return Measurement(concept("volume"), float(np.count_nonzero(mask)), unit("voxels"))
    return area_size(float(np.count_nonzero(mask)), volume)


def intensity_unit(volume: Volume) -> Code:
    """The unit of ``volume``'s pixel values: Hounsfield units for CT (the loader applies the
    Rescale Slope and Intercept, PS3.3 C.11.1.1.2), else none."""
    return unit("HU") if volume.modality == "CT" else unit("1")


def region_statistics(values: np.ndarray, region: np.ndarray, value_unit: Code) -> list[Measurement]:
    """Mean, standard deviation, minimum and maximum of the pixel ``values`` inside ``region``
    (a boolean mask of the same shape): what a viewer computes for a drawn region (PS3.16 CID
    7464); none for an empty region."""
    inside = np.asarray(values, dtype=np.float64)[np.asarray(region, dtype=bool)]
    if inside.size == 0:
        return []
    return [
        Measurement(concept(name), float(statistic(inside)), value_unit)
        for name, statistic in (("mean", np.mean), ("standard_deviation", np.std),
                                ("minimum", np.min), ("maximum", np.max))
    ]
