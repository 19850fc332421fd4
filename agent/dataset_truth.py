"""Tool outputs derived from ground truth, for tools that have no local model.

MMedAgent built its instruction data from tool outputs on ground-truth boxes; these functions do
the same for the synthetic cases, in each tool's own summary format (``tools/*``), so a model tuned
on them reads the real tools' outputs at inference time.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from agent.dataset_templates import DISEASES
from image_model.measure import mask_volume_ml
from image_model.volume import Volume


@dataclass
class TruthCase:
    """What the generator knows about one image."""

    volume: Volume
    #: Canonical target name -> mask (slices, rows, cols).
    masks: dict[str, np.ndarray]
    #: The image's label in the classifier's label set (e.g. "chest X-ray").
    image_label: str | None
    description: str
    #: The knowledge topic of the instruction, if any.
    disease: str | None
    rng: np.random.Generator


def _boxes(case: TruthCase, prompts: list[str]) -> dict[str, Any]:
    """Grounding-style boxes: per prompt, each connected part on its largest slice, normalised."""
    boxes: list[list[float]] = []
    logits: list[float] = []
    phrases: list[str] = []
    slices: list[int] = []
    for prompt in prompts:
        mask = case.masks.get(prompt)
        if mask is None or not mask.any():
            continue
        k = int(np.argmax(mask.reshape(mask.shape[0], -1).sum(axis=1)))
        labels, n = ndimage.label(mask[k])
        rows, cols = mask.shape[1:]
        for part in ndimage.find_objects(labels)[:n]:
            ys, xs = part
            boxes.append([round(xs.start / cols, 4), round(ys.start / rows, 4), round(xs.stop / cols, 4), round(ys.stop / rows, 4)])
            logits.append(round(float(case.rng.uniform(0.55, 0.98)), 4))
            phrases.append(prompt)
            slices.append(k)
    summary: dict[str, Any] = {"boxes": boxes, "logits": logits, "phrases": phrases}
    if case.volume.is_3d and boxes:
        summary["slices"] = slices
    return summary


def _prompts(params: dict[str, Any], key: str = "prompts") -> list[str]:
    value = params.get(key) or []
    return [str(v).lower() for v in (value if isinstance(value, list) else [value])]


def grounding(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    return _boxes(case, _prompts(params))


def grounded_segmentation(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    summary = _boxes(case, _prompts(params))
    segments = []
    for prompt in _prompts(params):
        mask = case.masks.get(prompt)
        if mask is None or not mask.any():
            continue
        item: dict[str, Any] = {"label": prompt, "pixels": int(mask.sum())}
        if mask.shape[0] > 1:
            filled = np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1))
            item["slices"] = [int(filled[0]), int(filled[-1])]
        segments.append(item)
    summary["segments"] = segments
    return summary


def organ_segmentation(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    wanted = _prompts(params, "labels") or list(case.masks)
    volumes = {
        name: round(mask_volume_ml(case.masks[name], case.volume), 2)
        for name in wanted
        if name in case.masks and case.masks[name].any()
    }
    return {"labels": list(volumes), "volumes_ml": volumes, "not_found": [w for w in wanted if w not in volumes]}


def lung_segmentation(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    mask = case.masks.get("lung")
    if mask is None or not mask.any():
        return {"refused": "no lungs found in the volume"}
    total = round(mask_volume_ml(mask, case.volume), 1)
    return {"total_lung_ml": total, "mean_hu": round(float(case.volume.pixels[mask].mean()), 1)}


def classification(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    if case.image_label is None:
        return {"refused": "no label known for this image"}
    others = [lab for lab in ("chest X-ray", "abdomen CT", "lung CT", "brain MRI", "bone X-ray") if lab != case.image_label]
    top = round(float(case.rng.uniform(0.6, 0.95)), 4)
    rest = [round((1 - top) * f, 4) for f in (0.6, 0.3)]
    return {"labels": [case.image_label, *others[:2]], "scores": [top, *rest]}


def metadata_classification(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    if case.image_label is None:
        return {"refused": "no label known for this image"}
    return {"label": case.image_label, "confidence": 0.9}


def report(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    seen = ", ".join(sorted(case.masks)) or "no segmented structures"
    findings = []
    for name in ("nodule", "tumor"):
        if name in case.masks and case.masks[name].any():
            findings.append(f"a {name} is present")
    impression = "; ".join(findings) or "no focal abnormality"
    return {"report": f"{case.description}. Structures identified: {seen}. Impression: {impression}."}


def retrieval(case: TruthCase, params: dict[str, Any]) -> dict[str, Any]:
    """The retrieval tool's format (``tools/retrieval.py``): the query and ranked passages."""
    query = str(params.get("query", ""))
    topic = case.disease
    passages = []
    if topic is not None:
        passages.append({
            "rank": 1, "source": f"{topic.replace(' ', '_')}.md", "section": topic.capitalize(),
            "score": round(float(case.rng.uniform(0.55, 0.9)), 4), "text": DISEASES[topic],
        })
    return {"query": query, "method": "embedding", "passages": passages}


#: API_name -> ground-truth output function.
TRUTH_OUTPUTS: dict[str, Callable[[TruthCase, dict[str, Any]], dict[str, Any]]] = {
    "grounding dino": grounding,
    "grounding dino + MedSAM": grounded_segmentation,
    "organ segmentation 3d": organ_segmentation,
    "ct lung segmentation": lung_segmentation,
    "BiomedClip": classification,
    "metadata classification": metadata_classification,
    "report generation": report,
    "retrieval": retrieval,
}
