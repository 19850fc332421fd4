"""The planner interface: one turn of the MMedAgent conversation from a planning context.

A planner is both action planner and result aggregator (as the MLLM is in MMedAgent): given the
instruction, the rendered image, the series' metadata as text, the conversation so far and the
tools it may call, it returns the next :class:`~agent.protocol.AssistantTurn`. A turn with actions
asks the loop to run tools; a turn without actions is the final answer.

Backends register with :func:`register_planner` under their ``name`` and are built by name with
:func:`build_planner`; their modules are imported lazily, so a node that plans with rules never
imports torch or an HTTP client.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

import numpy as np
from pydicom.dataset import Dataset

from agent.protocol import AssistantTurn, Message

if TYPE_CHECKING:
    from config.schema import PlannerConfig
    from tools.base import Tool


@dataclass(frozen=True)
class ToolSpec:
    """What a planner knows about one tool: its protocol name, description and params schema."""

    name: str
    description: str
    params_schema: dict[str, Any]


class ToolSource(Protocol):
    """What planning and the loop need of a tool registry (``tools.registry.ToolRegistry`` fits)."""

    def available_names(self) -> list[str]: ...

    def get(self, name: str) -> Tool: ...

    def validate_params(self, name: str, params: dict[str, Any]) -> None: ...


def tool_specs(registry: ToolSource, allowed_tools: list[str] | None = None) -> list[ToolSpec]:
    """The specs of the registry's available tools (restricted to ``allowed_tools`` if given)."""
    specs = []
    for name in registry.available_names():
        if allowed_tools is not None and name not in allowed_tools:
            continue
        tool = registry.get(name)
        specs.append(ToolSpec(name, tool.description, dict(tool.params_schema)))
    return specs


@dataclass
class PlanContext:
    """Everything a planner sees when producing the next turn."""

    #: The user's question (the route's instruction); the first human message without ``<image>``.
    instruction: str
    #: DICOM metadata as text (modality, body part, series description, geometry; no identifiers).
    metadata_text: str
    #: The rendered key image (rows, cols, 3) uint8, or None when there is no image.
    image: np.ndarray | None
    #: The conversation so far, starting with the first human message.
    history: list[Message]
    #: Tools the planner may call in this context.
    tools: list[ToolSpec]
    #: DICOM Modality of the series (CT, MR, CR, DX...).
    modality: str = ""
    #: (slices, rows, cols) of the volume.
    volume_shape: tuple[int, ...] = ()
    #: Extra metadata values (BodyPartExamined, SeriesDescription...) for rule-based reading.
    meta: dict[str, Any] = field(default_factory=dict)
    #: The series' first source header: what a remote backend de-identifies against
    #: (:mod:`agent.outbound`); never sent itself.
    header: Dataset | None = None

    @property
    def tool_names(self) -> list[str]:
        return [t.name for t in self.tools]

    @property
    def is_3d(self) -> bool:
        return len(self.volume_shape) == 3 and self.volume_shape[0] > 1

    @property
    def last_message(self) -> Message | None:
        return self.history[-1] if self.history else None


class PlannerOutputError(ValueError):
    """The planner's model produced output that is not a usable turn.

    ``raw_text`` is what the model said (kept for the job record); ``reason`` says what was wrong
    and is shown to the model in the one corrective retry.
    """

    def __init__(self, raw_text: str, reason: str) -> None:
        super().__init__(reason)
        self.raw_text = raw_text
        self.reason = reason


class PlannerUnavailable(RuntimeError):
    """The backend cannot answer at all (server down after retries, model failed to load).

    The loop hands over to the rules planner at once (no corrective retry) and records why.
    """


class Planner(ABC):
    """Base class of planner backends."""

    #: The backend name used in config (``planner.backend`` / a route's ``planner``).
    name: ClassVar[str]

    def __init__(self, cfg: PlannerConfig | None = None) -> None:
        self.cfg = cfg

    @classmethod
    def from_config(cls, cfg: PlannerConfig) -> Planner:
        """Build the planner from its config section (override to load models, check paths...)."""
        return cls(cfg)

    @abstractmethod
    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        """The next assistant turn; raise :class:`PlannerOutputError` for malformed model output."""
        raise NotImplementedError


P = TypeVar("P", bound=type[Planner])

#: Backend name -> module that registers it; imported on first use only.
PLANNER_MODULES: dict[str, str] = {
    "rules": "agent.planners.rules",
    "transformers": "agent.planners.hf",
    "openai": "agent.planners.openai_compat",
}

_PLANNERS: dict[str, type[Planner]] = {}


def register_planner(cls: P) -> P:
    """Class decorator: make ``cls`` buildable under ``cls.name``."""
    name = cls.name
    if name in _PLANNERS and _PLANNERS[name] is not cls:
        raise ValueError(f"two planners claim the name {name!r}")
    _PLANNERS[name] = cls
    return cls


class UnknownPlanner(ValueError):
    """No planner backend of that name exists (or its module failed to import)."""


def planner_class(name: str) -> type[Planner]:
    """The registered class for ``name``, importing its module on first use."""
    if name not in _PLANNERS:
        module = PLANNER_MODULES.get(name)
        if module is None:
            raise UnknownPlanner(f"unknown planner {name!r}; known: {sorted(PLANNER_MODULES)}")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise UnknownPlanner(f"planner {name!r}: cannot import {module}: {exc}") from exc
        if name not in _PLANNERS:
            raise UnknownPlanner(f"planner {name!r}: module {module} registers no planner of that name")
    return _PLANNERS[name]


def build_planner(name: str, cfg: PlannerConfig) -> Planner:
    """Build the planner backend ``name`` from ``cfg`` (a :class:`config.schema.PlannerConfig`)."""
    return planner_class(name).from_config(cfg)
