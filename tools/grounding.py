"""``grounding dino``: text prompts -> boxes, on a 2D image or on every slice of a volume.

The model is transformers' Grounding DINO (``GroundingDinoForObjectDetection`` + its processor)
loaded from a local folder, as a MMedAgent-style medical fine-tune would be saved with
``save_pretrained``. Post-processing follows the original tool: a detection is kept when its best
prompt-token probability exceeds the box threshold (0.3) and its phrase tokens exceed the text
threshold (0.25); overlapping boxes are then suppressed class-agnostically at IoU 0.8 (as the
Grounded-SAM demo MMedAgent builds on does). One deliberate difference: the phrase reported is the
*prompt* whose tokens score highest, not the raw decoded sub-word tokens, so that downstream
segments are labelled with what the planner asked for.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from image_model.codes import concept
from image_model.findings import AlgorithmInfo, Box, Confidence, ToolOutput
from tools.base import ToolRefused
from tools.device import inference_mode, model_dtype, resolve_device
from tools.imaging import slice_indices, volume_to_rgb
from tools.model_tool import CachedModelTool, ModelPathSettings
from tools.registry import register_tool
from tools.targets import TARGET_PARAMS, select_boxes

if TYPE_CHECKING:
    import torch

    from image_model.volume import Volume

API_NAME = "grounding dino"
VERSION = "1.0"
#: PS3.16 CID 7162 Surface Processing Algorithm Families has no detector entry; SEG/SR need a
#: family, and "Artificial Intelligence" (DCM 123110) is what the DICOM AI profiles use.
AI_FAMILY = concept("artificial_intelligence")

BOX_THRESHOLD = 0.3
TEXT_THRESHOLD = 0.25
NMS_IOU = 0.8


class GroundingSettings(ModelPathSettings):
    """The ``tools: {"grounding dino": {...}}`` config section. ``model_path``: the folder written
    by ``save_pretrained`` (config.json, weights, processor + tokenizer files)."""

    precision: Literal["bf16", "fp16", "fp32"] = "fp32"
    box_threshold: float = Field(default=BOX_THRESHOLD, ge=0, le=1)
    text_threshold: float = Field(default=TEXT_THRESHOLD, ge=0, le=1)
    nms_iou: float = Field(default=NMS_IOU, gt=0, le=1)
    #: Slices per forward pass.
    batch_size: int = Field(default=8, ge=1)
    #: At most this many boxes per image after NMS (highest scores kept).
    max_detections: int = Field(default=20, ge=1)
    #: At most this many boxes listed in the planner's summary (a volume can have hundreds).
    summary_max_boxes: int = Field(default=30, ge=1)
    #: A box scoring below this is reported as uncertain (it passed box_threshold, barely).
    uncertain_below: float = Field(default=0.5, ge=0, le=1)


@dataclass(frozen=True)
class Detection:
    #: (x0, y0, x1, y1) normalised 0-1.
    box: tuple[float, float, float, float]
    score: float
    phrase: str


def clean_prompts(prompts: Sequence[str]) -> list[str]:
    """Prompts as the model sees them: lower case, no dots (a dot separates phrases in the caption)."""
    out: list[str] = []
    for prompt in prompts:
        text = " ".join(str(prompt).replace(".", " ").lower().split())
        if text and text not in out:
            out.append(text)
    if not out:
        raise ToolRefused("grounding needs at least one non-empty text prompt")
    return out


def caption_and_spans(prompts: Sequence[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's caption ``"a. b."`` and each prompt's character span in it."""
    caption = ""
    spans: list[tuple[int, int]] = []
    for prompt in prompts:
        if caption:
            caption += " "
        spans.append((len(caption), len(caption) + len(prompt)))
        caption += prompt + "."
    return caption, spans


def token_spans(offsets: Sequence[tuple[int, int]], char_spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """For each prompt, the token positions whose characters fall inside its span."""
    out: list[list[int]] = []
    for start, end in char_spans:
        out.append([i for i, (a, b) in enumerate(offsets) if b > a >= start and b <= end])
    return out


def select_detections(
    probs: torch.Tensor,
    boxes_cxcywh: torch.Tensor,
    prompt_tokens: Sequence[Sequence[int]],
    prompts: Sequence[str],
    settings: GroundingSettings,
) -> list[Detection]:
    """Thresholds + NMS for one image. ``probs`` (queries, text_len) sigmoid token probabilities,
    ``boxes_cxcywh`` (queries, 4) normalised centre/size boxes as the model predicts them."""
    import torch
    from torchvision.ops import box_convert, nms

    per_prompt = torch.stack(
        [probs[:, idx].max(dim=1).values if idx else torch.zeros(probs.shape[0]) for idx in prompt_tokens],
        dim=1,
    )  # (queries, prompts)
    scores, which = per_prompt.max(dim=1)
    keep = (scores > settings.box_threshold) & (scores > settings.text_threshold)
    if not bool(keep.any()):
        return []
    boxes = box_convert(boxes_cxcywh[keep].float(), "cxcywh", "xyxy").clamp(0.0, 1.0)
    scores, which = scores[keep].float(), which[keep]
    valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    boxes, scores, which = boxes[valid], scores[valid], which[valid]
    order = nms(boxes, scores, settings.nms_iou)[: settings.max_detections]  # sorted by score
    return [
        Detection(tuple(float(v) for v in boxes[i].tolist()), float(scores[i]), prompts[int(which[i])])  # type: ignore[arg-type]
        for i in order.tolist()
    ]


class GroundingModel:
    """A loaded Grounding DINO and its processor, on one device, in eval mode."""

    def __init__(self, settings: GroundingSettings) -> None:
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        assert settings.model_path is not None
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = model_dtype(self.device, settings.precision)
        path = str(settings.model_path)
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        model = GroundingDinoForObjectDetection.from_pretrained(path, local_files_only=True, dtype=self.dtype)
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]  # transformers' stubs
        self.max_text_len = int(model.config.max_text_len)

    @inference_mode
    def detect(
        self, images: np.ndarray, prompts: Sequence[str], settings: GroundingSettings | None = None
    ) -> list[list[Detection]]:
        """Detections for each uint8 RGB image in ``images`` (n, rows, cols, 3), batched.
        ``settings`` overrides the thresholds for this call (weights are shared)."""
        cfg = settings or self.settings
        caption, char_spans = caption_and_spans(prompts)
        encoded = self.processor.tokenizer(caption, return_offsets_mapping=True)
        if len(encoded["input_ids"]) > self.max_text_len:
            raise ToolRefused(
                f"too many prompts: {len(encoded['input_ids'])} text tokens, the model takes {self.max_text_len}"
            )
        spans = token_spans(encoded["offset_mapping"], char_spans)
        results: list[list[Detection]] = []
        for start in range(0, len(images), cfg.batch_size):
            batch = list(images[start : start + cfg.batch_size])
            inputs = self.processor(images=batch, text=[caption] * len(batch), return_tensors="pt")
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
            outputs = self.model(**inputs)
            probs = outputs.logits.float().sigmoid().cpu()
            boxes = outputs.pred_boxes.float().cpu()
            for b in range(len(batch)):
                results.append(select_detections(probs[b], boxes[b], spans, prompts, cfg))
        return results


