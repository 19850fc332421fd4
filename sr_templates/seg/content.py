"""The parts of a SEG: which tool segment becomes which segment number, and each segment's
description (PS3.3 C.8.20.2 Segment Description: label, codes, algorithm)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept

from image_model.findings import AlgorithmInfo, Code, Segment
from sr_templates.coded import coded

#: LO value representation limit (PS3.5 Table 6.2-1), for segment labels.
MAX_LO_LENGTH = 64


@dataclass(frozen=True)
class EncodedSegment:
    """Which tool segment became which SEG segment number."""

    segment: Segment
    segment_number: int
    algorithm: AlgorithmInfo


def encode_segments(
    segments: Sequence[Segment], algorithms: Sequence[AlgorithmInfo]
) -> list[EncodedSegment]:
    """Number the non-empty segments 1..n in the given order (empty masks are skipped)."""
    encoded: list[EncodedSegment] = []
    for segment, algorithm in zip(segments, algorithms, strict=True):
        if np.any(segment.mask):
            encoded.append(EncodedSegment(segment, len(encoded) + 1, algorithm))
    return encoded


def algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """PS3.3 C.8.20.2 Segment Algorithm Identification (name, family, version, parameters)."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=coded(algorithm.family),
        version=algorithm.version,
        parameters=dict(algorithm.parameters) or None,
    )


class SegmentDescriptionWithModifier(hd.seg.SegmentDescription):
    """A SegmentDescription that can carry a laterality as a Segmented Property Type Modifier
    (PS3.3 C.8.20.2, Table C.8.20-4; values from CID 244 Laterality), which highdicom's
    constructor has no argument for."""

    def __init__(self, *args: object, type_modifier: CodedConcept | None = None, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        if type_modifier is not None:
            self.SegmentedPropertyTypeModifierCodeSequence = [type_modifier]


def _laterality_modifier(segment: Segment) -> CodedConcept | None:
    """The laterality as a type modifier, unless the type's meaning already states it."""
    lat: Code | None = segment.laterality
    if lat is None or lat.meaning.lower() in segment.type.meaning.lower():
        return None
    return coded(lat)


def segment_description(item: EncodedSegment) -> hd.seg.SegmentDescription:
    """PS3.3 C.8.20.2: one segment's number, label, codes and producing algorithm."""
    seg = item.segment
    return SegmentDescriptionWithModifier(
        segment_number=item.segment_number,
        segment_label=seg.label[:MAX_LO_LENGTH],
        segmented_property_category=coded(seg.category),
        segmented_property_type=coded(seg.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(item.algorithm),
        anatomic_regions=[coded(seg.anatomic_region)] if seg.anatomic_region else None,
        type_modifier=_laterality_modifier(seg),
    )
