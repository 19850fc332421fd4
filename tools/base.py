"""The one small interface every tool implements, and the typed results tools return.

A tool is what the MMedAgent planner calls by ``API_name``. It declares a JSON schema for its
``API_params``, what it needs to run (device, model path), and returns a :class:`ToolOutput`
whose typed parts are consumed downstream: masks become DICOM SEG segments, measurements and
boxes become TID 1500 SR content, labels and text become SR findings, and ``summary`` is what
the planner sees (the MMedAgent "<API_name> output: {...}" message).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:
    from pydantic import ValidationError

    from dicom_node.volume import Volume


@dataclass(frozen=True)
class Code:
    """A coded concept (PS3.3 Section 8.8): value, coding scheme designator, meaning."""

    value: str
    scheme: str
    meaning: str


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


@dataclass(frozen=True)
class Box:
    """A detection. ``box`` is (x0, y0, x1, y1) normalised to 0-1 of the image's columns/rows,
    as in the MMedAgent protocol; ``slice_index`` names the volume slice (None for 2D images)."""

    label: str
    score: float
    box: tuple[float, float, float, float]
    slice_index: int | None = None


@dataclass(frozen=True)
class LabelScore:
    label: str
    score: float


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


class ToolRefused(Exception):
    """The tool cannot handle this input; the message is a reason a radiologist can read."""


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""


#: How the reason of a tool whose config section does not validate begins.
INVALID_SETTINGS = "invalid settings:"


def invalid_settings_reason(exc: ValidationError) -> str:
    """The unavailability reason of a tool whose config section does not validate: the first
    error and where it is (``invalid settings: labels.0.index: ...``)."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "settings"
    return f"{INVALID_SETTINGS} {where}: {err['msg']}"


class Tool(ABC):
    """Base class for tools. Subclasses set the class attributes and implement :meth:`run`.

    Instances are built once per process from the tool's config section (model loaded then, or
    lazily on first use) and reused across jobs.
    """

    #: The protocol name the planner uses (fixed by the MMedAgent protocol).
    api_name: ClassVar[str]
    #: One-line description shown in ``mmed-node tools list`` and given to MLLM planners.
    description: ClassVar[str]
    #: JSON schema of ``API_params``.
    params_schema: ClassVar[dict[str, Any]]
    #: "cpu" or "gpu": which worker queue the tool prefers.
    queue: ClassVar[str] = "cpu"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        self.settings = dict(settings or {})

    def availability(self) -> Availability:
        """Whether the tool can run with its settings (model present etc.), and if not, why."""
        return Availability(True)

    @abstractmethod
    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        """Run on ``volume`` with validated ``params``; raise :class:`ToolRefused` with a reason."""
        raise NotImplementedError
