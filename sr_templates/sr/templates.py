"""The measurement groups of the TID 1500 report, one builder per kind of tool result.

A report is a list of groups built from data: each SEG segment passes through every builder of
:data:`SEGMENT_GROUPS`, each tool output through every builder of :data:`OUTPUT_GROUPS`, and the
answer closes the list. A new kind of result is one builder added to a tuple; a new property of a
segment shown in the report is one line in :func:`segment_evaluations`.

Every finding is drawn on an image (:func:`placed_groups`): a TID 1410 Planar ROI group with its
Image Region and a summary Comment (the finding and its values in words), without NUM items; its
numbers sit in a second group with the SAME tracking identifier and UID (PS3.16 TID 4108: both
describe one finding), a TID 1411 referencing the SEG segment for a segment, a TID 1501 for the
rest. Why split: OHIF 3 throws on a group without SCOORD/SCOORD3D and merges groups by tracking
UID, so it shows region and values together; its measurement panel lists what Cornerstone's
adapters turn into tools, which they do for a TID 1410 group only when it has no NUM (they look
for coordinates inside the NUM, which TID 1410 does not allow), labelled by its Comment.

* segment -> TID 1411 (its measurements, referencing the segment) + TID 1410: its outline on its
  largest slice, a SCOORD POLYLINE on that source image;
* box -> TID 1410: SCOORD3D POLYLINE in patient coordinates where the source has a Frame of
  Reference, else SCOORD on the image; its label and score + TID 1501: its area;
* a tool's labels / text (+ TID 1501 with its loose numbers), and the instruction + final answer:
  TID 1410 on the whole image of the report's key slice (:func:`key_slice`).

Sizes are in mm2/mL only when the source says how large its pixels are; otherwise in pixels or
voxels, and the group says so in a TEXT comment (:func:`sr_templates.sr.content.units_note`).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np

from image_model.codes import SegmentCodes, concept, segment_codes
from image_model.findings import AlgorithmInfo, Measurement, Segment, ToolOutput
from image_model.measure import area_size
from image_model.volume import Volume
from sr_templates.coded import coded
from sr_templates.identity import OutputIdentity
from sr_templates.seg import EncodedSegment
from sr_templates.sr.content import (
    Placed,
    algorithm_id,
    box_polyline,
    caveat_evaluations,
    measurement_items,
    referenced_segment,
    scored_label,
    slice_of,
    text_evaluation,
    tracking,
    units_note,
)
from sr_templates.sr.outline import outline, polygon_area

Group = (
    hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations
    | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations
    | hd.sr.MeasurementsAndQualitativeEvaluations
)


@dataclass(frozen=True)
class Report:
    """What every group builder may need: the source, the SEG (if any), the identity, and the
    slice image-level findings are shown on."""

    volume: Volume
    seg: hd.seg.Segmentation | None
    identity: OutputIdentity
    key_slice: int


def representative_slice(mask: np.ndarray) -> int:
    """The slice where the mask covers the most pixels (the first of equals)."""
    return int(np.argmax(mask.reshape(len(mask), -1).sum(axis=1)))


def key_slice(volume: Volume, outputs: Sequence[ToolOutput], encoded: Sequence[EncodedSegment]) -> int:
    """The slice the report's image-level findings are placed on: the first segment's largest
    slice, else the first box's slice, else the middle slice of the series."""
    if encoded:
        return representative_slice(encoded[0].segment.mask)
    boxes = [box for output in outputs for box in output.boxes]
    return slice_of(volume, boxes[0]) if boxes else volume.shape[0] // 2


# --- segments ---------------------------------------------------------------------------------

def segment_tracking(report: Report, item: EncodedSegment) -> hd.sr.TrackingIdentifier:
    """One tracking identifier per segment, shared by all its groups (TID 4108)."""
    return tracking(report.identity, item.segment.label, "segment", str(item.segment_number))


def finding_sites(codes: SegmentCodes) -> list[hd.sr.FindingSite] | None:
    """Where the finding is (TID 1419 Finding Site, its laterality as a concept modifier): the
    anatomic region, or the structure itself when the finding is an anatomical structure."""
    site = codes.anatomic_region
    if site is None and codes.category == concept("anatomical_structure"):
        site = codes.type
    if site is None:
        return None
    laterality = coded(codes.laterality) if codes.laterality is not None else None
    return [hd.sr.FindingSite(anatomic_location=coded(site), laterality=laterality)]


def codes_of(segment: Segment) -> SegmentCodes:
    return SegmentCodes(segment.category, segment.type, segment.anatomic_region, segment.laterality)


def segment_evaluations(report: Report, segment: Segment) -> list[hd.sr.QualitativeEvaluation]:
    """The qualitative evaluations every group of a segment carries (the place to add more):
    the units note, then its caveats (partial coverage, the tool's confidence)."""
    return [*units_note(report.volume), *caveat_evaluations(segment)]


def volumetric_group(report: Report, item: EncodedSegment) -> Iterator[Group]:
    """TID 1411 for one SEG segment: its measurements, type, site and producing algorithm."""
    if report.seg is None:
        return
    segment = item.segment
    yield hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=segment_tracking(report, item),
        referenced_segment=referenced_segment(item, report.seg, report.volume),
        finding_type=coded(segment.type),
        finding_category=coded(segment.category),
        finding_sites=finding_sites(codes_of(segment)),
        algorithm_id=algorithm_id(item.algorithm),
        measurements=measurement_items(segment.measurements) or None,
        qualitative_evaluations=segment_evaluations(report, segment) or None,
    )