@register_tool
class GroundingDinoTool(CachedModelTool[GroundingSettings, GroundingModel]):
    api_name = API_NAME
    description = (
        "Open-set detection: text prompts -> boxes (normalised 0-1) with scores, on a 2D image or "
        "each slice of a volume (Grounding DINO)."
    )
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "image reference (the series being processed)"},
            "prompts": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
            "box_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "text_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "slices": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "targets": {**TARGET_PARAMS["targets"], "description": (
                "prompts with a side ('left pleural effusion'): keep only the boxes on that side of the patient"
            )},
        },
        "required": ["prompts"],
        "additionalProperties": False,
    }
    queue = "gpu"
    settings_class = GroundingSettings
    model_kind = "grounding-dino"

    def load_model(self, config: GroundingSettings) -> GroundingModel:
        return GroundingModel(config)

    def algorithm(self) -> AlgorithmInfo:
        return AlgorithmInfo(
            name="Grounding DINO",
            version=VERSION,
            family=AI_FAMILY,
            parameters={
                "model": Path(str(self.config.model_path)).name,
                "box_threshold": str(self.config.box_threshold),
                "text_threshold": str(self.config.text_threshold),
                "nms_iou": str(self.config.nms_iou),
            },
        )

    def detect(self, volume: Volume, params: dict[str, Any]) -> tuple[list[int], list[list[Detection]]]:
        """The slices looked at and the detections on each (used by ``grounding dino + MedSAM``)."""
        prompts = clean_prompts(params.get("prompts") or [])
        try:
            indices = slice_indices(volume, params.get("slices"))
        except ValueError as exc:
            raise ToolRefused(str(exc)) from None
        overrides: dict[str, Any] = {k: params[k] for k in ("box_threshold", "text_threshold") if k in params}
        settings = self.config.model_copy(update=overrides)
        model, detections = self.model(), []
        # Slices become RGB one batch at a time: a whole CT in RGB would be ~0.4 GB per 500 slices.
        for start in range(0, len(indices), settings.batch_size):
            chunk = indices[start : start + settings.batch_size]
            detections += model.detect(volume_to_rgb(volume, chunk), prompts, settings)
        return indices, detections

    def box(self, detection: Detection, slice_index: int | None) -> Box:
        """A detection as a :class:`Box` carrying its score as the tool's confidence."""
        confidence = Confidence("detection score", detection.score, self.config.uncertain_below)
        return Box(detection.phrase, detection.score, detection.box, slice_index, confidence)

    def boxes(self, volume: Volume, params: dict[str, Any]) -> tuple[list[Box], list[str]]:
        """The detections as boxes, limited to the sides the ``targets`` ask for, and notes."""
        indices, per_slice = self.detect(volume, params)
        boxes = [
            self.box(d, index if volume.is_3d else None)
            for index, detections in zip(indices, per_slice)
            for d in detections
        ]
        return select_boxes(boxes, params.get("targets"), volume)

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        boxes, notes = self.boxes(volume, params)
        summary = boxes_summary(boxes, self.config.summary_max_boxes)
        if notes:
            summary["notes"] = notes
        return ToolOutput(api_name=self.api_name, algorithm=self.algorithm(), summary=summary, boxes=boxes)


def boxes_summary(boxes: Sequence[Box], limit: int | None = None) -> dict[str, Any]:
    """MMedAgent's ``grounding dino output`` dict; volumes add the slice of each box.

    The planner's context is small (MMedAgent trains with 2048 tokens), so at most ``limit``
    boxes, the best-scoring ones, are listed; ``total_boxes`` then says how many were found.
    All boxes stay in :attr:`ToolOutput.boxes` for the SR."""
    shown = list(boxes)
    if limit is not None and len(shown) > limit:
        shown = sorted(shown, key=lambda b: -b.score)[:limit]
    summary: dict[str, Any] = {
        "boxes": [[round(v, 4) for v in b.box] for b in shown],
        "logits": [round(b.score, 4) for b in shown],
        "phrases": [b.label for b in shown],
    }
    if any(b.slice_index is not None for b in shown):
        summary["slices"] = [b.slice_index for b in shown]
    if len(shown) < len(boxes):
        summary["total_boxes"] = len(boxes)
    return summary
