"""One call for the pipeline: tool outputs + answer -> the DICOM datasets to store and send.

Read top to bottom: the outputs' identity (UIDs derived from the source instances), the SEG of
every non-empty mask, the SR that reports on the SEG, the boxes and the answer, and, for
destinations that refuse a SEG, its secondary-capture stand-ins. Each object is complete when
highdicom has built it (:mod:`sr_templates.source` prepares what it copies from the source).
"""
from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from config.schema import OutputConfig
from image_model.findings import ToolOutput
from image_model.volume import Volume
from sr_templates.identity import OutputIdentity
from sr_templates.sc import OverlayImage
from sr_templates.sc import build_overlays as render_overlays
from sr_templates.seg import build_seg, encode_segments
from sr_templates.sr import build_sr, segments_and_algorithms


def identity_for(volume: Volume, output_cfg: OutputConfig, variant: str = "") -> OutputIdentity:
    """The derived identity of the outputs for the instances in ``volume`` (``variant``: what
    else distinguishes this result, see :attr:`OutputIdentity.variant`)."""
    return OutputIdentity.derive(
        source_series_uid=volume.series_instance_uid,
        instance_uids=(str(ds.SOPInstanceUID) for ds in volume.datasets),
        pipeline_version=output_cfg.pipeline_version,
        seg_series_number=output_cfg.seg_series_number,
        sr_series_number=output_cfg.sr_series_number,
        variant=variant,
    )


def build_outputs(
    volume: Volume,
    outputs: Sequence[ToolOutput],
    answer_text: str,
    output_cfg: OutputConfig,
    instruction: str,
    planner_name: str,
    identity: OutputIdentity | None = None,
    previous_reports: Sequence[Dataset] = (),
) -> list[Dataset]:
    """The SEG (only when some mask is non-empty) followed by the SR, ready to write.
    ``previous_reports``: headers of the earlier SRs this one supersedes (see :func:`build_sr`)."""
    identity = identity or identity_for(volume, output_cfg)
    segments, algorithms = segments_and_algorithms(outputs)
    seg, encoded = build_seg(volume, segments, algorithms, identity, output_cfg)
    sr = build_sr(
        volume, outputs, answer_text, seg, identity, output_cfg, instruction, planner_name,
        encoded_segments=encoded, previous_versions=previous_reports,
    )
    return ([seg] if seg is not None else []) + [sr]


def build_overlays(
    volume: Volume,
    outputs: Sequence[ToolOutput],
    output_cfg: OutputConfig,
    identity: OutputIdentity | None = None,
) -> list[OverlayImage]:
    """The secondary-capture overlays that stand in for the SEG (same segments, same numbering,
    hence the same colours as the SEG's segment order); empty when the SEG would be."""
    identity = identity or identity_for(volume, output_cfg)
    encoded = encode_segments(*segments_and_algorithms(outputs))
    return render_overlays(volume, encoded, identity, output_cfg)
