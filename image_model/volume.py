"""The in-memory form of one series, as produced by the one DICOM loader (``image_model.loader``).

Tools see a :class:`Volume`; the SEG/SR encoders use its ``datasets`` as the source images that
results reference. Geometry follows DICOM patient coordinates (LPS, millimetres; PS3.3 C.7.6.2).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydicom.dataset import Dataset


@dataclass
class Volume:
    #: (slices, rows, cols) in modality units (Hounsfield units for CT), after rescale: int16 when
    #: every value is an integer in int16's range (CT with an integer rescale, most MR), else
    #: float32. Compare and index freely; convert (``astype(np.float32)``) before arithmetic.
    pixels: np.ndarray
    #: (slice, row, col) spacing in mm; slice spacing is the distance between consecutive slices.
    spacing: tuple[float, float, float]
    #: ImagePositionPatient of each slice, in pixels' slice order, shape (slices, 3).
    positions: np.ndarray
    #: ImageOrientationPatient: row direction cosines then column direction cosines (6 floats).
    orientation: tuple[float, float, float, float, float, float]
    #: Source datasets in slice order (pixel data may be absent: headers are what outputs need).
    #: For an enhanced multi-frame source this is one dataset and ``frame_numbers`` says which frame.
    datasets: list[Dataset]
    modality: str
    #: For multi-frame sources: the 1-based frame number of each slice; empty for single-frame series.
    frame_numbers: list[int] = field(default_factory=list)
    #: Display hints from the source (WindowCenter/Width, PhotometricInterpretation...).
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        slices, rows, cols = self.pixels.shape
        return int(slices), int(rows), int(cols)

    @property
    def is_3d(self) -> bool:
        return self.pixels.shape[0] > 1

    @property
    def study_instance_uid(self) -> str:
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.datasets[0].SeriesInstanceUID)