def _value(measurement: Measurement) -> str:
    """``Volume 86.4 mL``: a measurement as a reader says it (unit meaning for UCUM annotations
    and bracketed codes, which are not meant for reading)."""
    unit_text = measurement.unit.meaning if measurement.unit.value[:1] in "{[" else measurement.unit.value
    return f"{measurement.name.meaning} {measurement.value:.6g} {unit_text}"


def summary(title: str, measurements: Sequence[Measurement]) -> hd.sr.QualitativeEvaluation:
    """A Comment (TEXT) naming the finding and its values in words: what a viewer that labels a
    drawn region by its comment shows (OHIF lists measurements by it)."""
    values = "; ".join(_value(m) for m in measurements if math.isfinite(m.value))
    return text_evaluation("summary", f"{title}: {values}" if values else title)


def placed_groups(
    tracking_identifier: hd.sr.TrackingIdentifier,
    placed: Placed,
    algorithm: AlgorithmInfo,
    title: str,
    sizes: Sequence[Measurement] = (),
    evaluations: Sequence[hd.sr.QualitativeEvaluation] = (),
    codes: SegmentCodes | None = None,
    stated_elsewhere: Sequence[Measurement] = (),
) -> Iterator[Group]:
    """A finding drawn at ``placed``: a TID 1410 group with the region, a summary comment (its
    title and values) and the evaluations; its numbers ``sizes``, if any, in a TID 1501 group
    with the same tracking identifier and UID (see the module doc). ``codes``: what the finding
    is; ``stated_elsewhere``: values another group of the same finding holds (a segment's TID
    1411), named in the summary only."""
    finding_type = coded(codes.type) if codes is not None else None
    category = coded(codes.category) if codes is not None else None
    sites = finding_sites(codes) if codes is not None else None
    yield hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier, referenced_region=placed.region(), finding_type=finding_type,
        finding_category=category, finding_sites=sites, algorithm_id=algorithm_id(algorithm),
        qualitative_evaluations=[summary(title, [*stated_elsewhere, *sizes]), *evaluations],
    )
    numbers = measurement_items(sizes)
    if numbers:
        yield hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking_identifier, finding_type=finding_type, finding_category=category,
            finding_sites=sites, algorithm_id=algorithm_id(algorithm), measurements=numbers,
        )


def outline_group(report: Report, item: EncodedSegment) -> Iterator[Group]:
    """The segment's outline on its largest slice (SCOORD on that source image), its summary
    naming the segment's values; the numbers themselves are the TID 1411 group's."""
    segment, volume = item.segment, report.volume
    index = representative_slice(segment.mask)
    placed = Placed.on_slice(volume, index, outline(segment.mask[index]))
    yield from placed_groups(
        segment_tracking(report, item), placed, item.algorithm, segment.label,
        evaluations=segment_evaluations(report, segment), codes=codes_of(segment),
        stated_elsewhere=segment.measurements,
    )


#: Every group a SEG segment gets, in order.
SEGMENT_GROUPS: tuple[Callable[[Report, EncodedSegment], Iterator[Group]], ...] = (volumetric_group, outline_group)


# --- tool outputs -----------------------------------------------------------------------------

def box_groups(report: Report, output: ToolOutput) -> Iterator[Group]:
    """Each detection box, placed where it was drawn, with its area, label and score; a label the
    code table knows names the finding."""
    volume = report.volume
    for number, box in enumerate(output.boxes):
        placed = Placed.on_slice(volume, slice_of(volume, box), box_polyline(volume, box), in_patient=True)
        codes = segment_codes(box.label)
        yield from placed_groups(
            tracking(report.identity, box.label, output.api_name, "box", str(number)), placed, output.algorithm,
            scored_label(box), [area_size(polygon_area(placed.polyline), volume)],
            [*units_note(volume), *caveat_evaluations(box)], codes if codes.type != concept("tissue") else None,
        )


def findings_group(report: Report, output: ToolOutput) -> Iterator[Group]:
    """A tool's image-level results, placed on the key slice's whole image: labels with scores,
    text, loose measurements."""
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        text_evaluation("label", scored_label(label)) for label in output.labels
    ]
    evaluations.extend(e for label in output.labels for e in caveat_evaluations(label))
    if output.text:
        evaluations.append(text_evaluation("tool_text", output.text))
    if evaluations or output.measurements:
        yield from placed_groups(
            tracking(report.identity, output.api_name, output.api_name, "findings"),
            Placed.whole_image(report.volume, report.key_slice), output.algorithm, output.api_name,
            output.measurements, evaluations,
        )


#: Every group a tool output gets, in order.
OUTPUT_GROUPS: tuple[Callable[[Report, ToolOutput], Iterator[Group]], ...] = (box_groups, findings_group)


def answer_group(report: Report, instruction: str, answer_text: str, planner: AlgorithmInfo) -> Group:
    """The agent's final answer (its summary comment) and the instruction, placed on the key
    slice's whole image."""
    evaluations = [text_evaluation("instruction", instruction)] if instruction.strip() else []
    (group,) = placed_groups(
        tracking(report.identity, "MMedAgent answer", "answer"),
        Placed.whole_image(report.volume, report.key_slice), planner,
        answer_text.strip() or "MMedAgent answer", evaluations=evaluations,
    )
    return group
