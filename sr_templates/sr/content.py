"""Content items of the report, below the templates: TEXT evaluations, algorithm and tracking
identification (TID 4019, TID 4108), TID 300 measurements, and references to what a group is
about (a SEG segment, an image region).

Free text rides as a TEXT "qualitative evaluation": TID 1501/1410/1411 define that row as
"coded questions with coded or text answers" (PS3.16 TID 1501 row 12). highdicom's
QualitativeEvaluation only builds the CODE form, so :class:`TextEvaluation` builds the TEXT form
from highdicom's own TextContentItem.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import RelationshipTypeValues, TextContentItem
from highdicom.sr.templates import Template
from pydicom.dataset import Dataset

from image_model.codes import text_role
from image_model.findings import AlgorithmInfo, Box, LabelScore, Measurement, Segment, caveats
from image_model.measure import pixel_spacing_note
from image_model.volume import Volume
from sr_templates.coded import coded
from sr_templates.identity import OutputIdentity
from sr_templates.seg import EncodedSegment


class TextEvaluation(hd.sr.QualitativeEvaluation):
    """A TEXT-valued qualitative evaluation (PS3.16 TID 1501 row 12, TID 1410/1411 alike)."""

    def __init__(self, name: hd.sr.CodedConcept, text: str) -> None:
        item = TextContentItem(name=name, value=text, relationship_type=RelationshipTypeValues.CONTAINS)
        # Bypass the CODE-only constructor; the template is this one TEXT item.
        Template.__init__(self, [item])


def text_evaluation(role: str, text: str) -> TextEvaluation:
    """A TEXT evaluation named by its role's concept in codes.json (``text_roles``)."""
    return TextEvaluation(coded(text_role(role)), text)


def caveat_evaluations(item: Segment | Box | LabelScore) -> list[hd.sr.QualitativeEvaluation]:
    """The result's caveats (partial coverage; the tool's confidence, "uncertain" below its
    threshold: :func:`image_model.findings.caveats`) as Comments next to it, after its summary."""
    return [text_evaluation("caveat", text) for text in caveats(item)]


def scored_label(item: Box | LabelScore) -> str:
    """``tumor (score 0.42)``, marked uncertain when the tool's confidence says so."""
    unsure = ", uncertain" if item.confidence is not None and item.confidence.uncertain else ""
    return f"{item.label} (score {item.score:.2f}{unsure})"


def algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification."""
    params = [f"{k}={v}" for k, v in sorted(algorithm.parameters.items())] or None
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version, parameters=params)


def tracking(identity: OutputIdentity, label: str, *key: str) -> hd.sr.TrackingIdentifier:
    """TID 4108 tracking identifier with a derived (not random) UID, stable across re-runs."""
    return hd.sr.TrackingIdentifier(uid=identity.item_uid(*key), identifier=label)


Coordinates = hd.sr.CoordinatesForMeasurement | hd.sr.CoordinatesForMeasurement3D


def measurement_items(
    measurements: Sequence[Measurement], inferred_from: Coordinates | None = None
) -> list[hd.sr.Measurement]:
    """TID 300 NUM items; non-finite values cannot be encoded (DS/FD in MeasuredValueSequence).
    ``inferred_from``: the region each was measured on (TID 300 INFERRED FROM, TID 320 rows 3-4),
    which only a TID 1501 group may carry in highdicom."""
    return [
        hd.sr.Measurement(
            name=coded(m.name), value=float(m.value), unit=coded(m.unit),
            referenced_coordinates=[inferred_from] if inferred_from is not None else None,
        )
        for m in measurements
        if math.isfinite(m.value)
    ]


def referenced_segment(
    item: EncodedSegment, seg: hd.seg.Segmentation, volume: Volume
) -> hd.sr.ReferencedSegment:
    """The SEG segment plus the source images (frames) it was segmented on: the slices where its
    mask is non-empty. Built here rather than with ``ReferencedSegment.from_segmentation``, which
    (highdicom 0.28) fails on a one-segment SEG whose segment identification is in the shared
    functional groups."""
    slices = [int(z) for z in np.flatnonzero(item.segment.mask.reshape(volume.shape[0], -1).any(axis=1))]
    if volume.frame_numbers:
        ds = volume.datasets[0]
        sources = [
            hd.sr.SourceImageForSegmentation(
                ds.SOPClassUID, ds.SOPInstanceUID, sorted(volume.frame_numbers[z] for z in slices)
            )
        ]
    else:
        sources = [
            hd.sr.SourceImageForSegmentation(volume.datasets[z].SOPClassUID, volume.datasets[z].SOPInstanceUID)
            for z in slices
        ]
    return hd.sr.ReferencedSegment(
        sop_class_uid=seg.SOPClassUID,
        sop_instance_uid=seg.SOPInstanceUID,
        segment_number=item.segment_number,
        source_images=sources,
    )


def slice_of(volume: Volume, box: Box) -> int:
    """The volume slice a box was drawn on (a 2D image has one)."""
    if box.slice_index is None and volume.is_3d:
        raise ValueError(f"box {box.label!r} on a {volume.shape[0]}-slice volume names no slice_index")
    index = box.slice_index or 0
    if not 0 <= index < volume.shape[0]:
        raise ValueError(f"box {box.label!r}: slice_index {index} outside 0..{volume.shape[0] - 1}")
    return index


def source_image(volume: Volume, index: int) -> hd.sr.SourceImageForRegion:
    """The source image of slice ``index`` (and its frame, for a multi-frame source)."""
    if volume.frame_numbers:
        ds, frames = volume.datasets[0], [volume.frame_numbers[index]]
    else:
        ds, frames = volume.datasets[index], None
    return hd.sr.SourceImageForRegion(
        referenced_sop_class_uid=ds.SOPClassUID,
        referenced_sop_instance_uid=ds.SOPInstanceUID,
        referenced_frame_numbers=frames,
    )


def box_polyline(volume: Volume, box: Box) -> np.ndarray:
    """The normalised (x0, y0, x1, y1) box as a closed 5-point POLYLINE in image pixel coordinates.

    PS3.3 C.18.6.1.1: (0, 0) is the top-left corner of the top-left pixel and (Columns, Rows) the
    bottom-right corner of the bottom-right pixel, so a 0-1 coordinate scales by Columns/Rows.
    """
    _, rows, cols = volume.shape
    x0, y0, x1, y1 = (min(max(float(v), 0.0), 1.0) for v in box.box)
    x0, x1 = sorted((x0 * cols, x1 * cols))
    y0, y1 = sorted((y0 * rows, y1 * rows))
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)


def has_frame_of_reference(volume: Volume) -> bool:
    """True when the source places its pixels in a patient coordinate system: it names a Frame of
    Reference and the loader read (not assumed) its slice positions."""
    return "FrameOfReferenceUID" in volume.datasets[0] and "geometry" not in volume.meta


def to_patient(volume: Volume, index: int, points: np.ndarray) -> np.ndarray:
    """Image coordinates (x = column, y = row; pixel corners, PS3.3 C.18.6.1.1) on slice ``index``
    -> patient coordinates (mm, PS3.3 C.7.6.2.1.1). Image Position (Patient) is the centre of the
    top-left pixel, i.e. image point (0.5, 0.5)."""
    _, dy, dx = volume.spacing
    row_dir, col_dir = np.asarray(volume.orientation[:3]), np.asarray(volume.orientation[3:])
    origin = np.asarray(volume.positions[index], dtype=float)
    x, y = points[:, 0:1] - 0.5, points[:, 1:2] - 0.5
    return origin + x * dx * row_dir + y * dy * col_dir


@dataclass(frozen=True)
class Placed:
    """Where a measurement group is drawn: a closed polyline (image coordinates, pixel corners) on
    slice ``index``, stated on the source image (SCOORD, PS3.3 C.18.6) or, ``in_patient``, in the
    source's Frame of Reference (SCOORD3D, PS3.3 C.18.9)."""

    volume: Volume
    index: int
    polyline: np.ndarray
    in_patient: bool = False

    @classmethod
    def on_slice(cls, volume: Volume, index: int, polyline: np.ndarray, in_patient: bool = False) -> Placed:
        """``in_patient`` only where the source has a Frame of Reference; else on the image."""
        return cls(volume, index, polyline, in_patient and has_frame_of_reference(volume))

    @classmethod
    def whole_image(cls, volume: Volume, index: int) -> Placed:
        """The whole image of slice ``index``: what an image-level finding is about."""
        _, rows, cols = volume.shape
        corners = np.array([[0, 0], [cols, 0], [cols, rows], [0, rows], [0, 0]], dtype=float)
        return cls(volume, index, corners)

    def _arguments(self) -> dict[str, Any]:
        """What a SCOORD3D (in patient mm, in the source's Frame of Reference) or a SCOORD (on
        the source image) of the polyline needs."""
        if self.in_patient:
            return {"graphic_type": hd.sr.GraphicTypeValues3D.POLYLINE,
                    "graphic_data": to_patient(self.volume, self.index, self.polyline),
                    "frame_of_reference_uid": str(self.volume.datasets[0].FrameOfReferenceUID)}
        return {"graphic_type": hd.sr.GraphicTypeValues.POLYLINE, "graphic_data": self.polyline,
                "source_image": source_image(self.volume, self.index)}

    def coordinates(self) -> Coordinates:
        """The region as the source of a measurement (TID 300 INFERRED FROM, TID 320)."""
        kind = hd.sr.CoordinatesForMeasurement3D if self.in_patient else hd.sr.CoordinatesForMeasurement
        return kind(**self._arguments())

    def region(self) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
        """The group's Image Region (TID 1410 row 7)."""
        kind = hd.sr.ImageRegion3D if self.in_patient else hd.sr.ImageRegion
        return kind(**self._arguments())


