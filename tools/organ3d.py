"""``organ segmentation 3d``: a MONAI network run with sliding-window inference on a CT/MR volume.

Beyond MMedAgent (2D only): the network comes from the config as either a MONAI bundle folder
(``configs/inference.json|yaml`` with ``network_def``, ``models/model.pt``, label names from
``configs/metadata.json``) or ``architecture`` (a class in :mod:`monai.networks.nets`) + kwargs +
a weights file + a label list.

Geometry (:mod:`tools.network_grid`): the volume is oriented to the network's axis codes and
resampled to its spacing, and the label map goes back the same way, so every mask voxel sits on
its source voxel. Loading: :mod:`tools.monai_loading`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from image_model.codes import SegmentCodes, concept, segment_codes
from image_model.findings import AlgorithmInfo, Code, Confidence, Segment, ToolOutput
from image_model.measure import mask_size
from tools.base import Availability, Tool, ToolRefused, invalid_settings_reason
from tools.device import model_dtype, resolve_device
from tools.monai_loading import LoadedNetwork, bundle_config_file, load_architecture, load_bundle
from tools.network_grid import AXIS_CODES, from_network_grid, plan_mapping, to_network_grid
from tools.registry import register_tool
from tools.targets import TARGET_PARAMS, select_segments

if TYPE_CHECKING:
    import torch

    from image_model.volume import Volume

log = logging.getLogger(__name__)

class CodeSetting(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    value: str
    scheme: str = "SCT"
    meaning: str

    def as_code(self) -> Code:
        return Code(self.value, self.scheme, self.meaning)


class LabelSetting(BaseModel):
    """One output channel of the network (channel 0 is background)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int = Field(ge=1)
    name: str = Field(min_length=1)
    code: CodeSetting | None = None
    category: CodeSetting | None = None


class Organ3DSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle_dir: Path | None = None
    architecture: str | None = None
    network_kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: Path | None = None
    #: Label names (and codes). Required with ``architecture``; with a bundle, overrides by index.
    labels: list[LabelSetting] = Field(default_factory=list)
    device: str | None = None
    #: Orientation the network expects (MONAI axcodes; bundles are nearly always trained on RAS).
    axcodes: str = "RAS"
    #: Voxel spacing (mm) along the network's three axes; default: the bundle's Spacingd pixdim,
    #: else the source spacing (no resampling).
    spacing: tuple[float, float, float] | None = None
    #: "window": clip (a_min, a_max) modality units to 0..1; "zscore": per-volume standardisation.
    intensity: Literal["window", "zscore", "none"] = "window"
    window: tuple[float, float] | None = None
    #: A label whose mean softmax probability (over the voxels it won) is below this is uncertain.
    uncertain_below: float = Field(0.8, ge=0.0, le=1.0)
    roi_size: tuple[int, int, int] | None = None
    overlap: float | None = Field(None, ge=0.0, lt=1.0)
    sw_batch_size: int = Field(1, ge=1)
    blend: Literal["constant", "gaussian"] = "gaussian"
    modalities: list[str] = Field(default_factory=lambda: ["CT", "MR"])
    min_slices: int = Field(4, ge=1)
    version: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Organ3DSettings:
        if (self.bundle_dir is None) == (self.architecture is None):
            raise ValueError("give exactly one of bundle_dir or architecture")
        if self.architecture is not None:
            if self.weights is None:
                raise ValueError("architecture needs weights (a .pt/.pth state dict or .safetensors)")
            if not self.labels:
                raise ValueError("architecture needs labels: [{index, name, code?}]")
        codes = sorted(self.axcodes.upper())
        if len(self.axcodes) != 3 or sorted({AXIS_CODES[c][0] for c in codes if c in AXIS_CODES}) != [0, 1, 2]:
            raise ValueError(f"axcodes must name each of R/L, A/P, S/I once, got {self.axcodes!r}")
        return self


DEFAULT_WINDOW_CT = (-1000.0, 1000.0)
DEFAULT_ROI = (96, 96, 96)
DEFAULT_OVERLAP = 0.25
#: Key of :meth:`OrganSegmentation3D.segment`'s info holding {label index: mean softmax probability}.
LABEL_CONFIDENCE = "label_confidence"


