"""LoRA instruction tuning of a LLaVA-family checkpoint on MMedAgent conversations.

``mmed-node agent train`` reproduces MMedAgent's recipe (LoRA r 128, alpha 256, lr 2e-4, projector
lr 2e-5, cosine schedule, 3% warmup, bf16, max length 2048, gradient checkpointing) with
``transformers`` + ``peft`` on any LLaVA-family checkpoint folder, in a plain torch loop.

Data: LLaVA JSON lines (``agent make-data`` writes them); image paths are relative to the data
file's folder. Each record is rendered with the checkpoint's chat template (LLaVA v1 when it has
none) exactly as the ``transformers`` planner renders a live conversation (same system prompt,
same flattened turn form), and only the assistant turns are learned: every other token's label is
``-100``. The assistant spans are found by rendering the conversation one message at a time and
taking each template's difference, so any prefix-stable chat template works.

LoRA goes on the language model's linear layers; the projector is trained in full at its own
learning rate and saved with the adapter (peft ``modules_to_save``), so the adapter folder alone
restores everything training changed. Checkpoints (``OUT/checkpoint-STEP``: adapter + optimizer +
scheduler + step) are written atomically every ``save_steps``; ``resume`` continues from the latest.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from agent.planners.base import ToolSpec
from agent.planners.hf import MODEL_TURN_FORM, load_llava, starts_with_bos
from agent.prompting import history_messages, to_hf_chat
from agent.protocol import Conversation
from agent.records import load_record_image, read_records

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
PROJECTOR_MODULE = "multi_modal_projector"
#: Modules never given LoRA: the vision tower, the projector (trained in full) and the LM head.
LORA_EXCLUDED = ("vision_tower", PROJECTOR_MODULE, "lm_head")
CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "training_state.pt"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainSettings:
    """Everything one training run needs; defaults are MMedAgent's recipe."""

    data: Path
    model: Path
    out: Path
    epochs: float = 30.0
    lr: float = 2e-4
    projector_lr: float = 2e-5
    lora_r: int = 128
    lora_alpha: int = 256
    lora_dropout: float = 0.05
    max_length: int = 2048
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int | None = None
    save_steps: int = 500
    save_total_limit: int = 2
    log_steps: int = 10
    resume: bool = False
    gradient_checkpointing: bool = True
    device: str | None = None
    seed: int = 42
    #: Tools listed in the system prompt; None: every tool class the registry knows.
    tools: list[ToolSpec] | None = field(default=None, repr=False)


@dataclass
class Example:
    """One tokenised conversation: ids, labels (``-100`` outside assistant turns), image tensors."""

    input_ids: list[int]
    labels: list[int]
    image_inputs: dict[str, Any]

    @property
    def n_target(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)


@dataclass
class TrainResult:
    steps: int
    epochs_done: float
    final_loss: float
    seconds: float
    examples: int
    out: Path


# ---------------------------------------------------------------------------------------- data


