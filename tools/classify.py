"""Image classification: ``BiomedClip`` (zero-shot, CLIP-style checkpoint) and
``metadata classification`` (from DICOM header attributes, no weights).

Both answer with a label from one label set, by default MMedAgent's 14 BiomedCLIP labels (the list
in MMedAgent's ``data_processing/classification_inf.py``), whose prompt there is
``'the photo can be classified as ' + label``.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from image_model.codes import concept
from image_model.findings import AlgorithmInfo, Confidence, LabelScore, ToolOutput
from tools.base import Availability, Tool, ToolRefused, invalid_settings_reason
from tools.device import inference_mode, model_dtype, resolve_device
from tools.registry import register_tool

if TYPE_CHECKING:
    import torch

    from image_model.volume import Volume

log = logging.getLogger(__name__)

#: MMedAgent's BiomedCLIP label set (14 labels), in its order.
MMEDAGENT_LABELS: tuple[str, ...] = (
    "adenocarcinoma histopathology",
    "brain MRI",
    "covid line chart",
    "diagnostic flowchart",
    "diagnostic scatter plot",
    "squamous cell carcinoma histopathology",
    "immunohistochemistry histopathology",
    "bone X-ray",
    "chest X-ray",
    "abdomen CT",
    "lung CT",
    "pie chart",
    "hematoxylin and eosin histopathology",
    "gross",
)
#: MMedAgent's zero-shot prompt.
MMEDAGENT_TEMPLATE = "the photo can be classified as {label}"
#: The algorithm family of both classifiers' results (PS3.16 CID 7162 style).
_AI_FAMILY = concept("artificial_intelligence")
_RULES_FAMILY = concept("manual_processing")


# =============================================================================================
# BiomedClip: zero-shot CLIP
# =============================================================================================
class ClipSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Local checkpoint folder: transformers CLIP (config.json) or open_clip (open_clip_config.json).
    model_path: Path
    backend: Literal["auto", "transformers", "open_clip"] = "auto"
    labels: list[str] = Field(default_factory=lambda: list(MMEDAGENT_LABELS), min_length=2)
    template: str = MMEDAGENT_TEMPLATE
    device: str | None = None
    #: open_clip text context; default: the checkpoint's own (BiomedCLIP's config says 256).
    context_length: int | None = Field(None, ge=8)
    #: How many labels the planner-facing summary lists.
    top_k: int = Field(3, ge=1)
    #: A label whose softmax probability is below this is reported as uncertain.
    uncertain_below: float = Field(0.5, ge=0, le=1)

    @field_validator("template")
    @classmethod
    def _has_label(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError("template must contain {label}")
        return v


def _detect_backend(folder: Path) -> Literal["transformers", "open_clip"] | None:
    if (folder / "open_clip_config.json").is_file():
        return "open_clip"
    if (folder / "config.json").is_file():
        return "transformers"
    return None


class _ClipScorer:
    """A loaded CLIP-style model: softmax over label prompts for one RGB image."""

    def __init__(self, cfg: ClipSettings, backend: str, device: torch.device) -> None:
        self.backend, self.device = backend, device
        self.dtype = model_dtype(device)
        path = str(cfg.model_path)
        if backend == "transformers":
            from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

            self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=self.dtype)
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
        else:
            import open_clip

            self.model, self.preprocess = open_clip.create_model_from_pretrained(f"local-dir:{path}")
            self.tokenizer = open_clip.get_tokenizer(f"local-dir:{path}")
            self.model = self.model.to(dtype=self.dtype)
        self.model.to(device).eval()
        self.context_length = cfg.context_length

    @inference_mode
    def probabilities(self, rgb: np.ndarray, prompts: list[str]) -> np.ndarray:
        import torch

        if self.backend == "transformers":
            text = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
            pixels = self.image_processor(images=[rgb], return_tensors="pt")["pixel_values"]
            out = self.model(
                input_ids=text["input_ids"].to(self.device),
                attention_mask=text["attention_mask"].to(self.device),
                pixel_values=pixels.to(self.device, self.dtype),
            )
            logits = out.logits_per_image[0]
        else:
            from PIL import Image

            image = self.preprocess(Image.fromarray(rgb))[None].to(self.device, self.dtype)
            if self.context_length is None:
                tokens = self.tokenizer(prompts)
            else:
                tokens = self.tokenizer(prompts, context_length=self.context_length)
            tokens = tokens.to(self.device)
            image_features, text_features, logit_scale = self.model(image, tokens)[:3]
            logits = (logit_scale * image_features @ text_features.t())[0]
        return torch.softmax(logits.float(), dim=-1).cpu().numpy()


@register_tool
class BiomedClip(Tool):
    api_name = "BiomedClip"
    description = (
        "Zero-shot classification of the image's type (e.g. chest X-ray, brain MRI, abdomen CT, "
        "histopathology) with a BiomedCLIP-style model; returns the labels with probabilities."
    )
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "image reference (the series being processed)"},
            "labels": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 2,
                       "description": "candidate labels (default: the configured label set)"},
            "slice_index": {"type": "integer", "minimum": 0,
                            "description": "which slice of a volume to classify (default: the middle one)"},
        },
        "additionalProperties": False,
    }
    queue = "gpu"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._config: ClipSettings | None = None
        self._error = ""
        self._scorer: _ClipScorer | None = None
        if not self.settings:
            self._error = "no model configured (tools.BiomedClip.model_path)"
            return
        try:
            self._config = ClipSettings.model_validate(self.settings)
        except ValidationError as exc:
            self._error = invalid_settings_reason(exc)

    def _backend(self) -> str | None:
        assert self._config is not None
        if self._config.backend != "auto":
            return self._config.backend
        return _detect_backend(self._config.model_path)

    def availability(self) -> Availability:
        if self._config is None:
            return Availability(False, self._error)
        if not self._config.model_path.is_dir():
            return Availability(False, f"model folder {self._config.model_path} does not exist")
        if self._backend() is None:
            return Availability(
                False, f"{self._config.model_path} holds neither config.json (transformers) nor open_clip_config.json"
            )
        return Availability(True)

    def scorer(self) -> _ClipScorer:
        """The model, loaded on first use and kept for the life of the tool."""
        if self._scorer is None:
            if self._config is None:
                raise ToolRefused(f"BiomedClip is not available: {self._error}")
            backend = self._backend()
            if backend is None:
                raise ToolRefused(f"BiomedClip is not available: {self.availability().reason}")
            self._scorer = _ClipScorer(self._config, backend, resolve_device(self._config.device))
            log.info("BiomedClip: loaded %s (%s) on %s", self._config.model_path.name, backend, self._scorer.device)
        return self._scorer

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        from tools.imaging import volume_to_rgb

        scorer = self.scorer()
        assert self._config is not None
        cfg = self._config
        labels = list(params.get("labels") or cfg.labels)
        index = int(params.get("slice_index", volume.pixels.shape[0] // 2))
        if not 0 <= index < volume.pixels.shape[0]:
            raise ToolRefused(f"slice_index {index} is outside the volume (0-{volume.pixels.shape[0] - 1})")
        rgb = volume_to_rgb(volume, [index])[0]
        probs = scorer.probabilities(rgb, [cfg.template.format(label=label) for label in labels])
        ranked = sorted(zip(labels, probs.tolist()), key=lambda p: -p[1])
        scores = [
            LabelScore(label, float(p), Confidence("softmax probability", float(p), cfg.uncertain_below))
            for label, p in ranked
        ]
        top = scores[: cfg.top_k]
        summary = {"labels": [s.label for s in top], "scores": [round(s.score, 4) for s in top], "slice_index": index}
        unsure = top[0].confidence is not None and top[0].confidence.uncertain
        text = ("Image type (zero-shot, uncertain): " if unsure else "Image type (zero-shot): ") + ", ".join(
            f"{s.label} ({s.score:.2f})" for s in top
        )
        algorithm = AlgorithmInfo(
            name=f"BiomedClip zero-shot ({cfg.model_path.name})",
            version="1",
            family=_AI_FAMILY,
            parameters={"template": cfg.template, "backend": scorer.backend, "slice_index": str(index)},
        )
        return ToolOutput(self.api_name, algorithm, summary, labels=scores, text=text)


# =============================================================================================
# metadata classification: rules over DICOM attributes
# =============================================================================================
#: DICOM Modality (PS3.3 C.7.3.1.1.1 defined terms) -> the imaging kind label sets name.
MODALITY_KINDS: Mapping[str, str] = MappingProxyType({
    "CT": "ct", "MR": "mri", "CR": "x-ray", "DX": "x-ray", "RG": "x-ray", "DR": "x-ray", "IO": "x-ray",
    "PX": "x-ray", "MG": "mammography", "US": "ultrasound", "PT": "pet", "NM": "nuclear medicine",
    "SM": "histopathology", "XC": "gross", "GM": "gross",
})
#: Words in a label that name the imaging kind.
_KIND_WORDS: Mapping[str, str] = MappingProxyType({
    "ct": "ct", "mri": "mri", "mr": "mri", "x-ray": "x-ray", "xray": "x-ray", "radiograph": "x-ray",
    "mammography": "mammography", "mammogram": "mammography", "ultrasound": "ultrasound",
    "pet": "pet", "histopathology": "histopathology", "gross": "gross",
})
#: Region words in labels -> header words (lower case) that indicate that region.
REGION_WORDS: Mapping[str, frozenset[str]] = MappingProxyType({
    "chest": frozenset({"chest", "thorax", "thoracic", "lung", "lungs", "pulmonary", "cxr", "thx", "thoraxabd"}),
    "lung": frozenset({"chest", "thorax", "thoracic", "lung", "lungs", "pulmonary", "thx"}),
    "abdomen": frozenset({"abdomen", "abd", "abdominal", "abdomenpelvis", "liver", "pancreas", "kidney",
                          "renal", "pelvis", "thoraxabd"}),
    "brain": frozenset({"brain", "head", "skull", "cranial", "cerebral", "neuro", "neurocranium"}),
    "bone": frozenset({"hand", "wrist", "elbow", "arm", "humerus", "shoulder", "knee", "ankle", "foot", "hip",
                       "femur", "tibia", "leg", "extremity", "spine", "lspine", "cspine", "tspine", "skeleton",
                       "bone", "clavicle", "rib", "ribs", "pelvis"}),
})
#: Confidence by where the region evidence came from.
CONF_BODY_PART = 0.9
CONF_DESCRIPTION = 0.75
CONF_KIND_ONLY = 0.4
CONF_LOCALIZER_CAP = 0.3
_DESCRIPTION_KEYWORDS = ("StudyDescription", "SeriesDescription", "ProtocolName", "RequestedProcedureDescription")


@dataclass(frozen=True)
class ParsedLabel:
    label: str
    kind: str | None
    region: str | None


def parse_label(label: str) -> ParsedLabel:
    """'brain MRI' -> kind 'mri', region 'brain'; 'lung CT' -> 'ct', 'lung'; charts have no kind."""
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", label.lower())
    kind = next((_KIND_WORDS[w] for w in reversed(words) if w in _KIND_WORDS), None)
    rest = [w for w in words if w not in _KIND_WORDS]
    region = rest[0] if kind not in (None, "histopathology", "gross") and rest else None
    return ParsedLabel(label, kind, region)


def _words(value: Any) -> set[str]:
    return set(re.findall(r"[a-z]+", str(value or "").lower().replace("^", " ")))


class MetadataSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    labels: list[str] = Field(default_factory=lambda: list(MMEDAGENT_LABELS), min_length=1)


@register_tool
class MetadataClassification(Tool):
    api_name = "metadata classification"
    description = (
        "Classifies the image type (e.g. chest X-ray, abdomen CT, brain MRI) from its DICOM header "
        "(Modality, BodyPartExamined, descriptions, ImageType), with the evidence used; needs no model."
    )
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "image reference (the series being processed)"},
            "labels": {"type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1},
        },
        "additionalProperties": False,
    }
    queue = "cpu"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._error = ""
        self._config: MetadataSettings | None = None
        try:
            self._config = MetadataSettings.model_validate(self.settings)
        except ValidationError as exc:
            self._error = invalid_settings_reason(exc)

    def availability(self) -> Availability:
        return Availability(self._config is not None, self._error)

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        if self._config is None:
            raise ToolRefused(f"metadata classification is not available: {self._error}")
        labels = list(params.get("labels") or self._config.labels)
        result = classify_headers(volume, labels)
        algorithm = AlgorithmInfo(name="DICOM metadata classifier", version="1", family=_RULES_FAMILY)
        text = f"Image type from the DICOM header: {result.label} (confidence {result.confidence:.2f}; " + (
            "; ".join(result.evidence) + ")"
        )
        summary = {
            "label": result.label,
            "confidence": result.confidence,
            "in_label_set": result.in_label_set,
            "candidates": [s.label for s in result.scores],
            "evidence": result.evidence,
        }
        return ToolOutput(self.api_name, algorithm, summary, labels=result.scores, text=text)


@dataclass(frozen=True)
class HeaderClassification:
    label: str
    confidence: float
    in_label_set: bool
    scores: list[LabelScore]
    evidence: list[str]


def classify_headers(volume: Volume, labels: list[str]) -> HeaderClassification:
    """Match (imaging kind, body region) read from the header against each label."""
    ds = volume.datasets[0] if volume.datasets else None
    modality = str(volume.modality or (ds.get("Modality") if ds is not None else "") or "").upper()
    kind = MODALITY_KINDS.get(modality)
    evidence = [f"Modality={modality or 'absent'}"]
    body_words = _words(ds.get("BodyPartExamined")) if ds is not None else set()
    if body_words:
        evidence.append(f"BodyPartExamined={str(ds.get('BodyPartExamined')).strip()}")  # type: ignore[union-attr]
    desc_words: set[str] = set()
    for keyword in _DESCRIPTION_KEYWORDS:
        value = ds.get(keyword) if ds is not None else None
        if value and _words(value):
            desc_words |= _words(value)
            evidence.append(f"{keyword}={str(value).strip()}")
    image_type = [str(v).strip().upper() for v in (ds.get("ImageType") or [])] if ds is not None else []
    localizer = "LOCALIZER" in image_type
    if image_type:
        evidence.append("ImageType=" + "\\".join(image_type))
    evidence.append(f"slices={volume.pixels.shape[0]}")

    scored: list[LabelScore] = []
    for parsed in map(parse_label, labels):
        if kind is None or parsed.kind != kind:
            continue
        if parsed.region is None:
            score = CONF_BODY_PART
        else:
            region_words = REGION_WORDS.get(parsed.region, frozenset({parsed.region}))
            if body_words & region_words:
                score = CONF_BODY_PART
            elif body_words:
                continue  # the header names another region
            elif desc_words & region_words:
                score = CONF_DESCRIPTION
            else:
                score = CONF_KIND_ONLY
        score = min(score, CONF_LOCALIZER_CAP) if localizer else score
        scored.append(LabelScore(parsed.label, score, Confidence("header evidence", score, CONF_DESCRIPTION)))
    scored.sort(key=lambda s: -s.score)
    if localizer:
        evidence.append("localizer image: confidence capped")
    best = [s for s in scored if scored and s.score == scored[0].score]
    if len(best) == 1:
        return HeaderClassification(best[0].label, best[0].score, True, scored, evidence)
    # No single label: name what the header does say (kind + region word), outside the label set.
    region = min(body_words) if body_words else None
    generic = " ".join(p for p in (region, modality or "unknown modality") if p)
    confidence = (best[0].score / len(best)) if best else (CONF_KIND_ONLY if kind else 0.0)
    return HeaderClassification(generic, round(confidence, 3), False, scored, evidence)
