"""The measurement groups of the TID 1500 report, one builder per kind of tool result:

* segment with measurements  -> TID 1411 Volumetric ROI group referencing the SEG segment
* box                        -> TID 1410 Planar ROI group with a SCOORD POLYLINE on its source image
* labels / text / loose NUMs -> TID 1501 group (measurements + qualitative evaluations)
* instruction + final answer -> TID 1501 group with TEXT evaluations
"""
from __future__ import annotations

import highdicom as hd

from image_model.codes import concept, unit
from image_model.findings import AlgorithmInfo, Box, Measurement, ToolOutput
from image_model.measure import pixel_spacing_known
from image_model.volume import Volume
from sr_templates.coded import coded
from sr_templates.identity import OutputIdentity
from sr_templates.seg import EncodedSegment
from sr_templates.sr.content import (
    algorithm_id,
    box_polyline,
    box_source,
    measurement_items,
    referenced_segment,
    text_evaluation,
    tracking,
)


def volumetric_group(
    item: EncodedSegment, seg: hd.seg.Segmentation, volume: Volume, identity: OutputIdentity
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411 for one SEG segment: its measurements, type, site and producing algorithm."""
    segment = item.segment
    sites = None
    if segment.anatomic_region is not None:
        laterality = coded(segment.laterality) if segment.laterality is not None else None
        sites = [hd.sr.FindingSite(anatomic_location=coded(segment.anatomic_region), laterality=laterality)]
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(identity, segment.label, "segment", str(item.segment_number)),
        referenced_segment=referenced_segment(item, seg, volume),
        finding_type=coded(segment.type),
        finding_category=coded(segment.category),
        finding_sites=sites,
        algorithm_id=algorithm_id(item.algorithm),
        measurements=measurement_items(segment.measurements) or None,
    )


def planar_group(
    volume: Volume, output: ToolOutput, box: Box, index: int, identity: OutputIdentity
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one detection box: the region, its area in mm2 and its label + score."""
    polyline = box_polyline(volume, box)
    measurements: list[Measurement] = []
    if pixel_spacing_known(volume):
        _, dy, dx = volume.spacing
        width, height = polyline[2] - polyline[0]
        measurements.append(Measurement(concept("area"), float(width * dx * height * dy), unit("mm2")))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(identity, box.label, output.api_name, "box", str(index)),
        referenced_region=hd.sr.ImageRegion(
            graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
            graphic_data=polyline,
            source_image=box_source(volume, box),
        ),
        algorithm_id=algorithm_id(output.algorithm),
        measurements=measurement_items(measurements) or None,
        qualitative_evaluations=[text_evaluation("box_label", f"{box.label} (score {box.score:.2f})")],
    )


def findings_group(
    output: ToolOutput, identity: OutputIdentity
) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """TID 1501 for a tool's image-level results: labels with scores, text, loose measurements."""
    evaluations: list[hd.sr.QualitativeEvaluation] = [
        text_evaluation("label", f"{label.label} (score {label.score:.2f})") for label in output.labels
    ]
    if output.text:
        evaluations.append(text_evaluation("tool_text", output.text))
    numbers = measurement_items(output.measurements)
    if not evaluations and not numbers:
        return None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(identity, output.api_name, output.api_name, "findings"),
        algorithm_id=algorithm_id(output.algorithm),
        measurements=numbers or None,
        qualitative_evaluations=evaluations or None,
    )


def answer_group(
    instruction: str, answer_text: str, planner: AlgorithmInfo, identity: OutputIdentity
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501 holding the instruction and the agent's final answer as TEXT items."""
    evaluations: list[hd.sr.QualitativeEvaluation] = []
    if instruction.strip():
        evaluations.append(text_evaluation("instruction", instruction))
    if answer_text.strip():
        evaluations.append(text_evaluation("answer", answer_text))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking(identity, "MMedAgent answer", "answer"),
        algorithm_id=algorithm_id(planner),
        qualitative_evaluations=evaluations or None,
    )