def data_file(path: Path) -> Path:
    """``path`` itself, or ``path/train.jsonl`` for a make-data folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "train.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"training data {path} not found")
    return path


def read_conversations(path: Path) -> list[Conversation]:
    """The records of a training file; a file without any is an error."""
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def registry_tool_specs() -> list[ToolSpec]:
    """Specs of every tool class the registry knows (availability does not matter for training)."""
    from agent.dataset import tool_specs_of
    from tools.registry import known_tool_classes

    return tool_specs_of(known_tool_classes())


def template_segments(messages: list[dict[str, Any]], render: Callable[..., str]) -> list[tuple[str, bool]]:
    """Split a rendered chat into ``(text, is_assistant)`` pieces by rendering message by message.

    ``render(messages, add_generation_prompt)`` is the chat template. The assistant piece of turn
    ``i`` is ``render(msgs[:i+1]) - render(msgs[:i], generation prompt)``: it holds exactly what the
    model must write (its text and end-of-turn token) and nothing of the prompt.
    """
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prefix = render(messages[:i], True)
        full = render(messages[: i + 1], False)
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError("chat template is not prefix-stable; cannot find the assistant turns")
        segments.append((prefix[len(done):], False))
        segments.append((full[len(prefix):], True))
        done = full
    return [(text, target) for text, target in segments if text]


def encode_conversation(conv: Conversation, image: Any, processor: Any, chat_template: str,
                        tools: list[ToolSpec], max_length: int) -> Example | None:
    """Tokenise one record; None when nothing of an assistant turn fits in ``max_length``.

    The record's ``metadata.text`` (series metadata, as ``make-data`` writes it) goes into the
    first user message, where the planner puts the live series' metadata.
    """
    metadata_text = str((conv.metadata or {}).get("text") or "")
    msgs = to_hf_chat(history_messages(conv.messages, tools, MODEL_TURN_FORM, metadata_text=metadata_text,
                                       with_image=image is not None))

    def render(part: list[dict[str, Any]], gen: bool) -> str:
        return str(processor.apply_chat_template(part, chat_template=chat_template,
                                                 add_generation_prompt=gen, tokenize=False))

    segments = template_segments(msgs, render)
    tokenizer = processor.tokenizer
    first_text = segments[0][0]
    enc = processor(text=first_text, images=[image] if image is not None else None, return_tensors="pt",
                    add_special_tokens=not starts_with_bos(first_text, tokenizer))
    ids: list[int] = enc["input_ids"][0].tolist()
    labels = [IGNORE_INDEX] * len(ids)
    image_inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
    for text, target in segments[1:]:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids.extend(piece)
        labels.extend(piece if target else [IGNORE_INDEX] * len(piece))
    if len(ids) > max_length:
        image_id = getattr(processor, "image_token_id", None)
        if image_id is not None and image_id in ids[max_length:]:
            return None  # cutting image tokens would break the model's image/token alignment
        ids, labels = ids[:max_length], labels[:max_length]
    example = Example(ids, labels, image_inputs)
    return example if example.n_target else None


def record_image(image_path: Path) -> Any:
    """The record's image as the planner would see it (:func:`agent.records.load_record_image`),
    as the PIL image the processor takes."""
    from PIL import Image

    return Image.fromarray(load_record_image(image_path).rgb, "RGB")


def load_examples(path: Path, processor: Any, chat_template: str, tools: list[ToolSpec],
                  max_length: int) -> list[Example]:
    examples: list[Example] = []
    skipped = 0
    for i, conv in enumerate(read_conversations(path)):
        image = None
        if conv.image is not None:
            image_path = path.parent / conv.image
            if not image_path.exists():
                raise FileNotFoundError(f"{path}: record {conv.id or i}: image {image_path} not found")
            image = record_image(image_path)
        example = encode_conversation(conv, image, processor, chat_template, tools, max_length)
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    if skipped:
        log.warning("%d record(s) skipped: no assistant token fits in max_length", skipped)
    if not examples:
        raise ValueError(f"{path}: no usable training examples (max_length too small?)")
    return examples


def collate(batch: list[Example], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; image tensors of the examples that have one are concatenated in order."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    out: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    keys = {k for e in batch for k in e.image_inputs}
    for key in keys:
        parts = [e.image_inputs[key] for e in batch if key in e.image_inputs]
        out[key] = torch.cat(parts, dim=0)
    return out


def batches(examples: list[Example], batch_size: int, epoch: int, seed: int) -> Iterator[list[Example]]:
    """The epoch's batches in a deterministic order (so a resumed run sees the same order)."""
    order = list(range(len(examples)))
    random.Random(seed + epoch).shuffle(order)
    for start in range(0, len(order), batch_size):
        yield [examples[i] for i in order[start:start + batch_size]]


# --------------------------------------------------------------------------------------- model


def lora_targets(model: Any) -> list[str]:
    """Full names of the language model's linear layers (LoRA goes there, as in LLaVA's trainer)."""
    import torch

    return sorted(
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(part in name for part in LORA_EXCLUDED)
    )


def attach_lora(model: Any, s: TrainSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=s.lora_r, lora_alpha=s.lora_alpha, lora_dropout=s.lora_dropout, bias="none",
        target_modules=lora_targets(model), modules_to_save=[PROJECTOR_MODULE], task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)


