"""Where model-backed tools run, and in which floating-point precision.

One helper for every tool so that a config's ``device:`` means the same thing everywhere:
``None``/``"auto"`` picks the first CUDA device when one is present, else the CPU; anything else
is handed to :class:`torch.device` (``"cpu"``, ``"cuda"``, ``"cuda:1"``...), and asking for CUDA on a
machine without it fails at start with a readable message instead of at the first job.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from tools.base import Availability

if TYPE_CHECKING:
    import torch

#: Settings value meaning "CUDA if present, else CPU".
AUTO = "auto"

Precision = Literal["bf16", "fp16", "fp32"]
M = TypeVar("M")
P = ParamSpec("P")
R = TypeVar("R")

#: The precisions a setting may name (torch dtypes: :func:`model_dtype`).
PRECISIONS: tuple[str, ...] = ("bf16", "fp16", "fp32")


class DeviceUnavailable(RuntimeError):
    """The configured device does not exist on this machine."""


def resolve_device(setting: str | None) -> torch.device:
    """The torch device for a tool's ``device`` setting (None or "auto": CUDA when present)."""
    import torch  # here, not at module level: listing tools must not pay for importing torch

    if setting is None or setting.strip().lower() in ("", AUTO):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting.strip())
    except RuntimeError as exc:
        raise DeviceUnavailable(f"device {setting!r} is not a torch device: {exc}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {setting!r} configured but CUDA is not available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(
                f"device {setting!r} configured but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    return device


def model_dtype(device: torch.device, prefer: Precision = "bf16") -> torch.dtype:
    """The dtype to hold a model's weights in on ``device``.

    GPUs get the preferred half precision (bf16 falls back to fp16 on cards without bf16 support,
    e.g. pre-Ampere); the CPU always gets fp32, since CPU half-precision kernels are slow or missing
    for many ops. ``prefer="fp32"`` forces full precision everywhere (for models that overflow in
    half precision).
    """
    import torch

    if prefer not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {prefer!r}")
    if device.type != "cuda" or prefer == "fp32":
        return torch.float32
    if prefer == "bf16" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16 if prefer == "bf16" else torch.float16


def inference_mode(fn: Callable[P, R]) -> Callable[P, R]:
    """``@torch.inference_mode()`` for model code in tool modules, importing torch at the first
    call instead of when the module is imported (building a registry must not load torch)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper


def model_path_availability(model_path: Path | str | None) -> Availability:
    """The availability of a tool whose model loads from ``model_path`` (file or folder)."""
    if model_path is None or str(model_path).strip() == "":
        return Availability(False, "no model_path configured")
    if not Path(model_path).exists():
        return Availability(False, f"model_path {model_path} does not exist")
    return Availability(True)


#: Logger of model loads (:func:`record_model_load`); a handler reads ``record.model_load``.
MODEL_LOAD_LOGGER = "mmedagent.models"


@dataclass(frozen=True)
class ModelLoad:
    """One model loaded into this process: its kind and how long loading took."""

    kind: str
    seconds: float


def record_model_load(kind: str, seconds: float) -> None:
    """Log one model load on :data:`MODEL_LOAD_LOGGER` (a job's run collects them for the node's
    metrics: ``dicom_node/jobs/telemetry.py``)."""
    logging.getLogger(MODEL_LOAD_LOGGER).info(
        "loaded %s model in %.2f s", kind, seconds, extra={"model_load": ModelLoad(kind, seconds)}
    )


class ModelCache:
    """Loaded models of this process keyed by (kind, settings): a model is loaded once per process
    even when two tools (``grounding dino`` and ``grounding dino + MedSAM``) are configured with it.

    Use one per process (the registry's tools share :data:`LOADED_MODELS`); loading happens under
    the lock so two worker threads never load the same weights twice.
    """

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], object] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, key: str, load: Callable[[], M]) -> M:
        with self._lock:
            if (kind, key) not in self._models:
                started = time.perf_counter()
                self._models[(kind, key)] = load()
                record_model_load(kind, time.perf_counter() - started)
            return self._models[(kind, key)]  # type: ignore[return-value]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


#: The process's model cache (holds weights, not configuration).
LOADED_MODELS = ModelCache()