# ---------------------------------------------------------------------------------------------
# The tool
# ---------------------------------------------------------------------------------------------
@register_tool
class OrganSegmentation3D(Tool):
    api_name = "organ segmentation 3d"
    description = (
        "Segments organs in a CT or MR volume with a 3D MONAI network (sliding-window inference "
        "in patient space) and measures each organ's volume in mL."
    )
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "image reference (the series being processed)"},
            "labels": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "description": "only return these organs (default: every label the network knows)",
            },
            **TARGET_PARAMS,
        },
        "additionalProperties": False,
    }
    queue = "gpu"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self._config: Organ3DSettings | None = None
        self._config_error = ""
        self._loaded: LoadedNetwork | None = None
        self._device: torch.device | None = None
        if not self.settings:
            self._config_error = "no model configured (tools.'organ segmentation 3d': bundle_dir or architecture)"
            return
        try:
            self._config = Organ3DSettings.model_validate(self.settings)
        except ValidationError as exc:
            self._config_error = invalid_settings_reason(exc)

    def availability(self) -> Availability:
        if self._config is None:
            return Availability(False, self._config_error)
        cfg = self._config
        if cfg.bundle_dir is not None:
            if not cfg.bundle_dir.is_dir():
                return Availability(False, f"bundle folder {cfg.bundle_dir} does not exist")
            if bundle_config_file(cfg.bundle_dir) is None:
                return Availability(False, f"bundle {cfg.bundle_dir} has no configs/inference.json|yaml")
            if not (cfg.bundle_dir / "models" / "model.pt").is_file():
                return Availability(False, f"bundle {cfg.bundle_dir} has no models/model.pt")
        elif cfg.weights is not None and not cfg.weights.is_file():
            return Availability(False, f"weights file {cfg.weights} does not exist")
        return Availability(True)

    # -- loading ---------------------------------------------------------------------------
    def _ensure_loaded(self) -> tuple[LoadedNetwork, torch.device]:
        if self._loaded is not None and self._device is not None:
            return self._loaded, self._device
        cfg = self._require_config()
        if cfg.bundle_dir is not None:
            loaded = load_bundle(cfg.bundle_dir)
        else:
            assert cfg.architecture is not None and cfg.weights is not None
            loaded = load_architecture(cfg.architecture, cfg.network_kwargs, cfg.weights)
        device = resolve_device(cfg.device)
        loaded.network.to(device).eval()
        self._loaded, self._device = loaded, device
        log.info("organ segmentation 3d: loaded %s on %s", loaded.name, device)
        return loaded, device

    def _require_config(self) -> Organ3DSettings:
        if self._config is None:
            raise ToolRefused(f"organ segmentation 3d is not available: {self._config_error}")
        return self._config

    def label_table(self, loaded: LoadedNetwork) -> dict[int, LabelSetting]:
        """Channel -> label with codes: config entries win over the bundle's names."""
        cfg = self._require_config()
        table = {i: LabelSetting(index=i, name=n) for i, n in loaded.label_names.items()}
        table.update({lab.index: lab for lab in cfg.labels})
        return table

    # -- running ---------------------------------------------------------------------------
    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        cfg = self._require_config()
        if volume.modality.upper() not in {m.upper() for m in cfg.modalities}:
            raise ToolRefused(
                f"organ segmentation 3d handles {', '.join(cfg.modalities)}; this series is {volume.modality}"
            )
        if volume.pixels.shape[0] < cfg.min_slices:
            raise ToolRefused(
                f"organ segmentation 3d needs a volume of at least {cfg.min_slices} slices; "
                f"this series has {volume.pixels.shape[0]}"
            )
        loaded, _ = self._ensure_loaded()
        label_map, info = self.segment(volume)
        softmax: dict[int, float] = info.pop(LABEL_CONFIDENCE)
        table = self.label_table(loaded)
        for index in np.unique(label_map).tolist():  # channels the bundle/config does not name
            if index != 0 and index not in table:
                table[index] = LabelSetting(index=index, name=f"label {index}")
        wanted = {w.lower() for w in params.get("labels", [])}
        segments: list[Segment] = []
        sizes: dict[str, float] = {}
        missing: list[str] = []
        for index in sorted(table):
            lab = table[index]
            if wanted and lab.name.lower() not in wanted:
                continue
            mask = label_map == index
            if not mask.any():
                missing.append(lab.name)
                continue
            size = mask_size(mask, volume)
            sizes[lab.name] = round(size.value, 2)
            segment = label_codes(lab).segment(lab.name, mask, [size])
            segment.confidence = Confidence("mean softmax probability", softmax.get(index, 0.0), cfg.uncertain_below)
            segments.append(segment)
        segments, missing_targets = select_segments(segments, params.get("targets"), params.get("exclude"))
        sizes = {k: v for k, v in sizes.items() if k in {s.label for s in segments}}
        missing += missing_targets
        algorithm = AlgorithmInfo(
            name=loaded.name,
            version=cfg.version or loaded.version,
            family=concept("artificial_intelligence"),
            parameters={k: str(v) for k, v in info.items()},
        )
        # Volumes in mL; in voxels when the series does not say how large its voxels are.
        in_ml = all(seg.measurements[0].unit.value == "mL" for seg in segments)
        summary: dict[str, Any] = {
            "labels": list(sizes), "volumes_ml" if in_ml else "volumes_voxels": sizes, "not_found": missing,
        }
        unsure = [s.label for s in segments if s.confidence is not None and s.confidence.uncertain]
        if unsure:
            summary["uncertain"] = unsure
        return ToolOutput(api_name=self.api_name, algorithm=algorithm, summary=summary, segments=segments)

    def segment(self, volume: Volume) -> tuple[np.ndarray, dict[str, Any]]:
        """Label map (slices, rows, cols) on the source grid, and the inference parameters used
        (plus, under :data:`LABEL_CONFIDENCE`, each label's mean softmax probability)."""
        import torch
        from monai.inferers import sliding_window_inference

        cfg = self._require_config()
        loaded, device = self._ensure_loaded()
        axcodes = cfg.axcodes if "axcodes" in cfg.model_fields_set else (loaded.axcodes or cfg.axcodes)
        spacing = cfg.spacing or loaded.spacing
        mapping = plan_mapping(volume, axcodes, spacing)
        image = self._scale(to_network_grid(volume.pixels, mapping), volume.modality, loaded)
        roi = cfg.roi_size or loaded.roi_size or DEFAULT_ROI
        overlap = cfg.overlap if cfg.overlap is not None else (loaded.overlap or DEFAULT_OVERLAP)
        # Half precision on GPU through autocast (weights stay fp32: MONAI nets mix norms/convs).
        half = model_dtype(device)
        autocast = device.type == "cuda" and half != torch.float32
        with torch.inference_mode(), torch.autocast(device.type, dtype=half, enabled=autocast):
            logits = sliding_window_inference(
                image.to(device), roi, cfg.sw_batch_size, loaded.network, overlap=overlap, mode=cfg.blend
            )
            assert isinstance(logits, torch.Tensor)
            probability, labels = torch.softmax(logits[0].float(), dim=0).max(dim=0)
            # The network's own confidence in each label: its mean softmax over the voxels it won.
            count = torch.bincount(labels.flatten(), minlength=logits.shape[1])
            total = torch.bincount(labels.flatten(), weights=probability.flatten(), minlength=logits.shape[1])
        label_map = from_network_grid(labels, mapping)
        info = {
            "axcodes": axcodes,
            "spacing_mm": list(spacing) if spacing else "source",
            "roi_size": list(roi),
            "overlap": overlap,
            "network_grid": list(mapping.network_shape),
            "device": str(device),
            LABEL_CONFIDENCE: {int(i): float(total[i] / count[i]) for i in torch.nonzero(count).flatten().tolist()},
        }
        return label_map, info

    def _scale(self, image: torch.Tensor, modality: str, loaded: LoadedNetwork) -> torch.Tensor:
        cfg = self._require_config()
        if cfg.intensity == "none":
            return image
        if cfg.intensity == "zscore":
            std = float(image.std())
            return (image - image.mean()) / (std if std > 0 else 1.0)
        lo, hi = cfg.window or loaded.window or (
            DEFAULT_WINDOW_CT if modality.upper() == "CT" else _percentiles(image)
        )
        return ((image - lo) / max(hi - lo, 1e-6)).clamp_(0.0, 1.0)


def _percentiles(image: torch.Tensor) -> tuple[float, float]:
    """0.5/99.5 percentile window for MR (no absolute intensity scale)."""
    import torch

    sample = image.flatten()[:: max(1, image.numel() // 1_000_000)].to(torch.float32)
    lo, hi = torch.quantile(sample, torch.tensor([0.005, 0.995])).tolist()
    return float(lo), float(hi)


def label_codes(lab: LabelSetting) -> SegmentCodes:
    """The codes of one network label: the config's, else the code table's for its name (an organ
    network's unknown label is still an organ: "Anatomical Structure" / "Organ")."""
    codes = segment_codes(lab.name)
    if codes.category == concept("tissue"):
        codes = SegmentCodes(concept("anatomical_structure"), concept("organ"))
    return SegmentCodes(
        category=lab.category.as_code() if lab.category else codes.category,
        type=lab.code.as_code() if lab.code else codes.type,
        anatomic_region=codes.anatomic_region,
        laterality=codes.laterality,
    )
