"""The ``transformers`` planner on a tiny random-weight LLaVA checkpoint, loaded through the real code:
prompt shape, garbage output -> PlannerOutputError -> the loop's recorded fallback, load failures."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.loop import run_agent
from agent.planners.base import PlannerOutputError, PlannerUnavailable, build_planner
from agent.planners.hf import TransformersPlanner, model_inputs
from agent.prompting import V1_SYSTEM, system_prompt
from config.schema import PlannerConfig
from tests.agent_helpers import AirInBodyTool, phantom_volume, registry_of
from tests.agent_hf_helpers import TOOLS, plan_context
from tests.llava_tiny import build_tiny_llava

torch = pytest.importorskip("torch")

QUESTION = "Can you locate the tumor?"


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # two shared cores: oversubscribed threads only slow the tiny model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava(tmp_path_factory.mktemp("tiny-llava"), corpus=[system_prompt(TOOLS, "text")])


def _cfg(path: Path, **kw: object) -> PlannerConfig:
    return PlannerConfig(**{"backend": "transformers", "model_path": path, "max_new_tokens": 16, **kw})


def test_prompt_is_llava_v1_with_image_tokens_metadata_and_tools(checkpoint: Path) -> None:
    planner = build_planner("transformers", _cfg(checkpoint))
    assert isinstance(planner, TransformersPlanner)
    lm = planner.loaded()
    assert planner.loaded() is lm  # loaded once, kept on the instance
    ctx = plan_context(QUESTION, metadata="Modality: CT; Body part: CHEST")
    prompt, inputs = model_inputs(lm, ctx)
    assert prompt.startswith("<s>" + V1_SYSTEM)
    assert "- grounding dino: Finds boxes" in prompt and "prompts (list of string, required)" in prompt
    assert "USER: <image>\nImage information: Modality: CT; Body part: CHEST\n\nCan you locate the tumor?" in prompt
    assert prompt.endswith(" ASSISTANT:")
    ids = inputs["input_ids"][0].tolist()
    image_id = lm.processor.image_token_id
    # 32 px image, 8 px patches: 16 patch embeddings stand in for the one <image> of the prompt.
    assert ids.count(image_id) == 16
    assert ids[0] == lm.processor.tokenizer.bos_token_id and ids[1] != lm.processor.tokenizer.bos_token_id
    assert tuple(inputs["pixel_values"].shape) == (1, 3, 32, 32)
    assert lm.model.dtype == torch.float32 and not lm.model.training


def test_random_model_output_is_a_planner_output_error(checkpoint: Path) -> None:
    planner = build_planner("transformers", _cfg(checkpoint))
    with pytest.raises(PlannerOutputError) as err:
        planner.next_turn(plan_context(QUESTION))
    assert err.value.raw_text and err.value.raw_text == planner.last_raw  # type: ignore[attr-defined]
    assert "neither a JSON object" in err.value.reason


def test_garbage_ends_in_the_recorded_rules_fallback(checkpoint: Path, tmp_path: Path) -> None:
    volume, _ = phantom_volume(tmp_path, slices=8, rows=32, cols=32)
    planner = build_planner("transformers", _cfg(checkpoint))
    result = run_agent("Segment the lungs and measure their volumes.", volume, registry_of(AirInBodyTool),
                       planner, max_rounds=2)
    assert result.planner == "rules"
    assert result.fallback_reason is not None and "transformers" in result.fallback_reason
    assert "corrective retry" in result.fallback_reason
    assert sum("output unusable" in e for e in result.errors) == 2  # first try + the corrective retry
    assert result.answer and result.outputs  # the rules planner ran the lung tool and answered


def test_missing_checkpoint_is_unavailable_and_falls_back(tmp_path: Path) -> None:
    planner = build_planner("transformers", _cfg(tmp_path / "absent"))
    with pytest.raises(PlannerUnavailable, match="config.json"):
        planner.next_turn(plan_context(QUESTION))
    volume, _ = phantom_volume(tmp_path / "ct", slices=8, rows=32, cols=32)
    result = run_agent("Segment the lungs.", volume, registry_of(AirInBodyTool), planner, max_rounds=2)
    assert result.planner == "rules" and "unavailable" in (result.fallback_reason or "")


def test_checkpoint_without_chat_template_uses_llava_v1(checkpoint: Path, tmp_path: Path) -> None:
    bare = Path(shutil.copytree(checkpoint, tmp_path / "bare"))
    (bare / "chat_template.jinja").unlink()
    for name in ("tokenizer_config.json", "processor_config.json"):
        import json

        data = json.loads((bare / name).read_text())
        data.pop("chat_template", None)
        (bare / name).write_text(json.dumps(data))
    planner = build_planner("transformers", _cfg(bare))
    lm = planner.loaded()
    assert not getattr(lm.processor, "chat_template", None)
    prompt, _ = model_inputs(lm, plan_context(QUESTION))
    assert prompt.startswith("<s>" + V1_SYSTEM) and prompt.endswith(f"{QUESTION} ASSISTANT:")


def test_missing_adapter_is_unavailable(checkpoint: Path, tmp_path: Path) -> None:
    planner = build_planner("transformers", _cfg(checkpoint, adapter_path=tmp_path))
    with pytest.raises(PlannerUnavailable, match="adapter_config.json"):
        planner.next_turn(plan_context(QUESTION))


def test_params_are_described_compactly() -> None:
    from agent.prompting import describe_params

    schema = {
        "type": "object", "required": ["prompts"], "anyOf": [{"required": ["boxes"]}, {"required": ["points"]}],
        "properties": {
            "prompts": {"type": "array", "items": {"type": "string"}},
            "box_threshold": {"type": "number", "minimum": 0, "maximum": 1},
            "mode": {"enum": ["fast", "full"]},
            "findings": {"type": ["object", "string"]},
        },
    }
    assert describe_params(schema) == (
        'prompts (list of string, required); box_threshold (number 0..1); findings (object|string); '
        'mode (one of "fast"|"full"); one of boxes | points is required'
    )
    assert describe_params({"type": "object"}) == "none"