def units_note(volume: Volume) -> list[hd.sr.QualitativeEvaluation]:
    """A TEXT comment saying in what unit the group's sizes are, when it is not mm of the patient
    (:func:`image_model.measure.pixel_spacing_note`); none otherwise."""
    note = pixel_spacing_note(volume)
    return [text_evaluation("units_note", note)] if note else []


#: Attributes highdicom's Image Library entry descriptors (TID 1601-1603) read from an image.
_LIBRARY_KEYWORDS = (
    "SOPClassUID", "SOPInstanceUID", "Modality", "Rows", "Columns", "FrameOfReferenceUID",
    "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness",
    "PatientOrientation", "ImagerPixelSpacing",
)
#: What the modality-specific descriptors need, by the Modality highdicom picks them by:
#: cross-sectional (TID 1602) and projection radiography (TID 1603).
_CROSS_SECTIONAL = (("CT", "MR", "PT"), ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient"))
_PROJECTION = (("CR", "DX", "IO", "MG", "PX", "RF", "RG", "XA"), ("PatientOrientation", "ImagerPixelSpacing"))


def library_entry(ds: Dataset) -> Dataset:
    """What the Image Library (TID 1600) says about one source image, for highdicom to describe.

    highdicom chooses the modality-specific descriptors by Modality and reads them from the
    image's top level. An image that does not carry them there (an enhanced multi-frame CT keeps
    them per frame; a CR may lack Imager Pixel Spacing) is described by the common descriptors
    only (modality from its SOP class, frame of reference, rows, columns): its Modality is left
    empty here so that highdicom does not look for the rest. The source is not changed.
    """
    entry = Dataset()
    for keyword in _LIBRARY_KEYWORDS:
        if keyword in ds:
            setattr(entry, keyword, ds[keyword].value)
    modality = str(ds.get("Modality", ""))
    for modalities, needed in (_CROSS_SECTIONAL, _PROJECTION):
        if modality in modalities and not all(ds.get(k) not in (None, "") for k in needed):
            entry.Modality = ""
    if "Modality" not in entry:
        entry.Modality = ""
    return entry
