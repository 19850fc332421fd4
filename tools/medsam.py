"""``MedSAM``: box/point-prompted segmentation with a (Med)SAM model from segment-anything.

MedSAM checkpoints are plain SAM state dicts (ViT-B by default). The architecture comes either
from segment-anything's ``sam_model_registry[model_type]`` (the real sizes) or from an explicit
``encoder`` config (any size; tests use a 2-block 64-wide encoder). Both then go through the same
load path, :func:`load_state_dict`: ``torch.load(map_location="cpu", weights_only=True)``, unwrap a
``{"model": ...}`` training checkpoint, strict ``load_state_dict``. (segment-anything's own
``checkpoint=`` argument calls ``torch.load`` without ``map_location``, which fails on a CPU-only
machine for checkpoints saved from CUDA, so it is not used.)

Pre-processing is MedSAM's, not SAM's: the RGB slice is resized to the encoder's square input
(1024) without keeping the aspect ratio, min-max scaled to 0-1, and boxes are scaled by the same
factor; the low-resolution mask logits are resized back to the slice and thresholded at 0.5.

SAM's mask decoder also predicts the IoU of each mask with the object (its own quality estimate);
a segment carries the mean over its slices as its :class:`~image_model.findings.Confidence`, marked
uncertain below ``uncertain_below_iou``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from image_model.codes import concept, segment_codes
from image_model.findings import AlgorithmInfo, Confidence, Segment, ToolOutput
from image_model.measure import mask_size
from tools.base import ToolRefused
from tools.device import inference_mode, model_dtype, resolve_device
from tools.imaging import check_normalised, slice_indices, volume_to_rgb
from tools.model_tool import CachedModelTool, ModelPathSettings
from tools.registry import register_tool
from tools.weights import read_state_dict

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

    from image_model.volume import Volume

#: Mask probability threshold used by MedSAM's inference script.
MASK_THRESHOLD = 0.5
#: Keys under which training scripts nest the state dict.
NESTED_STATE_KEYS = ("model", "state_dict")


class SamArchitecture(BaseModel):
    """An explicit SAM architecture, for checkpoints whose sizes the registry does not know."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    depth: int = Field(ge=1)
    embed_dim: int = Field(ge=8)
    num_heads: int = Field(ge=1)
    img_size: int = Field(default=1024, ge=32)
    patch_size: int = Field(default=16, ge=2)
    window_size: int = Field(default=14, ge=0)
    global_attn_indexes: list[int] = Field(default_factory=list)
    #: Prompt/mask-decoder width (SAM: 256).
    prompt_embed_dim: int = Field(default=256, ge=8)
    decoder_mlp_dim: int = Field(default=2048, ge=8)
    decoder_heads: int = Field(default=8, ge=1)
    iou_head_hidden_dim: int = Field(default=256, ge=8)

    @model_validator(mode="after")
    def _consistent(self) -> SamArchitecture:
        if self.img_size % self.patch_size:
            raise ValueError("encoder.img_size must be a multiple of encoder.patch_size")
        if self.embed_dim % self.num_heads or self.prompt_embed_dim % self.decoder_heads:
            raise ValueError("embedding widths must be divisible by their head counts")
        if any(not 0 <= i < self.depth for i in self.global_attn_indexes):
            raise ValueError("encoder.global_attn_indexes must name blocks 0..depth-1")
        return self


class SamSettings(ModelPathSettings):
    """The ``tools: {MedSAM: {...}}`` config section. ``model_path``: a SAM/MedSAM state dict file
    (e.g. medsam_vit_b.pth)."""

    precision: Literal["bf16", "fp16", "fp32"] = "bf16"
    #: Registry architecture (ignored when ``encoder`` is given).
    model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    encoder: SamArchitecture | None = None
    #: Slices per image-encoder forward pass.
    batch_size: int = Field(default=4, ge=1)
    mask_threshold: float = Field(default=MASK_THRESHOLD, gt=0, lt=1)
    #: A segment whose mean predicted IoU is below this is reported as uncertain.
    uncertain_below_iou: float = Field(default=0.7, ge=0, le=1)


