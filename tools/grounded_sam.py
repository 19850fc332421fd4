"""``grounding dino + MedSAM``: text prompts -> masks, the two models chained in-process.

Grounding DINO finds boxes for the prompts on each slice; every box becomes a MedSAM box prompt
on its own slice (slices without a detection are never encoded by SAM); the masks of all boxes
with the same phrase are merged into one segment per phrase, stacked over the volume's slices.
The models are the same process-wide instances ``grounding dino`` and ``MedSAM`` use when their
settings match (:data:`tools.device.LOADED_MODELS`), so configuring all three tools loads each
model once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from image_model.findings import AlgorithmInfo, Segment, ToolOutput
from tools.base import Availability, Tool
from tools.grounding import (
    AI_FAMILY,
    GroundingDinoTool,
    GroundingSettings,
    boxes_summary,
)
from tools.medsam import MedSAMTool, Prompt, SamSettings, make_segment, segments_summary
from tools.registry import register_tool

if TYPE_CHECKING:
    from image_model.volume import Volume

API_NAME = "grounding dino + MedSAM"
VERSION = "1.0"


class GroundedSamSettings(BaseModel):
    """The ``tools: {"grounding dino + MedSAM": {grounding: {...}, medsam: {...}}}`` section: the
    same keys as the two tools' own sections."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    grounding: GroundingSettings = GroundingSettings.model_validate({})
    medsam: SamSettings = SamSettings.model_validate({})


@register_tool
class GroundedMedSAMTool(Tool):
    api_name = API_NAME
    description = (
        "Text-prompted segmentation: Grounding DINO boxes for the prompts, each segmented by MedSAM; "
        "one mask per phrase over a 2D image or each slice of a volume."
    )
    params_schema: ClassVar[dict[str, Any]] = GroundingDinoTool.params_schema
    queue = "gpu"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = GroundedSamSettings.model_validate(self.settings)
        self.grounding = GroundingDinoTool(self.config.grounding.model_dump(exclude_unset=True))
        self.medsam = MedSAMTool(self.config.medsam.model_dump(exclude_unset=True))

    def availability(self) -> Availability:
        for name, part in (("grounding", self.grounding), ("medsam", self.medsam)):
            status = part.availability()
            if not status.available:
                return Availability(False, f"{name}: {status.reason}")
        return Availability(True)

    def algorithm(self) -> AlgorithmInfo:
        g, m = self.grounding.algorithm(), self.medsam.algorithm()
        params = {f"grounding_{k}": v for k, v in g.parameters.items()}
        params.update({f"medsam_{k}": v for k, v in m.parameters.items()})
        return AlgorithmInfo(name="Grounding DINO + MedSAM", version=VERSION, family=AI_FAMILY, parameters=params)

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        boxes, notes = self.grounding.boxes(volume, params)
        requests = [(b.slice_index or 0, Prompt(box=b.box)) for b in boxes]
        masks, ious = self.medsam.segment_slices_scored(volume, requests) if requests else ([], [])
        merged: dict[str, np.ndarray] = {}
        quality: dict[str, tuple[list[np.ndarray], list[float]]] = {}
        for box, (index, _), mask, iou in zip(boxes, requests, masks, ious):
            if box.label not in merged:
                merged[box.label] = np.zeros(volume.shape, dtype=bool)
                quality[box.label] = ([], [])
            merged[box.label][index] |= mask
            quality[box.label][0].append(mask)
            quality[box.label][1].append(iou)
        segments: list[Segment] = [
            make_segment(label, m, volume, self.medsam.confidence(*quality[label]))
            for label, m in merged.items()
            if m.any()
        ]
        summary = boxes_summary(boxes, self.grounding.config.summary_max_boxes)
        summary.update(segments_summary(segments))
        if notes:
            summary["notes"] = notes
        return ToolOutput(
            api_name=self.api_name, algorithm=self.algorithm(), summary=summary, segments=segments, boxes=boxes
        )
