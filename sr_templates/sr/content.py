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

import highdicom as hd
import numpy as np
from highdicom.sr import RelationshipTypeValues, TextContentItem
from highdicom.sr.templates import Template

from image_model.codes import text_role
from image_model.findings import AlgorithmInfo, Box, Measurement
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


def algorithm_id(algorithm: AlgorithmInfo) -> hd.sr.AlgorithmIdentification:
    """TID 4019 Algorithm Identification."""
    params = [f"{k}={v}" for k, v in sorted(algorithm.parameters.items())] or None
    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version, parameters=params)


def tracking(identity: OutputIdentity, label: str, *key: str) -> hd.sr.TrackingIdentifier:
    """TID 4108 tracking identifier with a derived (not random) UID, stable across re-runs."""
    return hd.sr.TrackingIdentifier(uid=identity.item_uid(*key), identifier=label)


def measurement_items(measurements: Sequence[Measurement]) -> list[hd.sr.Measurement]:
    """TID 300 NUM items; non-finite values cannot be encoded (DS/FD in MeasuredValueSequence)."""
    return [
        hd.sr.Measurement(name=coded(m.name), value=float(m.value), unit=coded(m.unit))
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


def box_source(volume: Volume, box: Box) -> hd.sr.SourceImageForRegion:
    """The source image (and frame, for a multi-frame source) the box was drawn on."""
    if box.slice_index is None and volume.is_3d:
        raise ValueError(f"box {box.label!r} on a {volume.shape[0]}-slice volume names no slice_index")
    index = box.slice_index or 0
    if not 0 <= index < volume.shape[0]:
        raise ValueError(f"box {box.label!r}: slice_index {index} outside 0..{volume.shape[0] - 1}")
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