def build_sam(settings: SamSettings) -> Sam:
    """An untrained SAM of the configured architecture (weights come from :func:`load_state_dict`)."""
    if settings.encoder is None:
        from segment_anything import sam_model_registry

        return sam_model_registry[settings.model_type](checkpoint=None)
    return build_sam_from_architecture(settings.encoder)


def build_sam_from_architecture(arch: SamArchitecture) -> Sam:
    import torch
    from segment_anything.modeling import (
        ImageEncoderViT,
        MaskDecoder,
        PromptEncoder,
        Sam,
        TwoWayTransformer,
    )

    grid = arch.img_size // arch.patch_size
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth,
            embed_dim=arch.embed_dim,
            img_size=arch.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch.num_heads,
            patch_size=arch.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=tuple(arch.global_attn_indexes),
            window_size=arch.window_size,
            out_chans=arch.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(arch.img_size, arch.img_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(
                depth=2, embedding_dim=arch.prompt_embed_dim, mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_heads
            ),
            transformer_dim=arch.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=arch.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    ).eval()


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A SAM state dict from ``path`` (tensors only; no pickled code runs)."""
    return read_state_dict(path, NESTED_STATE_KEYS)


@dataclass(frozen=True)
class Prompt:
    """One prompt on one image: a normalised box, and/or normalised points with labels
    (1 foreground, 0 background)."""

    box: tuple[float, float, float, float] | None = None
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()


class SamModel:
    """A loaded SAM on one device, in eval mode."""

    def __init__(self, settings: SamSettings) -> None:
        assert settings.model_path is not None
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.dtype = model_dtype(self.device, settings.precision)
        sam = build_sam(settings)
        sam.load_state_dict(load_state_dict(settings.model_path), strict=True)
        # Only the image encoder (nearly all the compute) runs in half precision; the small prompt
        # encoder and mask decoder stay fp32, as their random Fourier features lose precision.
        self.sam = sam.to(device=self.device).eval()
        self.sam.image_encoder.to(dtype=self.dtype)
        self.img_size = int(self.sam.image_encoder.img_size)

    def preprocess(self, images: np.ndarray) -> torch.Tensor:
        """uint8 RGB (n, rows, cols, 3) -> (n, 3, S, S) in 0-1, per image min-max (MedSAM)."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(self.img_size, self.img_size), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 255)
        low = x.amin(dim=(1, 2, 3), keepdim=True)
        high = x.amax(dim=(1, 2, 3), keepdim=True)
        return ((x - low) / (high - low).clamp(min=1e-8)).to(self.dtype)

    @inference_mode
    def embed(self, images: np.ndarray) -> torch.Tensor:
        """Image-encoder embeddings for ``images``, batched."""
        import torch

        out = []
        for start in range(0, len(images), self.settings.batch_size):
            batch = self.preprocess(images[start : start + self.settings.batch_size])
            out.append(self.sam.image_encoder(batch).float())
        return torch.cat(out)

    def decode(self, embedding: torch.Tensor, prompts: Sequence[Prompt], rows: int, cols: int) -> np.ndarray:
        """Masks (len(prompts), rows, cols) bool for the prompts on one embedded image."""
        return self.decode_scored(embedding, prompts, rows, cols)[0]

    @inference_mode
    def decode_scored(
        self, embedding: torch.Tensor, prompts: Sequence[Prompt], rows: int, cols: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks (len(prompts), rows, cols) bool for the prompts on one embedded image, and the
        decoder's predicted IoU of each.

        Box-only prompts go through the mask decoder together (it repeats the image embedding
        per prompt); point prompts, whose point counts may differ, go one at a time."""
        import torch

        out = np.zeros((len(prompts), rows, cols), dtype=bool)
        iou = np.zeros(len(prompts), dtype=float)
        size = float(self.img_size)
        box_only = [n for n, p in enumerate(prompts) if p.box is not None and not p.points]
        if box_only:
            boxes = torch.tensor([prompts[n].box for n in box_only], dtype=torch.float32, device=self.device)
            out[box_only], iou[box_only] = self._masks(embedding, None, boxes * size, rows, cols)
        for n, prompt in enumerate(prompts):
            if n in box_only:
                continue
            box = None
            if prompt.box is not None:
                box = torch.tensor([prompt.box], dtype=torch.float32, device=self.device) * size
            coords = torch.tensor([prompt.points], dtype=torch.float32, device=self.device) * size
            labels = torch.tensor([prompt.point_labels or (1,) * len(prompt.points)], device=self.device)
            masks, scores = self._masks(embedding, (coords, labels), box, rows, cols)
            out[n], iou[n] = masks[0], scores[0]
        return out, iou

    def _masks(
        self,
        embedding: torch.Tensor,
        points: tuple[torch.Tensor, torch.Tensor] | None,
        boxes: torch.Tensor | None,
        rows: int,
        cols: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Masks (prompts, rows, cols) for prompts in encoder-input pixel coordinates, and the
        predicted IoU of each."""
        import torch
        import torch.nn.functional as F

        sparse, dense = self.sam.prompt_encoder(points=points, boxes=boxes, masks=None)
        low_res, iou = self.sam.mask_decoder(
            image_embeddings=embedding[None],
            image_pe=self.sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        prob = F.interpolate(torch.sigmoid(low_res), size=(rows, cols), mode="bilinear", align_corners=False)
        return (prob[:, 0] > self.settings.mask_threshold).cpu().numpy(), iou[:, 0].float().cpu().numpy()

    def segment(self, images: np.ndarray, prompts: Sequence[Sequence[Prompt]]) -> list[np.ndarray]:
        """For each image, the masks of its prompts; images without prompts are not encoded."""
        return [masks for masks, _ in self.segment_scored(images, prompts)]

    def segment_scored(
        self, images: np.ndarray, prompts: Sequence[Sequence[Prompt]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each image, the masks of its prompts and their predicted IoU."""
        rows, cols = images.shape[1:3]
        wanted = [i for i, p in enumerate(prompts) if p]
        out = [(np.zeros((0, rows, cols), dtype=bool), np.zeros(0)) for _ in prompts]
        for start in range(0, len(wanted), self.settings.batch_size):
            chunk = wanted[start : start + self.settings.batch_size]
            embeddings = self.embed(images[chunk])
            for embedding, i in zip(embeddings, chunk):
                out[i] = self.decode_scored(embedding, prompts[i], rows, cols)
        return out


# --- The tool -------------------------------------------------------------------------------------

API_NAME = "MedSAM"
VERSION = "1.0"
#: PS3.16 CID 7162: the mask comes from a learned model.
AI_FAMILY = concept("artificial_intelligence")


def segments_summary(segments: Sequence[Segment]) -> dict[str, Any]:
    """What the planner sees: per segment its label, size and slice range (no mask data)."""
    items = []
    for seg in segments:
        filled = np.flatnonzero(seg.mask.reshape(seg.mask.shape[0], -1).any(axis=1))
        item: dict[str, Any] = {"label": seg.label, "pixels": int(seg.mask.sum())}
        for m in seg.measurements:
            # "volume_mL", "area_mm2"; or "area_pixels" / "volume_voxels" when the spacing is unknown.
            item[f"{m.name.meaning.lower()}_{m.unit.value.strip('{}')}"] = round(m.value, 3)
        if seg.mask.shape[0] > 1:
            item["slices"] = [int(filled[0]), int(filled[-1])]
        if seg.confidence is not None:
            item["confidence"] = seg.confidence.describe()
        items.append(item)
    return {"segments": items}


def make_segment(label: str, mask: np.ndarray, volume: Volume, confidence: Confidence | None = None) -> Segment:
    """A segment named ``label`` with its codes from the one code table, its size, and the
    model's confidence in it."""
    segment = segment_codes(label).segment(label, mask, [mask_size(mask, volume)])
    segment.confidence = confidence
    return segment


@register_tool
class MedSAMTool(CachedModelTool[SamSettings, SamModel]):
    api_name = API_NAME
    description = (
        "Box- or point-prompted segmentation (MedSAM, SAM ViT-B): boxes/points normalised 0-1 -> masks, "
        "on a 2D image or the chosen slices of a volume (default: every slice)."
    )
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "image reference (the series being processed)"},
            "boxes": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 4, "maxItems": 4},
                "minItems": 1,
            },
            "points": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}, "minItems": 2, "maxItems": 2},
                "minItems": 1,
            },
            "point_labels": {"type": "array", "items": {"enum": [0, 1]}},
            "labels": {"type": "array", "items": {"type": "string"}},
            "slices": {"type": "array", "items": {"type": "integer", "minimum": 0},
                       "description": "0-based slice indices to segment on (default: every slice)"},
            "instance_numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 1,
                                 "description": "DICOM InstanceNumber of the slices to segment on"},
            "box_slices": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1,
                           "description": "one slice index per box (boxes found per slice, e.g. by grounding); "
                                          "boxes with the same label become one segment"},
        },
        "anyOf": [{"required": ["boxes"]}, {"required": ["points"]}],
        "additionalProperties": False,
    }
    queue = "gpu"
    settings_class = SamSettings
    model_kind = "sam"

    def load_model(self, config: SamSettings) -> SamModel:
        return SamModel(config)

    def algorithm(self) -> AlgorithmInfo:
        arch = self.config.model_type if self.config.encoder is None else "custom"
        return AlgorithmInfo(
            name="MedSAM",
            version=VERSION,
            family=AI_FAMILY,
            parameters={"model": Path(str(self.config.model_path)).name, "architecture": arch},
        )

    def segment_slices(self, volume: Volume, requests: Sequence[tuple[int, Prompt]]) -> list[np.ndarray]:
        """The 2D mask (rows, cols) of each (slice index, prompt) request, slices encoded once each."""
        return self.segment_slices_scored(volume, requests)[0]

    def segment_slices_scored(
        self, volume: Volume, requests: Sequence[tuple[int, Prompt]]
    ) -> tuple[list[np.ndarray], list[float]]:
        """:meth:`segment_slices`, with the predicted IoU of each mask."""
        by_slice: dict[int, list[int]] = {}
        for n, (index, _) in enumerate(requests):
            by_slice.setdefault(index, []).append(n)
        indices, model = sorted(by_slice), self.model()
        out: list[np.ndarray] = [np.empty(0)] * len(requests)
        ious = [0.0] * len(requests)
        # One encoder batch of slices at a time, so only that many RGB slices exist at once.
        for start in range(0, len(indices), self.config.batch_size):
            chunk = indices[start : start + self.config.batch_size]
            prompts = [[requests[n][1] for n in by_slice[i]] for i in chunk]
            for index, (masks, scores) in zip(chunk, model.segment_scored(volume_to_rgb(volume, chunk), prompts)):
                for n, mask, score in zip(by_slice[index], masks, scores):
                    out[n], ious[n] = mask, float(score)
        return out, ious

    def confidence(self, masks: Sequence[np.ndarray], ious: Sequence[float]) -> Confidence | None:
        """Mean predicted IoU over the non-empty masks of one segment, clipped to 0-1 (the IoU
        head is a regression that can stray outside it)."""
        kept = [iou for mask, iou in zip(masks, ious) if mask.any()]
        if not kept:
            return None
        return Confidence("predicted IoU", float(np.clip(np.mean(kept), 0.0, 1.0)), self.config.uncertain_below_iou)

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        prompts = _prompts_from_params(params)
        labels = list(params.get("labels") or [])
        try:
            indices = slice_indices(volume, _requested_slices(volume, params))
        except ValueError as exc:
            raise ToolRefused(str(exc)) from None
        per_prompt = _prompt_slices(volume, params, len(prompts), indices)
        requests = [(i, p) for p, slices in zip(prompts, per_prompt) for i in slices]
        masks = iter(zip(*self.segment_slices_scored(volume, requests)))
        merge = params.get("box_slices") is not None
        stacks: dict[str, np.ndarray] = {}
        quality: dict[str, tuple[list[np.ndarray], list[float]]] = {}
        empty = 0
        for k, slices in enumerate(per_prompt):
            stacked = np.zeros(volume.shape, dtype=bool)
            own: tuple[list[np.ndarray], list[float]] = ([], [])
            for index in slices:
                mask, iou = next(masks)
                stacked[index] = mask
                own[0].append(mask)
                own[1].append(iou)
            label = labels[k] if k < len(labels) else f"MedSAM region {k + 1}"
            if not stacked.any():
                empty += 1
                continue
            key = label if merge else f"{k}:{label}"
            stacks[key] = stacks[key] | stacked if key in stacks else stacked
            quality.setdefault(key, ([], []))[0].extend(own[0])
            quality[key][1].extend(own[1])
        segments = [
            make_segment(key if merge else key.split(":", 1)[1], mask, volume, self.confidence(*quality[key]))
            for key, mask in stacks.items()
        ]
        summary = segments_summary(segments)
        summary["empty_prompts"] = empty
        return ToolOutput(api_name=self.api_name, algorithm=self.algorithm(), summary=summary, segments=segments)


