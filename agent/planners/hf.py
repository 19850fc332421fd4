"""The ``transformers`` planner: a local LLaVA-family checkpoint, optionally with a LoRA adapter.

The checkpoint folder is what ``save_pretrained`` writes (``config.json``, weights, tokenizer,
processor, ideally a chat template); it is loaded with ``local_files_only=True``, never from a hub.
``adapter_path`` names a peft LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``,
what ``mmed-node agent train`` writes); the adapter stays separate, so one base serves several.

The model writes turns in the flattened MMedAgent form (what it was trained on); the reply is read
with :func:`agent.prompting.parse_reply`, which also takes the JSON form.

Loading happens once per planner instance, on first use (the loop keeps its planner for the life of
the process); a lock keeps two worker threads from loading or generating at the same time.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.planners.base import (
    PlanContext,
    Planner,
    PlannerUnavailable,
    register_planner,
)
from agent.prompting import (
    LLAVA_V1_CHAT_TEMPLATE,
    TurnForm,
    context_messages,
    parse_reply,
    to_hf_chat,
)
from agent.protocol import AssistantTurn

if TYPE_CHECKING:
    import numpy as np

    from config.schema import PlannerConfig

log = logging.getLogger(__name__)

#: Turn form the model reads and writes; the trainer renders targets in the same form.
MODEL_TURN_FORM: TurnForm = "text"


@dataclass
class LoadedModel:
    """A model with its processor, ready to generate."""

    model: Any
    processor: Any
    device: str
    chat_template: str


def pick_device(requested: str | None) -> str:
    """``requested`` if given, else CUDA when present, else CPU."""
    import torch

    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_llava(model_path: Path, adapter_path: Path | None = None, device: str | None = None,
               *, trainable: bool = False) -> LoadedModel:
    """Load a LLaVA-family checkpoint folder (and LoRA adapter) in bf16 on CUDA, fp32 on CPU."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModelForImageTextToText,
        AutoProcessor,
        LlavaForConditionalGeneration,
    )

    model_path = Path(model_path)
    if not (model_path / "config.json").is_file():
        raise FileNotFoundError(f"planner.model_path {model_path} has no config.json (not a checkpoint folder)")
    dev = pick_device(device)
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    model_cls: Any = LlavaForConditionalGeneration if config.model_type == "llava" else AutoModelForImageTextToText
    started = time.monotonic()
    # On CUDA the weights load straight onto the device (a 7B model never sits whole in host RAM).
    model = model_cls.from_pretrained(model_path, local_files_only=True, dtype=dtype,
                                      device_map=dev if dev.startswith("cuda") else None)
    processor = AutoProcessor.from_pretrained(model_path, local_files_only=True)
    if adapter_path is not None:
        from peft import PeftModel

        if not (Path(adapter_path) / "adapter_config.json").is_file():
            raise FileNotFoundError(f"planner.adapter_path {adapter_path} has no adapter_config.json")
        model = PeftModel.from_pretrained(model, str(adapter_path), is_trainable=trainable)
    model.to(dev)
    if not trainable:
        model.eval()
    template = getattr(processor, "chat_template", None) or LLAVA_V1_CHAT_TEMPLATE
    log.info("loaded %s%s on %s (%s) in %.1f s", model_path.name,
             f" + adapter {Path(adapter_path).name}" if adapter_path else "", dev, dtype,
             time.monotonic() - started)
    return LoadedModel(model, processor, dev, template)


def starts_with_bos(text: str, tokenizer: Any) -> bool:
    """Whether the chat template already wrote the BOS token (then the tokenizer must not add one)."""
    bos = getattr(tokenizer, "bos_token", None)
    return isinstance(bos, str) and bool(bos) and text.startswith(bos)


@register_planner
class TransformersPlanner(Planner):
    """Plans with a local multimodal checkpoint through ``transformers`` (+ ``peft``)."""

    name = "transformers"

    def __init__(self, cfg: PlannerConfig) -> None:
        super().__init__(cfg)
        if cfg.model_path is None:
            raise ValueError("planner.model_path is required for the transformers backend")
        self.model_path = Path(cfg.model_path)
        self.adapter_path = Path(cfg.adapter_path) if cfg.adapter_path else None
        self.device = cfg.device
        self.max_new_tokens = cfg.max_new_tokens
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()
        #: The last raw reply (for the job record when parsing fails upstream).
        self.last_raw: str = ""

    def loaded(self) -> LoadedModel:
        """The model, loaded on first call and kept."""
        with self._lock:
            if self._loaded is None:
                try:
                    self._loaded = load_llava(self.model_path, self.adapter_path, self.device)
                except (OSError, ValueError) as exc:  # missing/corrupt folder, unsupported config
                    raise PlannerUnavailable(f"cannot load {self.model_path}: {exc}") from exc
            return self._loaded

    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        raw = self.generate(ctx)
        return parse_reply(raw)

    def generate(self, ctx: PlanContext) -> str:
        """The model's raw reply to the conversation in ``ctx`` (greedy decoding)."""
        import torch

        lm = self.loaded()
        _, inputs = model_inputs(lm, ctx)
        tokenizer = lm.processor.tokenizer
        started = time.monotonic()
        with self._lock, torch.no_grad():
            output = lm.model.generate(
                **inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            )
        new_tokens = output[0, inputs["input_ids"].shape[1]:]
        raw = str(tokenizer.decode(new_tokens, skip_special_tokens=True))
        log.debug("generated %d tokens in %.2f s", len(new_tokens), time.monotonic() - started)
        self.last_raw = raw
        return raw


def model_inputs(lm: LoadedModel, ctx: PlanContext) -> tuple[str, Any]:
    """The prompt text (chat template applied) and the model's input tensors for ``ctx``."""
    messages = to_hf_chat(context_messages(ctx, MODEL_TURN_FORM))
    prompt = str(lm.processor.apply_chat_template(
        messages, chat_template=lm.chat_template, add_generation_prompt=True, tokenize=False
    ))
    images = [_pil(ctx.image)] if ctx.image is not None else None
    inputs = lm.processor(
        text=prompt, images=images, return_tensors="pt",
        add_special_tokens=not starts_with_bos(prompt, lm.processor.tokenizer),
    ).to(lm.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(lm.model.dtype)
    return prompt, inputs


def _pil(image: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(image, "RGB")
