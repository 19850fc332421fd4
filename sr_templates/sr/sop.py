"""The agent's results as a TID 1500 Measurement Report in a Comprehensive 3D SR (PS3.3 A.35.13),
the SR form OHIF reads, built entirely through highdicom's template classes.

Report layout (PS3.16 TID 1500):
  observation context: device observer = the node (TID 1004)
  procedure reported: from the source Modality (CID 100, codes.json)
  image library (TID 1600): the source images the groups are drawn on
  imaging measurements (groups built from data, :mod:`sr_templates.sr.templates`), each placed:
    per SEG segment: TID 1411 (its measurements, referencing the segment) + TID 1501 drawn twin
      (the area of its outline, INFERRED FROM the outline; same tracking UID)
    per tool output: a drawn TID 1501 per box; TID 1410 on the whole key image with its
      labels/text (TID 1501 there if it has loose measurements)
    last: TID 1410 with the instruction and the agent's final answer (TEXT)
Evidence: the source instances and the SEG (Current Requested Procedure Evidence Sequence).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as std_codes

from config.schema import OutputConfig
from image_model.codes import procedure_for
from image_model.findings import AlgorithmInfo, Segment, ToolOutput
from image_model.volume import Volume
from sr_templates.charset import character_set_for, charset_kwargs, source_charset
from sr_templates.coded import coded
from sr_templates.equipment import Equipment
from sr_templates.identity import OutputIdentity, derived_uid
from sr_templates.seg import EncodedSegment, encode_segments
from sr_templates.source import source_headers
from sr_templates.sr.content import library_entry, slice_of
from sr_templates.sr.templates import (
    OUTPUT_GROUPS,
    SEGMENT_GROUPS,
    Group,
    Report,
    answer_group,
    key_slice,
    representative_slice,
)

SERIES_DESCRIPTION = "MMedAgent report"

def observation_context(equipment: Equipment) -> hd.sr.ObservationContext:
    """TID 1001/1004: the observer is a device, the node. Its UID is derived from the equipment
    identity so every report from the same node names the same device."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid("device-observer", equipment.manufacturer, equipment.model_name),
        name=equipment.model_name,
        manufacturer_name=equipment.manufacturer,
        model_name=equipment.model_name,
    )
    return hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=std_codes.cid270.Device, observer_identifying_attributes=device
        )
    )


def imaging_groups(
    report: Report,
    outputs: Sequence[ToolOutput],
    encoded: Sequence[EncodedSegment],
    answer_text: str,
    instruction: str,
    planner: AlgorithmInfo,
) -> list[Group]:
    """Every measurement group, in report order (see :mod:`sr_templates.sr.templates`)."""
    groups = [group for item in encoded for build in SEGMENT_GROUPS for group in build(report, item)]
    groups.extend(group for output in outputs for build in OUTPUT_GROUPS for group in build(report, output))
    groups.append(answer_group(report, instruction, answer_text, planner))
    return groups


def library_images(
    report: Report, outputs: Sequence[ToolOutput], encoded: Sequence[EncodedSegment]
) -> list[Dataset]:
    """The source images of the Image Library (TID 1600): those the report's groups are drawn on
    (each segment's largest slice, each box's slice, the key slice of image-level findings), in
    slice order; a multi-frame source is one image."""
    volume = report.volume
    slices = {report.key_slice} | {representative_slice(item.segment.mask) for item in encoded}
    slices |= {slice_of(volume, box) for output in outputs for box in output.boxes}
    images = [volume.datasets[0] if volume.frame_numbers else volume.datasets[z] for z in sorted(slices)]
    return list({str(ds.SOPInstanceUID): ds for ds in images}.values())


def build_sr(
    volume: Volume,
    outputs: Sequence[ToolOutput],
    answer_text: str,
    seg: hd.seg.Segmentation | None,
    identity: OutputIdentity,
    output_cfg: OutputConfig,
    instruction: str,
    planner_name: str,
    encoded_segments: Sequence[EncodedSegment] | None = None,
    previous_versions: Sequence[Dataset] | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the report. ``encoded_segments`` says which SEG segment number each tool segment
    got (from :func:`sr_templates.seg.build_seg`); when omitted it is recomputed
    the same way the SEG encoder numbers segments (non-empty masks, in output order).

    ``previous_versions``: headers (SOP Class/Instance, Study and Series UIDs) of earlier reports
    this one replaces, e.g. the report on a series before late instances arrived; they go in the
    Predecessor Documents Sequence (PS3.3 C.17.2.3) so a PACS or viewer knows this one supersedes
    them."""
    equipment = Equipment.from_config(output_cfg)
    if seg is not None and encoded_segments is None:
        encoded_segments = encode_segments(*segments_and_algorithms(outputs))
    planner = AlgorithmInfo(name=planner_name, version=output_cfg.pipeline_version)
    encoded = list(encoded_segments or [])
    report_context = Report(volume, seg, identity, key_slice(volume, outputs, encoded))
    groups = imaging_groups(report_context, outputs, encoded, answer_text, instruction, planner)
    report = hd.sr.MeasurementReport(
        observation_context=observation_context(equipment),
        procedure_reported=coded(procedure_for(volume.modality)),
        imaging_measurements=groups,
        referenced_images=[library_entry(ds) for ds in library_images(report_context, outputs, encoded)],
    )
    evidence: list[Dataset] = source_headers(volume) + ([seg] if seg is not None else [])
    charset = character_set_for(
        _added_texts(outputs, answer_text, instruction, planner_name), source_charset(volume)
    )
    return hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=identity.sr_series_uid,
        series_number=identity.sr_series_number,
        sop_instance_uid=identity.sr_instance_uid,
        instance_number=1,
        manufacturer=equipment.manufacturer,
        is_complete=True,
        manufacturer_model_name=equipment.model_name,
        software_versions=equipment.software_versions,
        series_description=SERIES_DESCRIPTION,
        previous_versions=list(previous_versions) if previous_versions else None,
        **charset_kwargs(charset),
    )


def _added_texts(
    outputs: Sequence[ToolOutput], answer_text: str, instruction: str, planner_name: str
) -> Iterator[str]:
    """Every free text the report adds to what it copies from the source."""
    yield from (answer_text, instruction, planner_name)
    for output in outputs:
        yield from (output.api_name, output.algorithm.name, output.algorithm.version, output.text or "")
        yield from (f"{k}={v}" for k, v in output.algorithm.parameters.items())
        yield from (segment.label for segment in output.segments)
        yield from (box.label for box in output.boxes)
        yield from (label.label for label in output.labels)


def segments_and_algorithms(outputs: Sequence[ToolOutput]) -> tuple[list[Segment], list[AlgorithmInfo]]:
    """All tools' segments in output order, each with the algorithm that produced it."""
    segments = [s for o in outputs for s in o.segments]
    algorithms = [o.algorithm for o in outputs for _ in o.segments]
    return segments, algorithms
