"""One registry for tools, keyed by API_name; tool modules register their class with a decorator."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, TypeVar

import jsonschema
from pydantic import ValidationError

from tools.base import INVALID_SETTINGS, Availability, Tool, invalid_settings_reason

T = TypeVar("T", bound=type[Tool])

#: Modules that define tools; imported when a registry is built.
TOOL_MODULES: tuple[str, ...] = (
    "tools.ct_lung", "tools.grounding", "tools.medsam", "tools.grounded_sam",
    "tools.organ3d", "tools.classify", "tools.report", "tools.retrieval",
)

_CLASSES: dict[str, type[Tool]] = {}


def register_tool(cls: T) -> T:
    """Class decorator: make ``cls`` known under its ``api_name``."""
    name = cls.api_name
    if name in _CLASSES and _CLASSES[name] is not cls:
        raise ValueError(f"two tools claim API_name {name!r}")
    _CLASSES[name] = cls
    return cls


def known_tool_classes() -> dict[str, type[Tool]]:
    for module in TOOL_MODULES:
        importlib.import_module(module)
    return dict(_CLASSES)


@dataclass(frozen=True)
class ToolStatus:
    name: str
    available: bool
    reason: str
    description: str
    queue: str


class ParamsInvalid(ValueError):
    """API_params do not satisfy a tool's JSON schema."""


class ToolRegistry:
    """The tools of one process, built from the config's ``tools`` section."""

    def __init__(
        self,
        settings: dict[str, dict[str, Any]] | None = None,
        classes: dict[str, type[Tool]] | None = None,
    ) -> None:
        """``classes`` (default: every registered tool) lets tests and tools build a registry of
        chosen tool classes, e.g. a test's own small tool."""
        settings = settings or {}
        classes = dict(classes) if classes is not None else known_tool_classes()
        unknown = sorted(set(settings) - set(classes))
        if unknown:
            raise ValueError(f"tools: unknown tool(s) {unknown}; known: {sorted(classes)}")
        self._classes = classes
        self._tools: dict[str, Tool] = {}
        self._status: dict[str, Availability] = {}
        #: Configured tools whose settings do not validate, with the reason.
        self.settings_errors: dict[str, str] = {}
        for name, cls in sorted(classes.items()):
            try:
                tool = cls(settings.get(name))
            except ValidationError as exc:  # a tool that validates its settings eagerly
                self._status[name] = Availability(False, invalid_settings_reason(exc))
            else:
                self._tools[name] = tool
                self._status[name] = tool.availability()
            if self._status[name].reason.startswith(INVALID_SETTINGS):
                self.settings_errors[name] = self._status[name].reason

    def statuses(self) -> list[ToolStatus]:
        return [
            ToolStatus(name, st.available, st.reason, self._classes[name].description, self._classes[name].queue)
            for name, st in self._status.items()
        ]

    def available_names(self) -> list[str]:
        return [n for n, st in self._status.items() if st.available]

    def get(self, name: str) -> Tool:
        """The tool for ``name``; KeyError with the reason if unknown or unavailable."""
        if name not in self._status:
            raise KeyError(f"unknown tool {name!r}")
        status = self._status[name]
        if not status.available:
            raise KeyError(f"tool {name!r} is not available: {status.reason}")
        return self._tools[name]

    def validate_params(self, name: str, params: dict[str, Any]) -> None:
        schema = self.get(name).params_schema
        try:
            jsonschema.validate(params, schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "(params)"
            raise ParamsInvalid(f"{name}: {where}: {exc.message}") from None
