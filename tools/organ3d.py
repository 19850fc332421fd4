"""``organ segmentation 3d``: a MONAI network run with sliding-window inference on a CT/MR volume.

Beyond MMedAgent (2D only): the network comes from the config as either a MONAI bundle folder
(``configs/inference.json|yaml`` with ``network_def``, ``models/model.pt``, label names from
``configs/metadata.json``) or ``architecture`` (a class in :mod:`monai.networks.nets`) + kwargs +
a weights file + a label list.

Geometry, in patient space: the volume's array axes (slice, row, col) are mapped to the network's
axis codes (MONAI's ``Orientationd(axcodes="RAS")`` convention: an axis coded "R" increases
towards the patient's right) by a permutation and flips read from ImageOrientationPatient and the
slice positions (PS3.3 C.7.6.2.1.1: DICOM patient coordinates are LPS). The oriented array is
resampled to the network's voxel spacing (field of view kept, trilinear), segmented, and the
label map goes back the same way (nearest), so every mask voxel sits on its source voxel.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sr_templates.codes import concept, unit
from tools.base import (
    AlgorithmInfo,
    Availability,
    Code,
    Measurement,
    Segment,
    Tool,
    ToolOutput,
    ToolRefused,
    invalid_settings_reason,
)
from tools.device import model_dtype, resolve_device
from tools.registry import register_tool

if TYPE_CHECKING:
    import torch

    from dicom_node.volume import Volume

log = logging.getLogger(__name__)

#: SNOMED CT codes (CID 7166/4031 anatomic regions) for organs MONAI bundles commonly segment;
#: a config's ``labels[].code`` overrides or extends them.
KNOWN_ORGAN_CODES: Mapping[str, tuple[str, str]] = MappingProxyType({
    "spleen": ("78961009", "Spleen"),
    "liver": ("10200004", "Liver"),
    "kidney": ("64033007", "Kidney"),
    "right kidney": ("9846003", "Right kidney"),
    "left kidney": ("18639004", "Left kidney"),
    "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"),
    "aorta": ("15825003", "Aorta"),
    "esophagus": ("32849002", "Esophagus"),
    "heart": ("80891009", "Heart"),
    "lung": ("39607008", "Lung"),
    "brain": ("12738006", "Brain"),
    "urinary bladder": ("89837001", "Urinary bladder"),
    "bladder": ("89837001", "Urinary bladder"),
})

#: Where each axis code points, in RAS world axes: (world axis, sign).
_AXIS_CODES: Mapping[str, tuple[int, int]] = MappingProxyType(
    {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}
)
_LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])


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
        if len(self.axcodes) != 3 or sorted({_AXIS_CODES[c][0] for c in codes if c in _AXIS_CODES}) != [0, 1, 2]:
            raise ValueError(f"axcodes must name each of R/L, A/P, S/I once, got {self.axcodes!r}")
        return self


DEFAULT_WINDOW_CT = (-1000.0, 1000.0)
DEFAULT_ROI = (96, 96, 96)
DEFAULT_OVERLAP = 0.25


# ---------------------------------------------------------------------------------------------
# Geometry: source array <-> network grid
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GridMapping:
    """How the volume's (slice, row, col) array becomes the network's oriented, resampled grid."""

    #: Network axis k takes source array axis ``perm[k]``.
    perm: tuple[int, int, int]
    #: Network axis k is flipped after the permutation.
    flips: tuple[bool, bool, bool]
    #: Source shape after permutation, and the network grid shape.
    oriented_shape: tuple[int, int, int]
    network_shape: tuple[int, int, int]


def array_axis_directions(volume: Volume) -> np.ndarray:
    """Unit vectors (RAS) along which the slice, row and col indices increase, shape (3, 3).

    Column index runs along the first ImageOrientationPatient triplet, row index along the second
    (PS3.3 C.7.6.2.1.1); the slice direction comes from the slice positions (so a descending
    series is handled), or the normal for a single slice.
    """
    o = np.asarray(volume.orientation, dtype=float)
    along_col, along_row = o[:3], o[3:]
    positions = np.asarray(volume.positions, dtype=float).reshape(-1, 3)
    step = positions[-1] - positions[0] if len(positions) > 1 else np.cross(along_col, along_row)
    norm = float(np.linalg.norm(step))
    along_slice = step / norm if norm > 0 else np.cross(along_col, along_row)
    return np.stack([along_slice, along_row, along_col]) * _LPS_TO_RAS


def plan_mapping(volume: Volume, axcodes: str, spacing: tuple[float, float, float] | None) -> GridMapping:
    """The permutation/flips that best align the array with ``axcodes``, and the target shape."""
    dirs = array_axis_directions(volume)
    targets = [_AXIS_CODES[c] for c in axcodes.upper()]
    best = max(permutations(range(3)), key=lambda p: sum(abs(dirs[p[k], targets[k][0]]) for k in range(3)))
    flips = tuple(bool(dirs[best[k], targets[k][0]] * targets[k][1] < 0) for k in range(3))
    oriented = tuple(volume.pixels.shape[a] for a in best)
    src_spacing = [float(volume.spacing[a]) for a in best]
    if spacing is None:
        network = oriented
    else:
        network = tuple(max(1, round(n * s / t)) for n, s, t in zip(oriented, src_spacing, spacing))
    return GridMapping(best, flips, oriented, network)  # type: ignore[arg-type]


def to_network_grid(pixels: np.ndarray, mapping: GridMapping) -> torch.Tensor:
    """(slices, rows, cols) -> float tensor (1, 1, *network_shape), trilinear, field of view kept."""
    import torch

    arr = np.transpose(pixels, mapping.perm)
    flip_axes = [k for k in range(3) if mapping.flips[k]]
    if flip_axes:
        arr = np.flip(arr, axis=tuple(flip_axes))
    tensor = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))[None, None]
    if tuple(tensor.shape[2:]) != mapping.network_shape:
        tensor = torch.nn.functional.interpolate(
            tensor, size=mapping.network_shape, mode="trilinear", align_corners=False
        )
    return tensor


def from_network_grid(labels: torch.Tensor, mapping: GridMapping) -> np.ndarray:
    """Label map on the network grid (X, Y, Z) -> (slices, rows, cols) uint16 on the source grid.

    "nearest-exact" samples at voxel centres, the same correspondence trilinear
    ``align_corners=False`` used on the way in.
    """
    import torch

    lab = labels.to("cpu")
    if tuple(lab.shape) != mapping.oriented_shape:
        lab = torch.nn.functional.interpolate(
            lab[None, None].to(torch.float32), size=mapping.oriented_shape, mode="nearest-exact"
        )[0, 0]
    arr = lab.numpy().astype(np.uint16)
    flip_axes = [k for k in range(3) if mapping.flips[k]]
    if flip_axes:
        arr = np.flip(arr, axis=tuple(flip_axes))
    return np.ascontiguousarray(np.transpose(arr, np.argsort(mapping.perm)))


# ---------------------------------------------------------------------------------------------
# Loading: bundle folder or architecture + weights
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoadedNetwork:
    network: torch.nn.Module
    #: channel index -> label name (background excluded)
    label_names: dict[int, str]
    name: str
    version: str
    #: defaults read from the bundle's inference config (None when absent)
    spacing: tuple[float, float, float] | None = None
    window: tuple[float, float] | None = None
    roi_size: tuple[int, int, int] | None = None
    overlap: float | None = None
    axcodes: str | None = None


def _bundle_config_file(bundle: Path) -> Path | None:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        candidate = bundle / "configs" / name
        if candidate.is_file():
            return candidate
    return None


def _walk(node: Any) -> list[dict[str, Any]]:
    """Every mapping with a ``_target_`` in a parsed bundle config (raw, unresolved)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append(node)
        for value in node.values():
            found.extend(_walk(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(_walk(value))
    return found


def _numbers(value: Any, n: int) -> tuple[float, ...] | None:
    """A literal numeric sequence of length ``n`` (bundle values may be '@refs': ignored then)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * n
    if isinstance(value, list) and len(value) == n and all(isinstance(v, (int, float)) for v in value):
        return tuple(float(v) for v in value)
    return None


def _bundle_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Spacing, intensity window, ROI, overlap and axcodes from the bundle's transforms/inferer."""
    out: dict[str, Any] = {}
    for comp in _walk(raw):
        target = str(comp["_target_"]).rsplit(".", 1)[-1]
        if target in ("Spacingd", "Spacing") and "pixdim" in comp:
            out.setdefault("spacing", _numbers(comp["pixdim"], 3))
        elif target in ("ScaleIntensityRanged", "ScaleIntensityRange"):
            lo, hi = comp.get("a_min"), comp.get("a_max")
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                out.setdefault("window", (float(lo), float(hi)))
        elif target in ("Orientationd", "Orientation") and isinstance(comp.get("axcodes"), str):
            out.setdefault("axcodes", comp["axcodes"])
        elif target in ("SlidingWindowInferer", "SlidingWindowInfererAdapt"):
            roi = _numbers(comp.get("roi_size"), 3)
            out.setdefault("roi_size", tuple(int(v) for v in roi) if roi else None)
            if isinstance(comp.get("overlap"), (int, float)):
                out.setdefault("overlap", float(comp["overlap"]))
    return {k: v for k, v in out.items() if v is not None}


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise TypeError(f"{path}: not a state dict")
    return state


def load_bundle(bundle: Path) -> LoadedNetwork:
    """Instantiate ``network_def`` from a MONAI bundle folder and load ``models/model.pt``."""
    import torch
    from monai.bundle import ConfigParser

    config_file = _bundle_config_file(bundle)
    if config_file is None:
        raise FileNotFoundError(f"{bundle}: no configs/inference.json or .yaml")
    parser = ConfigParser()
    parser.read_config(str(config_file))
    parser["bundle_root"] = str(bundle)
    network = parser.get_parsed_content("network_def", instantiate=True)
    if not isinstance(network, torch.nn.Module):
        raise TypeError(f"{config_file}: network_def is not a torch module")
    weights = bundle / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{bundle}: no models/model.pt")
    network.load_state_dict(_read_state_dict(weights))
    meta: dict[str, Any] = {}
    meta_file = bundle / "configs" / "metadata.json"
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    channel_def = (
        meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def", {})
    )
    names = {int(k): str(v) for k, v in channel_def.items() if int(k) != 0}
    defaults = _bundle_defaults(parser.get() or {})
    return LoadedNetwork(
        network=network,
        label_names=names,
        name=str(meta.get("name") or bundle.name),
        version=str(meta.get("version") or "unknown"),
        **defaults,
    )


def load_architecture(name: str, kwargs: dict[str, Any], weights: Path) -> LoadedNetwork:
    """Build ``monai.networks.nets.<name>(**kwargs)`` and load ``weights``."""
    import torch
    from monai.networks import nets

    cls = getattr(nets, name, None)
    if not (isinstance(cls, type) and issubclass(cls, torch.nn.Module)):
        raise TypeError(f"architecture {name!r} is not a network class in monai.networks.nets")
    network = cls(**kwargs)
    network.load_state_dict(_read_state_dict(weights))
    return LoadedNetwork(network=network, label_names={}, name=f"MONAI {name}", version="unknown")


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
            if _bundle_config_file(cfg.bundle_dir) is None:
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
        table = self.label_table(loaded)
        for index in np.unique(label_map).tolist():  # channels the bundle/config does not name
            if index != 0 and index not in table:
                table[index] = LabelSetting(index=index, name=f"label {index}")
        wanted = {w.lower() for w in params.get("labels", [])}
        segments: list[Segment] = []
        volumes_ml: dict[str, float] = {}
        missing: list[str] = []
        for index in sorted(table):
            lab = table[index]
            if wanted and lab.name.lower() not in wanted:
                continue
            mask = label_map == index
            if not mask.any():
                missing.append(lab.name)
                continue
            ml = float(mask.sum()) * volume.voxel_volume_ml
            volumes_ml[lab.name] = round(ml, 2)
            segments.append(_segment(lab, mask, ml))
        algorithm = AlgorithmInfo(
            name=loaded.name,
            version=cfg.version or loaded.version,
            family=concept("artificial_intelligence"),
            parameters={k: str(v) for k, v in info.items()},
        )
        summary = {"labels": list(volumes_ml), "volumes_ml": volumes_ml, "not_found": missing}
        return ToolOutput(api_name=self.api_name, algorithm=algorithm, summary=summary, segments=segments)

    def segment(self, volume: Volume) -> tuple[np.ndarray, dict[str, Any]]:
        """Label map (slices, rows, cols) on the source grid, and the inference parameters used."""
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
            labels = torch.argmax(logits[0], dim=0)
        label_map = from_network_grid(labels, mapping)
        info = {
            "axcodes": axcodes,
            "spacing_mm": list(spacing) if spacing else "source",
            "roi_size": list(roi),
            "overlap": overlap,
            "network_grid": list(mapping.network_shape),
            "device": str(device),
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


def _segment(lab: LabelSetting, mask: np.ndarray, ml: float) -> Segment:
    if lab.code is not None:
        type_code = lab.code.as_code()
    elif lab.name.lower() in KNOWN_ORGAN_CODES:
        value, meaning = KNOWN_ORGAN_CODES[lab.name.lower()]
        type_code = Code(value, "SCT", meaning)
    else:
        type_code = concept("organ")
    category = lab.category.as_code() if lab.category else concept("anatomical_structure")
    return Segment(
        label=lab.name,
        category=category,
        type=type_code,
        mask=mask,
        measurements=[Measurement(concept("volume"), round(ml, 3), unit("mL"))],
    )
