"""A tool whose model loads from one configured ``model_path`` and is shared per process.

``grounding dino`` and ``MedSAM`` (and, through them, ``grounding dino + MedSAM``) work alike:
their config section is a frozen pydantic model with ``model_path`` and ``device``; the tool is
available when ``model_path`` exists; the loaded model is kept in :data:`tools.device.LOADED_MODELS`
keyed by the settings, so two tools configured with the same weights load them once. This class
holds that part once; a subclass names its settings class and cache kind and says how to load.
"""
from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from tools.base import Availability, Tool
from tools.device import LOADED_MODELS, model_path_availability


class ModelPathSettings(BaseModel):
    """The keys every model-path tool's settings have (subclasses add theirs)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: A weights file or a ``save_pretrained`` folder, depending on the tool.
    model_path: Path | None = None
    #: "auto"/None (CUDA when present), "cpu", "cuda", "cuda:N" (:func:`tools.device.resolve_device`).
    device: str | None = None


S = TypeVar("S", bound=ModelPathSettings)
M = TypeVar("M")


class CachedModelTool(Tool, Generic[S, M]):
    """Settings parsed at construction, availability from ``model_path``, the model loaded on first
    use and shared by every tool with the same settings."""

    #: The pydantic settings class of this tool's config section.
    settings_class: type[S]
    #: Key of this kind of model in :data:`tools.device.LOADED_MODELS`.
    model_kind: str

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config: S = self.settings_class.model_validate(self.settings)

    def availability(self) -> Availability:
        return model_path_availability(self.config.model_path)

    def model(self) -> M:
        """The model, loaded on first use and shared by every tool with the same settings."""
        config = self.config
        return LOADED_MODELS.get(self.model_kind, config.model_dump_json(), lambda: self.load_model(config))

    @abstractmethod
    def load_model(self, config: S) -> M:
        """Load the model for ``config`` (called once per process and settings)."""
        raise NotImplementedError
