"""The measurement groups of the TID 1500 report, one builder per kind of tool result.

A report is a list of groups built from data: each SEG segment passes through every builder of
:data:`SEGMENT_GROUPS`, each tool output through every builder of :data:`OUTPUT_GROUPS`, and the
answer closes the list. A new kind of result is one builder added to a tuple; a new property of a
segment shown in the report is one line in :func:`segment_evaluations`.

Every finding with numbers is *drawn*: its group is a TID 1501 group whose TID 300 measurements
(NUM) are each INFERRED FROM the region they were measured on (TID 320 Image or Spatial
Coordinates: a SCOORD on the source image, or a SCOORD3D in its Frame of Reference), the form
OHIF itself writes and the one Cornerstone's SR adapters (what OHIF hydrates measurements with)
read: they look for the region inside the group's first NUM, restore the NUMs named Area, Mean,
Standard Deviation, Maximum, Minimum... as the drawn tool's statistics, and label the drawing
with the group's first Comment. Which drawing tool they restore is named by the Tracking
Identifier, prefixed as OHIF's own reports are (``Cornerstone3DTools@^0.1.0:<Tool>``), then the
finding's label so that the identifier stays unique to the finding (PS3.16 TID 4108); see
:func:`viewer_identifier`. TID 1410/1411 do not carry coordinates inside their measurements
(highdicom refuses them there), hence TID 1501.

* segment -> TID 1411: its measurements (volume or area, mean...) referencing the SEG segment,
  under its label, for standard readers (dcmqi's tid1500reader, 3D Slicer); and a TID 1501
  ``PlanarFreehandROI`` group with the SAME Tracking Unique Identifier (both describe one
  finding): the area of its outline on its largest slice and the mean, standard deviation,
  minimum and maximum of the pixel values inside it, INFERRED FROM that outline, labelled
  by a Comment naming the segment and its values (OHIF never shows a volume as a statistic, so
  the label says it). OHIF merges groups by tracking UID, so its SR view shows the volume, the
  mean and the outline together;
* box -> TID 1501 ``RectangleROI``: its area INFERRED FROM the box, a SCOORD3D in patient
  coordinates where the source has a Frame of Reference, else a SCOORD on the image; labelled
  by its label and score;
* a tool's labels / text, and the instruction + final answer -> TID 1410 on the whole image of
  the report's key slice (:func:`key_slice`), no numbers (Cornerstone restores a 5-point
  rectangle as ``RectangleROI`` on its own); a tool's loose measurements -> TID 1501
  ``RectangleROI`` on that whole image.

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
from image_model.measure import area_size, intensity_unit, region_statistics
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

#: The prefix of the Tracking Identifier of every measurement OHIF 3 writes, which Cornerstone's SR
#: adapters read to pick the drawing tool a group is restored as.
CORNERSTONE_TOOLS = "Cornerstone3DTools@^0.1.0"
#: Cornerstone drawing tools: a closed outline, a rectangle.
FREEHAND = "PlanarFreehandROI"
RECTANGLE = "RectangleROI"
from sr_templates.sr.outline import largest_piece, outline, polygon_area

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

def viewer_identifier(tool: str, label: str) -> str:
    """The Tracking Identifier of a group drawn with Cornerstone's ``tool``:
    ``Cornerstone3DTools@^0.1.0:<tool>:<label>``. The adapters pick the tool by this prefix (an
    identifier that only starts with it is theirs too); the label after it keeps the identifier
    unique to the finding and readable."""
    return f"{CORNERSTONE_TOOLS}:{tool}:{label}"


def segment_uid_key(item: EncodedSegment) -> tuple[str, ...]:
    """What the tracking UID of a segment is derived from: one UID for all its groups."""
    return ("segment", str(item.segment_number))


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
    """TID 1411 for one SEG segment: its measurements, type, site and producing algorithm,
    under the segment's label."""
    if report.seg is None:
        return
    segment = item.segment
    yield hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(report.identity, segment.label, *segment_uid_key(item)),
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


@dataclass(frozen=True)
class Finding:
    """What one drawn group says: its label (``title``), the numbers measured on its region
    (``sizes``), further evaluations, and its codes. The label names ``sizes``, or, when given,
    ``named``: the finding's own values, which another group holds (a segment's TID 1411)."""

    title: str
    sizes: Sequence[Measurement] = ()
    evaluations: Sequence[hd.sr.QualitativeEvaluation] = ()
    codes: SegmentCodes | None = None
    named: Sequence[Measurement] | None = None