def param_groups(model: Any, s: TrainSettings) -> list[dict[str, Any]]:
    lora: list[Any] = []
    projector: list[Any] = []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (projector if PROJECTOR_MODULE in name else lora).append(param)
    if not lora:
        raise ValueError("no LoRA parameters to train")
    groups = [{"params": lora, "lr": s.lr, "weight_decay": s.weight_decay}]
    if projector:
        groups.append({"params": projector, "lr": s.projector_lr, "weight_decay": 0.0})
    return groups


# ------------------------------------------------------------------------------ checkpoints


def latest_checkpoint(out: Path) -> Path | None:
    found = [p for p in out.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]), default=None)


def save_checkpoint(model: Any, optimizer: Any, scheduler: Any, step: int, s: TrainSettings) -> Path:
    """Write ``checkpoint-STEP`` through a temporary folder and a rename (never half-written)."""
    import torch

    final = s.out / f"{CHECKPOINT_PREFIX}{step}"
    tmp = s.out / f".tmp-{CHECKPOINT_PREFIX}{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    state = {"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "python_rng": random.getstate(), "torch_rng": torch.get_rng_state()}
    torch.save(state, tmp / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    old = sorted((p for p in s.out.glob(f"{CHECKPOINT_PREFIX}*") if p != final),
                 key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))
    for stale in old[: max(0, len(old) - (s.save_total_limit - 1))]:
        shutil.rmtree(stale)
    return final


def restore_checkpoint(model: Any, optimizer: Any, scheduler: Any, ckpt: Path) -> int:
    """Load adapter weights, optimizer and scheduler from ``ckpt``; returns the step reached."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
    state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["python_rng"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


# ------------------------------------------------------------------------------------- loop


def train(s: TrainSettings, progress: Callable[[dict[str, Any]], None] | None = None) -> TrainResult:
    """Run (or resume) LoRA instruction tuning; returns the run's summary. The adapter ends in ``s.out``."""
    import torch
    from transformers import get_cosine_schedule_with_warmup

    started = time.monotonic()
    s.out.mkdir(parents=True, exist_ok=True)
    random.seed(s.seed)
    torch.manual_seed(s.seed)
    lm = load_llava(s.model, None, s.device, trainable=True)
    tools = s.tools if s.tools is not None else registry_tool_specs()
    path = data_file(s.data)
    examples = load_examples(path, lm.processor, lm.chat_template, tools, s.max_length)
    model = lm.model
    model.config.use_cache = False
    if s.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = attach_lora(model, s)
    for param in model.parameters():  # fp32 master copies of what trains; the frozen base stays bf16
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    model.train()
    # bf16 on CUDA as mixed precision: matmuls in bf16, updates to fp32 weights (a 2e-5 step
    # applied to a bf16 weight would mostly round away).
    def amp() -> Any:
        if lm.device.startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    optimizer = torch.optim.AdamW(param_groups(model, s))
    per_epoch = math.ceil(math.ceil(len(examples) / s.batch_size) / s.grad_accum)
    total = s.max_steps or max(1, math.ceil(per_epoch * s.epochs))
    scheduler = get_cosine_schedule_with_warmup(optimizer, math.ceil(s.warmup_ratio * total), total)
    step = 0
    if s.resume:
        ckpt = latest_checkpoint(s.out)
        if ckpt is not None:
            step = restore_checkpoint(model, optimizer, scheduler, ckpt)
            log.info("resumed from %s at step %d", ckpt, step)
    pad_id = lm.processor.tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else lm.processor.tokenizer.eos_token_id
    loss_value = float("nan")
    window: list[float] = []
    last_log = (step, time.monotonic())

    def optimizer_step() -> None:
        nonlocal step, loss_value, last_log
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = sum(window) / len(window)
        window.clear()
        if step % s.log_steps == 0 or step == total:
            now = time.monotonic()
            record = {"step": step, "epoch": round(step / per_epoch, 3), "loss": round(loss_value, 5),
                      "lr": scheduler.get_last_lr()[0],
                      "steps_per_s": round((step - last_log[0]) / max(now - last_log[1], 1e-9), 3)}
            last_log = (step, now)
            with (s.out / LOG_FILE).open("a", encoding="utf-8") as log_file:
                log_file.write(json.dumps(record) + "\n")
            if progress is not None:
                progress(record)
        if step % s.save_steps == 0 and step < total:
            save_checkpoint(model, optimizer, scheduler, step, s)

    epoch = step // per_epoch
    while step < total:
        skip = (step - epoch * per_epoch) * s.grad_accum  # batches of this epoch already trained
        micro = 0
        for i, batch in enumerate(batches(examples, s.batch_size, epoch, s.seed)):
            if i < skip:
                continue
            # pixel_values stay fp32: the CPU model is fp32, and autocast casts them on CUDA.
            inputs = {k: v.to(lm.device) for k, v in collate(batch, pad_id).items()}
            with amp():
                loss = model(**inputs).loss
            (loss / s.grad_accum).backward()
            window.append(float(loss.detach()))
            micro += 1
            if micro % s.grad_accum == 0:
                optimizer_step()
                if step >= total:
                    break
        if window and step < total:  # the epoch's last, partial accumulation
            optimizer_step()
        epoch += 1
    model.save_pretrained(s.out)
    summary = TrainResult(step, round(step / per_epoch, 3), loss_value, time.monotonic() - started, len(examples), s.out)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items() if k != "tools"}
    (s.out / "train_summary.json").write_text(json.dumps(
        {**settings, "steps": step, "final_loss": loss_value, "examples": len(examples),
         "seconds": round(summary.seconds, 2)}, indent=2), encoding="utf-8")
    return summary


