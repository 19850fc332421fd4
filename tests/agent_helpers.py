"""Shared pieces of the agent tests: volumes from phantoms, small real tools, a registry of them."""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from scipy import ndimage

from image_model.findings import AlgorithmInfo, Code, Measurement, Segment, ToolOutput
from image_model.measure import mask_volume_ml
from image_model.volume import Volume
from testkit.phantoms import write_ct_phantom
from tools.base import Tool, ToolRefused
from tools.registry import ToolRegistry

IMAGE_PROP: dict[str, Any] = {"type": "string"}


def phantom_volume(tmp_dir: Path, **kwargs: Any) -> tuple[Volume, Any]:
    """A small chest CT phantom written as DICOM files and read back by the node's loader."""
    from image_model.loader import load_series

    kwargs.setdefault("slices", 24)
    kwargs.setdefault("rows", 64)
    kwargs.setdefault("cols", 64)
    kwargs.setdefault("pixel_spacing", 5.0)
    kwargs.setdefault("slice_spacing", 10.0)
    truth = write_ct_phantom(tmp_dir, **kwargs)
    return load_series(tmp_dir), truth


def real_lung_tool_available() -> bool:
    return importlib.util.find_spec("tools.ct_lung") is not None


class AirInBodyTool(Tool):
    """Stand-in lung tool that really measures: air (< -400 HU) enclosed by the body, in mL."""

    api_name = "ct lung segmentation"
    description = "Air inside the body of a CT volume, measured in mL (test tool)."
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "properties": {"image": IMAGE_PROP}, "additionalProperties": False,
    }

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        if volume.modality != "CT":
            raise ToolRefused(f"needs CT, got {volume.modality}")
        if volume.pixels.shape[0] < 3:
            raise ToolRefused(f"needs a volume of at least 3 slices, got {volume.pixels.shape[0]}")
        body = np.stack([ndimage.binary_fill_holes(s > -400) for s in volume.pixels])
        air = body & (volume.pixels < -400)
        ml = mask_volume_ml(air, volume)
        mean_hu = float(volume.pixels[air].mean()) if air.any() else 0.0
        unit = Code("mL", "UCUM", "milliliter")
        seg = Segment(
            "lungs", Code("123037004", "SCT", "Anatomical Structure"), Code("39607008", "SCT", "Lung"), air,
            [Measurement(Code("118565006", "SCT", "Volume"), ml, unit)],
        )
        return ToolOutput(
            self.api_name, AlgorithmInfo("air-in-body", "1"),
            {"lungs": {"volume_ml": round(ml, 1), "mean_hu": round(mean_hu, 1)}}, segments=[seg],
        )


class ModalityTool(Tool):
    """Stand-in classifier that reads the modality and slice count from the volume."""

    api_name = "metadata classification"
    description = "Image type from the DICOM header (test tool)."
    params_schema: ClassVar[dict[str, Any]] = {"type": "object", "properties": {"image": IMAGE_PROP}}

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        label = f"{volume.modality} {'volume' if volume.is_3d else 'image'}"
        return ToolOutput(self.api_name, AlgorithmInfo("header", "1"), {"labels": [label], "scores": [1.0]})


class BarrierTool(Tool):
    """Two of these in one turn only finish if they run at the same time (parallelism check)."""

    api_name = "grounding dino"
    description = "Boxes of the brightest region (test tool)."
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"image": IMAGE_PROP, "prompts": {"type": "array", "items": {"type": "string"}, "minItems": 1}},
        "required": ["prompts"],
    }
    barrier: ClassVar[threading.Barrier | None] = None

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        if self.barrier is not None:
            self.barrier.wait(timeout=5)
        k = int(np.argmax(volume.pixels.reshape(volume.pixels.shape[0], -1).max(axis=1)))
        ys, xs = np.nonzero(volume.pixels[k] >= volume.pixels[k].max() - 1)
        rows, cols = volume.pixels.shape[1:]
        box = [round(xs.min() / cols, 3), round(ys.min() / rows, 3), round((xs.max() + 1) / cols, 3), round((ys.max() + 1) / rows, 3)]
        return ToolOutput(
            self.api_name, AlgorithmInfo("brightest", "1"),
            {"boxes": [box], "logits": [0.9], "phrases": [params["prompts"][0]]},
        )


class BarrierKnowledgeTool(BarrierTool):
    api_name = "retrieval"
    description = "Answers from a knowledge base (test tool)."
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object", "properties": {"query": {"type": "string", "minLength": 1}}, "required": ["query"],
    }

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        if self.barrier is not None:
            self.barrier.wait(timeout=5)
        words = len(params["query"].split())
        return ToolOutput(self.api_name, AlgorithmInfo("kb", "1"), {"answer": f"{words} words asked", "sources": ["kb.md"]})


def lung_tool_class() -> type[Tool]:
    """The real CT lung tool when it exists, else the stand-in."""
    return real_tool_classes().get("ct lung segmentation", AirInBodyTool)


def registry_of(*classes: type[Tool]) -> ToolRegistry:
    return ToolRegistry({}, classes={c.api_name: c for c in classes})


#: Protocol names of the tool suite, with a schema used when the real tool module is not there yet.
SUITE_FALLBACK_SCHEMAS: dict[str, dict[str, Any]] = {
    "ct lung segmentation": {"type": "object", "properties": {"image": IMAGE_PROP}},
    "grounding dino": {"type": "object", "properties": {"image": IMAGE_PROP, "prompts": {"type": "array", "items": {"type": "string"}, "minItems": 1}}, "required": ["prompts"]},
    "MedSAM": {"type": "object", "properties": {"image": IMAGE_PROP, "boxes": {"type": "array"}}},
    "grounding dino + MedSAM": {"type": "object", "properties": {"image": IMAGE_PROP, "prompts": {"type": "array", "items": {"type": "string"}, "minItems": 1}}, "required": ["prompts"]},
    "organ segmentation 3d": {"type": "object", "properties": {"image": IMAGE_PROP, "labels": {"type": "array", "items": {"type": "string"}}}},
    "BiomedClip": {"type": "object", "properties": {"image": IMAGE_PROP}},
    "metadata classification": {"type": "object", "properties": {"image": IMAGE_PROP}},
    "report generation": {"type": "object", "properties": {"image": IMAGE_PROP}},
    "retrieval": {"type": "object", "properties": {"query": {"type": "string", "minLength": 1}}, "required": ["query"]},
}


def real_tool_classes() -> dict[str, type[Tool]]:
    """The suite's tool classes whose modules exist already (each imported on its own)."""
    import importlib

    from tools import registry

    found: dict[str, type[Tool]] = {}
    for module in registry.TOOL_MODULES:
        if importlib.util.find_spec(module) is None:
            continue
        importlib.import_module(module)
    for name, cls in registry._CLASSES.items():
        found[name] = cls
    return found


def suite_specs(names: list[str] | None = None) -> list[Any]:
    """ToolSpecs for the suite: real schemas where the tool exists, fallbacks otherwise."""
    from agent.planners.base import ToolSpec

    real = real_tool_classes()
    specs = []
    for name, schema in SUITE_FALLBACK_SCHEMAS.items():
        if names is not None and name not in names:
            continue
        cls = real.get(name)
        specs.append(ToolSpec(name, cls.description if cls else name, dict(cls.params_schema) if cls else schema))
    return specs
