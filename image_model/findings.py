"""The value types a tool returns and the encoders consume: codes, segments, measurements,
boxes, label scores, and the tool output that carries them.

Masks become DICOM SEG segments, measurements and boxes become TID 1500 SR content, labels and
text become SR findings, and ``summary`` is what the planner sees (the MMedAgent
"<API_name> output: {...}" message). They live at the bottom so tools, the agent and the
encoders share them without importing one another.

A result the node is not sure of must say so rather than be stated flatly: a model tool puts its
own quality estimate on each result (:class:`Confidence`: MedSAM's predicted IoU, a classifier's
probability, a detector's score, a segmentation network's softmax), and a structure measured on
only part of the organ carries its :class:`Coverage`. :func:`caveats` turns both into the words
an encoder writes next to the result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 Section 8.8): value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class Confidence:
    """A tool's own estimate of how far to trust one result, on a 0-1 scale, and the level below
    which the node reports the result as uncertain."""

    #: What the number is, in words: "predicted IoU", "softmax probability", "detection score".
    measure: str
    value: float
    threshold: float

    @property
    def uncertain(self) -> bool:
        return not self.value >= self.threshold  # NaN is uncertain too

    def describe(self) -> str:
        text = f"{self.measure} {self.value:.2f}"
        return f"uncertain: {text}, below {self.threshold:.2f}" if self.uncertain else text


@dataclass(frozen=True)
class Coverage:
    """How much of a structure the volume shows. Measurements of a partly covered structure are
    of the part within the field of view only."""

    complete: bool
    #: Volume edges the structure runs into: "superior", "inferior", "in-plane".
    clipped: tuple[str, ...] = ()
    #: In words: "lung base only", "apex not in the field of view".
    description: str = ""


@dataclass(frozen=True)
class Measurement:
    """One numeric result about a segment or the whole study (becomes a TID 300 item)."""

    name: Code
    value: float
    unit: Code


@dataclass
class Segment:
    """One segmented structure. ``mask`` is boolean, shaped like the input volume's pixels
    (slices, rows, cols) in the volume's slice order."""

    label: str
    category: Code
    type: Code
    mask: np.ndarray
    measurements: list[Measurement] = field(default_factory=list)
    anatomic_region: Code | None = None
    laterality: Code | None = None
    confidence: Confidence | None = None
    coverage: Coverage | None = None


@dataclass(frozen=True)
class Box:
    """A detection. ``box`` is (x0, y0, x1, y1) normalised to 0-1 of the image's columns/rows,
    as in the MMedAgent protocol; ``slice_index`` names the volume slice (None for 2D images)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    slice_index: int | None = None
    confidence: Confidence | None = None


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float
    confidence: Confidence | None = None


@dataclass(frozen=True)
class AlgorithmInfo:
    """Who produced a result: becomes the SEG algorithm identification (PS3.3 C.8.20.2)."""

    name: str
    version: str
    family: Code = Code("123109", "DCM", "Manual Processing")  # replaced by tools with a real family
    parameters: dict[str, str] = field(default_factory=dict)


@dataclass
class ToolOutput:
    api_name: str
    algorithm: AlgorithmInfo
    #: JSON-serialisable summary fed back to the planner in MMedAgent wording.
    summary: dict[str, Any]
    segments: list[Segment] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    labels: list[LabelScore] = field(default_factory=list)
    measurements: list[Measurement] = field(default_factory=list)
    text: str | None = None


def caveats(item: Segment | Box | LabelScore) -> list[str]:
    """What must be said next to a result: partial coverage, and the tool's confidence (marked
    "uncertain" below its threshold). Empty for a complete result without a confidence."""
    notes: list[str] = []
    coverage = getattr(item, "coverage", None)
    if coverage is not None and not coverage.complete:
        notes.append(f"partial: {coverage.description}; measured within the field of view only")
    if item.confidence is not None:
        notes.append(item.confidence.describe())
    return notes