# -------------------------------------------------------------------------------------- CLI


def add_train_parser(subparsers: Any) -> None:
    """Add ``train`` to the ``agent`` command group (``mmed-node agent train``)."""
    d = TrainSettings(data=Path(), model=Path(), out=Path())
    p = subparsers.add_parser(
        "train", help="LoRA instruction tuning of a LLaVA-family checkpoint on MMedAgent conversations",
        description="LoRA instruction tuning (MMedAgent recipe by default). Progress is printed and "
                    "appended to OUT/train_log.jsonl; the adapter is saved in OUT.",
    )
    p.add_argument("--data", type=Path, required=True, help="train.jsonl, or a make-data folder holding one")
    p.add_argument("--model", type=Path, required=True, help="local LLaVA-family checkpoint folder")
    p.add_argument("--out", type=Path, required=True, help="output folder (adapter, checkpoints, log)")
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--lr", type=float, default=d.lr, help="LoRA learning rate")
    p.add_argument("--projector-lr", type=float, default=d.projector_lr)
    p.add_argument("--lora-r", type=int, default=d.lora_r)
    p.add_argument("--lora-alpha", type=int, default=d.lora_alpha)
    p.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--save-steps", type=int, default=d.save_steps)
    p.add_argument("--log-steps", type=int, default=d.log_steps)
    p.add_argument("--resume", action="store_true", help="continue from the latest OUT/checkpoint-*")
    p.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: CUDA when present)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.set_defaults(func=run_train_command)


def run_train_command(args: Any) -> int:
    settings = TrainSettings(
        data=args.data, model=args.model, out=args.out, epochs=args.epochs, lr=args.lr,
        projector_lr=args.projector_lr, lora_r=args.lora_r, lora_alpha=args.lora_alpha,
        lora_dropout=args.lora_dropout, max_length=args.max_length, warmup_ratio=args.warmup_ratio,
        batch_size=args.batch_size, grad_accum=args.grad_accum, max_steps=args.max_steps,
        save_steps=args.save_steps, log_steps=args.log_steps, resume=args.resume,
        gradient_checkpointing=args.gradient_checkpointing, device=args.device, seed=args.seed,
    )

    def show(record: dict[str, Any]) -> None:
        print(f"step {record['step']} epoch {record['epoch']:.2f} loss {record['loss']:.4f} "
              f"lr {record['lr']:.3g} {record['steps_per_s']:.2f} steps/s", flush=True)

    result = train(settings, progress=show)
    print(f"done: {result.steps} steps, {result.epochs_done:.2f} epochs, {result.examples} examples, "
          f"final loss {result.final_loss:.4f}, {result.seconds:.1f} s; adapter in {result.out}", flush=True)
    return 0
