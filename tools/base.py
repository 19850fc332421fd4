"""The one small interface every tool implements.

A tool is what the MMedAgent planner calls by ``API_name``. It declares a JSON schema for its
``API_params``, what it needs to run (device, model path), and returns a
:class:`~image_model.findings.ToolOutput` (the value types live in :mod:`image_model.findings`).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from pydantic import ValidationError

    from image_model.findings import ToolOutput
    from image_model.volume import Volume


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
