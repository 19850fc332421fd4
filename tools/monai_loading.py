"""Loading a MONAI segmentation network: a bundle folder, or an architecture + kwargs + weights."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tools.weights import read_state_dict

if TYPE_CHECKING:
    import torch

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


def bundle_config_file(bundle: Path) -> Path | None:
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


def load_bundle(bundle: Path) -> LoadedNetwork:
    """Instantiate ``network_def`` from a MONAI bundle folder and load ``models/model.pt``."""
    import torch
    from monai.bundle import ConfigParser

    config_file = bundle_config_file(bundle)
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
    network.load_state_dict(read_state_dict(weights))
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
    network.load_state_dict(read_state_dict(weights))
    return LoadedNetwork(network=network, label_names={}, name=f"MONAI {name}", version="unknown")