def _requested_slices(volume: Volume, params: dict[str, Any]) -> list[int] | None:
    """The ``slices`` asked for, plus the slices holding the ``instance_numbers`` asked for."""
    requested = params.get("slices")
    numbers = params.get("instance_numbers")
    if not numbers:
        return requested
    if len(volume.datasets) != volume.shape[0]:
        raise ToolRefused("instance numbers name slices only in a series of one image per slice")
    by_number = {int(ds.get("InstanceNumber")): i for i, ds in enumerate(volume.datasets) if ds.get("InstanceNumber") is not None}
    unknown = [n for n in numbers if int(n) not in by_number]
    if unknown:
        raise ToolRefused(f"instance number(s) {unknown} are not in this series")
    return sorted({*(requested or []), *(by_number[int(n)] for n in numbers)})


def _prompt_slices(volume: Volume, params: dict[str, Any], count: int, indices: list[int]) -> list[list[int]]:
    """The slices each prompt is segmented on: its own for boxes with ``box_slices``, else ``indices``."""
    box_slices = params.get("box_slices")
    if box_slices is None:
        return [indices] * count
    boxes = len(params.get("boxes") or [])
    if len(box_slices) != boxes:
        raise ToolRefused(f"box_slices must give one slice per box ({boxes} boxes, {len(box_slices)} slices)")
    for index in box_slices:
        if not 0 <= int(index) < volume.shape[0]:
            raise ToolRefused(f"slice {index} is outside the volume (0-{volume.shape[0] - 1})")
    return [[int(i)] for i in box_slices] + [indices] * (count - boxes)


def _prompts_from_params(params: dict[str, Any]) -> list[Prompt]:
    """Box prompts (one segment each), plus one prompt from all points together if given."""
    try:
        prompts = [Prompt(box=check_normalised(b)) for b in params.get("boxes") or []]
    except ValueError as exc:
        raise ToolRefused(str(exc)) from None
    points = [tuple(float(v) for v in p) for p in params.get("points") or []]
    if points:
        labels = tuple(int(v) for v in params.get("point_labels") or [1] * len(points))
        if len(labels) != len(points):
            raise ToolRefused("point_labels must have one label per point")
        prompts.append(Prompt(points=tuple(points), point_labels=labels))  # type: ignore[arg-type]
    if not prompts:
        raise ToolRefused("MedSAM needs at least one box or point prompt")
    return prompts
