"""LoRA instruction tuning on a tiny random-weight LLaVA, through the real loading and training code:
label masking, the CLI (progress, checkpoints, adapter), exact resume, and memorising one record
until the reloaded planner emits the right tool call."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agent.planners.base import build_planner
from agent.planners.hf import load_llava
from agent.prompting import render_turn, system_prompt
from agent.protocol import Conversation
from agent.training import (
    IGNORE_INDEX,
    TrainSettings,
    load_examples,
    registry_tool_specs,
    train,
)
from config.schema import PlannerConfig
from tests.agent_hf_helpers import (
    TOOLS,
    grounding_record,
    lung_record,
    plan_context,
    write_records,
)
from tests.llava_tiny import build_tiny_llava

torch = pytest.importorskip("torch")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    records = [grounding_record("a.png"), lung_record("b.png"),
               grounding_record("b.png", "Where is the nodule?", "nodule", (0.5, 0.5, 0.7, 0.6))]
    write_records(folder, records)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    turns = [render_turn(t, "text") for line in lines for t in Conversation.from_llava_json(line).turns()]
    corpus = [system_prompt(TOOLS, "text"), system_prompt(registry_tool_specs(), "text"), *lines, *turns]
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), corpus=corpus)


def _small(data: Path, model: Path, out: Path, **kw: object) -> TrainSettings:
    base: dict[str, object] = {"data": data, "model": model, "out": out, "lora_r": 8, "lora_alpha": 16,
                               "batch_size": 2, "max_length": 2048, "log_steps": 1, "tools": TOOLS}
    base.update(kw)
    return TrainSettings(**base)  # type: ignore[arg-type]


def test_labels_are_exactly_the_assistant_turns(data: Path, checkpoint: Path) -> None:
    lm = load_llava(checkpoint)
    [first, *_] = load_examples(data / "train.jsonl", lm.processor, lm.chat_template, TOOLS, 2048)
    tok = lm.processor.tokenizer
    spans: list[list[int]] = []
    for i, label in enumerate(first.labels):
        if label == IGNORE_INDEX:
            continue
        assert label == first.input_ids[i]
        if spans and spans[-1][-1] == i - 1:
            spans[-1].append(i)
        else:
            spans.append([i])
    texts = [tok.decode([first.input_ids[i] for i in span]) for span in spans]
    turns = grounding_record("a.png").turns()
    assert texts == [f" {render_turn(t, 'text')}</s>" for t in turns]
    prompt_ids = [t for t, lab in zip(first.input_ids, first.labels) if lab == IGNORE_INDEX]
    assert prompt_ids.count(lm.processor.image_token_id) == 16
    assert "grounding dino output: {'boxes'" in tok.decode(prompt_ids)
    assert tuple(first.image_inputs["pixel_values"].shape) == (1, 3, 32, 32)
    # Too short for any assistant token after the image: the record is dropped, not cut mid-image.
    with pytest.raises(ValueError, match="no usable training examples"):
        load_examples(data / "train.jsonl", lm.processor, lm.chat_template, TOOLS, 10)


def test_cli_trains_with_progress_checkpoints_and_adapter(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "agent", "train", "--data", str(data), "--model", str(checkpoint),
         "--out", str(out), "--max-steps", "3", "--batch-size", "2", "--lora-r", "8", "--lora-alpha", "16",
         "--save-steps", "2", "--log-steps", "1", "--max-length", "2048"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["1", "2", "3"]
    assert "loss" in steps[0] and "steps/s" in steps[0] and "done: 3 steps" in proc.stdout
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert (out / "checkpoint-2" / "training_state.pt").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16
    assert "multi_modal_projector" in config["modules_to_save"]
    assert not any("vision_tower" in t or "lm_head" in t for t in config["target_modules"])
    assert any(t.endswith("self_attn.q_proj") for t in config["target_modules"])
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 3 and summary["lr"] == 2e-4 and summary["projector_lr"] == 2e-5


def test_resume_reproduces_the_uninterrupted_run(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    straight = tmp_path / "straight"
    train(_small(data, checkpoint, straight, max_steps=3, save_steps=2))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(straight / "checkpoint-2", resumed / "checkpoint-2")  # as if killed after step 2
    logged: list[dict[str, object]] = []
    result = train(_small(data, checkpoint, resumed, max_steps=3, save_steps=2, resume=True), progress=logged.append)
    assert result.steps == 3 and [r["step"] for r in logged] == [3]
    a = load_file(str(straight / "adapter_model.safetensors"))
    b = load_file(str(resumed / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and any("lora_B" in k for k in a)
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-6), key
    two = load_file(str(straight / "checkpoint-2" / "adapter_model.safetensors"))
    assert any(not torch.equal(two[k], a[k]) for k in a)  # step 3 really changed the weights


@pytest.fixture(scope="module")
def memorised(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[float]]:
    """An adapter overfitted on one grounding record, with the tools every evaluation lists."""
    folder = tmp_path_factory.mktemp("one")
    write_records(folder, [grounding_record("a.png")])
    out = tmp_path_factory.mktemp("memorised")
    logged: list[dict[str, float]] = []
    train(_small(folder, checkpoint, out, max_steps=MEMORISE_STEPS, batch_size=1, lr=3e-2, projector_lr=1e-3,
                 lora_r=16, lora_alpha=32, warmup_ratio=0.05, gradient_checkpointing=False, save_steps=1000,
                 tools=None),
          progress=logged.append)  # type: ignore[arg-type]
    return folder, out, [r["loss"] for r in logged]


MEMORISE_STEPS = 80


def test_memorising_one_record_lowers_the_loss(memorised: tuple[Path, Path, list[float]]) -> None:
    losses = memorised[2]
    assert len(losses) == MEMORISE_STEPS
    assert losses[-1] < 0.25 * losses[0], losses[::10]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_memorised_adapter_plans_the_records_tool_call(
    memorised: tuple[Path, Path, list[float]], checkpoint: Path
) -> None:
    import numpy as np
    from PIL import Image

    folder, adapter, _ = memorised
    image = np.asarray(Image.open(folder / "a.png").convert("RGB"))
    cfg = PlannerConfig(backend="transformers", model_path=checkpoint, adapter_path=adapter, max_new_tokens=120)
    planner = build_planner("transformers", cfg)
    ctx = plan_context("Can you locate the tumor?", image=image, metadata="", tools=registry_tool_specs())
    turn = planner.next_turn(ctx)
    expected = grounding_record("a.png").turns()[0]
    assert turn.api_names == ["grounding dino"]
    assert turn.actions == expected.actions


def test_agent_eval_cli_scores_the_memorised_adapter(
    memorised: tuple[Path, Path, list[float]], checkpoint: Path, tmp_path: Path
) -> None:
    folder, adapter, _ = memorised
    config = tmp_path / "node.yaml"
    config.write_text(
        "planner:\n  backend: transformers\n"
        f"  model_path: {checkpoint}\n  adapter_path: {adapter}\n  max_new_tokens: 120\n",
        encoding="utf-8",
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "agent", "eval", "--data", str(folder / "train.jsonl"),
         "--planner", "transformers", "--config", str(config), "--json"],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"tool_accuracy": 1.0, "param_accuracy": 1.0, "parse_failure_rate": 0.0, "n": 1}


def test_make_data_records_train_and_evaluate(tmp_path: Path) -> None:
    """The whole chain on H4's generated data: make-data -> train 2 steps -> reload -> evaluate."""
    from agent import dataset
    from agent.evaluate import evaluate
    from tools.registry import ToolRegistry, known_tool_classes

    made = dataset.make_data(tmp_path / "data", known_tool_classes(), ToolRegistry({}), seed=0)
    assert made.train > 0 and made.eval > 0
    train_file = tmp_path / "data" / "train.jsonl"
    specs = registry_tool_specs()
    model = build_tiny_llava(tmp_path / "tiny", corpus=[system_prompt(specs, "text"), train_file.read_text()])
    out = tmp_path / "adapter"
    logged: list[dict[str, object]] = []
    result = train(_small(tmp_path / "data", model, out, max_steps=2, tools=None, max_length=2048),
                   progress=logged.append)
    assert result.steps == 2 and result.examples > 0.9 * made.train
    assert all(np.isfinite(float(r["loss"])) for r in logged)  # type: ignore[arg-type]
    eval_lines = (tmp_path / "data" / "eval.jsonl").read_text().splitlines()[:3]
    subset = tmp_path / "data" / "eval3.jsonl"
    subset.write_text("\n".join(eval_lines) + "\n")
    planner = build_planner("transformers", PlannerConfig(backend="transformers", model_path=model,
                                                         adapter_path=out, max_new_tokens=12))
    scores = evaluate(subset, planner, specs)
    assert scores.n == 3
    assert 0.0 <= scores.tool_accuracy <= 1.0 and 0.0 <= scores.parse_failure_rate <= 1.0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_trains_mixed_bf16_and_plans_in_bf16(data: Path, checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "cuda"
    logged: list[dict[str, float]] = []
    train(_small(data, checkpoint, out, max_steps=3, device="cuda"), progress=logged.append)  # type: ignore[arg-type]
    assert len(logged) == 3 and all(np.isfinite(r["loss"]) for r in logged)
    planner = build_planner("transformers", PlannerConfig(backend="transformers", model_path=checkpoint,
                                                         adapter_path=out, max_new_tokens=8))
    lm = planner.loaded()  # type: ignore[attr-defined]
    assert lm.device == "cuda" and lm.model.dtype == torch.bfloat16
    planner.generate(plan_context(tools=TOOLS))  # type: ignore[attr-defined]