def drawn_group(
    tracking_identifier: hd.sr.TrackingIdentifier, placed: Placed, algorithm: AlgorithmInfo, finding: Finding
) -> Group:
    """A finding drawn at ``placed``: its summary Comment first (the label viewers show), then
    its evaluations; its numbers each INFERRED FROM the region (TID 1501, see the module doc);
    without numbers, a TID 1410 group with the region itself."""
    codes = finding.codes
    finding_type = coded(codes.type) if codes is not None else None
    category = coded(codes.category) if codes is not None else None
    sites = finding_sites(codes) if codes is not None else None
    named = finding.sizes if finding.named is None else finding.named
    evaluations = [summary(finding.title, named), *finding.evaluations]
    numbers = measurement_items(finding.sizes, placed.coordinates())
    if not numbers:
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking_identifier, referenced_region=placed.region(), finding_type=finding_type,
            finding_category=category, finding_sites=sites, algorithm_id=algorithm_id(algorithm),
            qualitative_evaluations=evaluations,
        )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking_identifier, finding_type=finding_type, finding_category=category,
        finding_sites=sites, algorithm_id=algorithm_id(algorithm), measurements=numbers,
        qualitative_evaluations=evaluations,
    )


def outline_group(report: Report, item: EncodedSegment) -> Iterator[Group]:
    """The segment's outline on its largest slice (a ``PlanarFreehandROI``) with the outline's
    area, labelled by the segment and its own values (which its TID 1411 group holds), under the
    segment's tracking UID."""
    segment, volume = item.segment, report.volume
    index = representative_slice(segment.mask)
    placed = Placed.on_slice(volume, index, outline(segment.mask[index]))
    identifier = hd.sr.TrackingIdentifier(
        uid=report.identity.item_uid(*segment_uid_key(item)), identifier=viewer_identifier(FREEHAND, segment.label)
    )
    # The outline's own numbers, as a viewer measures the drawn region (Area first: Cornerstone
    # takes the first NUM as the outline's area): its area, and the pixel values inside it.
    inside = region_statistics(volume.pixels[index], largest_piece(segment.mask[index]), intensity_unit(volume))
    finding = Finding(
        segment.label, [area_size(polygon_area(placed.polyline), volume), *inside],
        segment_evaluations(report, segment), codes_of(segment), named=segment.measurements,
    )
    yield drawn_group(identifier, placed, item.algorithm, finding)


#: Every group a SEG segment gets, in order.
SEGMENT_GROUPS: tuple[Callable[[Report, EncodedSegment], Iterator[Group]], ...] = (volumetric_group, outline_group)


# --- tool outputs -----------------------------------------------------------------------------

def box_groups(report: Report, output: ToolOutput) -> Iterator[Group]:
    """Each detection box, drawn where it was found (a ``RectangleROI``), with its area, label
    and score; a label the code table knows names the finding."""
    volume = report.volume
    for number, box in enumerate(output.boxes):
        placed = Placed.on_slice(volume, slice_of(volume, box), box_polyline(volume, box), in_patient=True)
        codes = segment_codes(box.label)
        identifier = tracking(report.identity, viewer_identifier(RECTANGLE, box.label), output.api_name, "box", str(number))
        finding = Finding(
            scored_label(box), [area_size(polygon_area(placed.polyline), volume)],
            [*units_note(volume), *caveat_evaluations(box)], codes if codes.type != concept("tissue") else None,
        )
        yield drawn_group(identifier, placed, output.algorithm, finding)


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
        label = viewer_identifier(RECTANGLE, output.api_name) if output.measurements else output.api_name
        # The label viewers show names the tool's labels too (a classifier's result).
        named = "; ".join(scored_label(x) for x in output.labels)
        title = f"{output.api_name}: {named}" if named else output.api_name
        yield drawn_group(
            tracking(report.identity, label, output.api_name, "findings"),
            Placed.whole_image(report.volume, report.key_slice), output.algorithm,
            Finding(title, output.measurements, evaluations),
        )


#: Every group a tool output gets, in order.
OUTPUT_GROUPS: tuple[Callable[[Report, ToolOutput], Iterator[Group]], ...] = (box_groups, findings_group)


def answer_group(report: Report, instruction: str, answer_text: str, planner: AlgorithmInfo) -> Group:
    """The agent's final answer (its summary comment) and the instruction, placed on the key
    slice's whole image."""
    evaluations = [text_evaluation("instruction", instruction)] if instruction.strip() else []
    return drawn_group(
        tracking(report.identity, "MMedAgent answer", "answer"),
        Placed.whole_image(report.volume, report.key_slice), planner,
        Finding(answer_text.strip() or "MMedAgent answer", evaluations=evaluations),
    )
