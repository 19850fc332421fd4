"""The parts of a SEG: which tool segment becomes which segment number (and colour), and each
segment's description (PS3.3 C.8.20.2 Segment Description: label, codes, colour, algorithm)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept

from image_model.findings import AlgorithmInfo, Code, Segment
from sr_templates.coded import coded
from sr_templates.seg.palette import Colour, colours_for

#: LO value representation limit (PS3.5 Table 6.2-1), for segment labels.
MAX_LO_LENGTH = 64


@dataclass(frozen=True)
class EncodedSegment:
    """Which tool segment became which SEG segment number, drawn in which colour."""

    segment: Segment
    segment_number: int
    algorithm: AlgorithmInfo
    colour: Colour


def encode_segments(
    segments: Sequence[Segment], algorithms: Sequence[AlgorithmInfo]
) -> list[EncodedSegment]:
    """Number the non-empty segments 1..n in the given order (empty masks are skipped) and give
    each its palette colour (:mod:`sr_templates.seg.palette`)."""
    kept = [
        (segment, algorithm)
        for segment, algorithm in zip(segments, algorithms, strict=True)
        if np.any(segment.mask)
    ]
    colours = colours_for([segment for segment, _ in kept])
    return [
        EncodedSegment(segment, number, algorithm, colour)
        for number, ((segment, algorithm), colour) in enumerate(zip(kept, colours, strict=True), start=1)
    ]


def algorithm_identification(algorithm: AlgorithmInfo) -> hd.AlgorithmIdentificationSequence:
    """PS3.3 C.8.20.2 Segment Algorithm Identification (name, family, version, parameters)."""
    return hd.AlgorithmIdentificationSequence(
        name=algorithm.name,
        family=coded(algorithm.family),
        version=algorithm.version,
        parameters=dict(algorithm.parameters) or None,
    )


class PropertyType(CodedConcept):
    """A Segmented Property Type Code Sequence item carrying its modifiers where PS3.3 C.8.20.2
    (Table C.8.20-4) puts them: Segmented Property Type Modifier Code Sequence is an attribute
    *of this item* (values from CID 244 Laterality), not of the segment."""

    def __init__(self, code: Code, modifiers: Sequence[Code] = ()) -> None:
        super().__init__(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
        if modifiers:
            self.SegmentedPropertyTypeModifierCodeSequence = [coded(m) for m in modifiers]


class AnatomicRegion(CodedConcept):
    """An Anatomic Region Sequence item carrying its modifiers inside it (Anatomic Region Modifier
    Sequence, PS3.3 Table 10-5 General Anatomy Macro; CID 244 for the side)."""

    def __init__(self, code: Code, modifiers: Sequence[Code] = ()) -> None:
        super().__init__(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
        if modifiers:
            self.AnatomicRegionModifierSequence = [coded(m) for m in modifiers]


def _states(code: Code, side: Code) -> bool:
    """The code's meaning already names the side ("Right kidney" from a config's code)."""
    return side.meaning.lower() in code.meaning.lower()


def property_type(segment: Segment) -> PropertyType:
    """The segment's type; its laterality as a modifier when the laterality is the type's own
    (an anatomical structure; an abnormality's side belongs to its anatomic region)."""
    side = segment.laterality
    own = side is not None and segment.anatomic_region is None and not _states(segment.type, side)
    return PropertyType(segment.type, [side] if own and side is not None else [])


def anatomic_regions(segment: Segment) -> list[CodedConcept] | None:
    """The segment's anatomic region, its laterality nested as the region's modifier."""
    region, side = segment.anatomic_region, segment.laterality
    if region is None:
        return None
    return [AnatomicRegion(region, [side] if side is not None and not _states(region, side) else [])]


def segment_description(item: EncodedSegment) -> hd.seg.SegmentDescription:
    """PS3.3 C.8.20.2: one segment's number, label, codes, display colour and algorithm."""
    seg = item.segment
    return hd.seg.SegmentDescription(
        segment_number=item.segment_number,
        segment_label=seg.label[:MAX_LO_LENGTH],
        segmented_property_category=coded(seg.category),
        segmented_property_type=property_type(seg),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(item.algorithm),
        anatomic_regions=anatomic_regions(seg),
        display_color=item.colour.cielab(),
    )
