"""The agent loop with real tools on a CT phantom: plan, run (in parallel), feed back, answer,
refusals, corrective retry and fallback to the rules planner."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import numpy as np
import pytest

from agent.loop import run_agent
from agent.planners.base import (
    PlanContext,
    Planner,
    PlannerOutputError,
    PlannerUnavailable,
)
from agent.planners.rules import RulesPlanner
from agent.protocol import (
    Action,
    AssistantTurn,
    Conversation,
    parse_tool_outputs_message,
    to_plain,
)
from image_model.volume import Volume
from tests.agent_helpers import (
    BarrierKnowledgeTool,
    BarrierTool,
    ModalityTool,
    lung_tool_class,
    phantom_volume,
    real_tool_classes,
    registry_of,
)

INSTRUCTION = "Segment the lungs and measure their volumes."


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> tuple[Volume, object]:
    return phantom_volume(tmp_path_factory.mktemp("phantom"))


def _numbers_ml(text: str) -> list[float]:
    return [float(m) for m in re.findall(r"(-?\d+(?:\.\d+)?) mL", text)]


def test_rules_agent_segments_the_phantoms_lungs(phantom: tuple[Volume, object]) -> None:
    volume, truth = phantom
    registry = registry_of(lung_tool_class(), ModalityTool)
    result = run_agent(INSTRUCTION, volume, registry, RulesPlanner(), max_rounds=3)
    assert result.fallback_reason is None and result.errors == [] and result.planner == "rules"
    roles = [m.role for m in result.conversation.messages]
    assert roles == ["human", "gpt", "human", "gpt"]
    plan = result.conversation.messages[1].turn
    assert plan is not None and plan.api_names == ["ct lung segmentation"]
    outputs, question = parse_tool_outputs_message(result.conversation.messages[2].value)
    assert question == INSTRUCTION and outputs[0][0] == "ct lung segmentation"
    # The answer states the measured volumes, and they match the phantom's analytic lungs.
    total_truth = truth.left_lung_ml + truth.right_lung_ml  # type: ignore[attr-defined]
    stated = _numbers_ml(result.answer)
    assert stated, result.answer
    assert any(abs(v - total_truth) / total_truth < 0.05 for v in stated) or (
        len(stated) >= 2 and abs(sum(stated[:2]) - total_truth) / total_truth < 0.05
    ), (stated, total_truth)
    assert len(result.outputs) == 1 and result.outputs[0].segments
    # The record round-trips as a LLaVA JSON line.
    assert Conversation.from_llava_json(result.conversation.to_jsonl_line()) == result.conversation


def test_several_tools_in_one_turn_run_in_parallel(phantom: tuple[Volume, object]) -> None:
    volume, _ = phantom
    registry = registry_of(BarrierTool, BarrierKnowledgeTool, ModalityTool)
    BarrierTool.barrier = threading.Barrier(2)  # each waits for the other: only parallel runs pass
    instruction = "Find the heart, and what are the symptoms of heart failure?"
    try:
        result = run_agent(instruction, volume, registry, RulesPlanner())
    finally:
        BarrierTool.barrier = None
    plan = result.conversation.messages[1].turn
    assert plan is not None and plan.api_names == ["grounding dino", "retrieval"]
    assert result.errors == []
    outputs, _ = parse_tool_outputs_message(result.conversation.messages[2].value)
    assert [name for name, _ in outputs] == ["grounding dino", "retrieval"]
    assert outputs[1][1]["answer"] == f"{len(instruction.split())} words asked"
    assert "grounding dino result: found 1 region(s): heart" in result.answer


def test_a_refusal_is_recorded_and_told_to_the_planner(tmp_path: Path) -> None:
    volume, _ = phantom_volume(tmp_path, slices=1)
    registry = registry_of(lung_tool_class())
    result = run_agent("Segment the lungs.", volume, registry, _Scripted([_lung_call(), None]))
    assert len(result.errors) == 1 and result.errors[0].startswith("ct lung segmentation: refused:")
    outputs, _ = parse_tool_outputs_message(result.conversation.messages[2].value)
    assert "refused" in outputs[0][1]
    assert "ct lung segmentation could not run:" in result.answer
    assert result.outputs == []


class _Scripted(Planner):
    """A planner that says what the test scripts: a turn, raw text (malformed), or None (aggregate)."""

    name = "scripted"

    def __init__(self, script: list[AssistantTurn | str | Exception | None]) -> None:
        super().__init__()
        self.script = list(script)
        self.seen: list[PlanContext] = []

    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        self.seen.append(ctx)
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, str):
            raise PlannerOutputError(step, "no \"actions\" marker in the output")
        if step is None:
            return RulesPlanner().next_turn(ctx)
        return step


def _lung_call() -> AssistantTurn:
    return AssistantTurn("Lungs.", [Action("ct lung segmentation", {"image": "<imagepath>"})], "Please wait.")


def test_malformed_output_gets_one_corrective_retry(phantom: tuple[Volume, object]) -> None:
    volume, _ = phantom
    planner = _Scripted(["garbage ###", _lung_call(), None])
    result = run_agent(INSTRUCTION, volume, registry_of(lung_tool_class()), planner)
    assert result.fallback_reason is None and result.planner == "scripted"
    retry_ctx = planner.seen[1]
    assert retry_ctx.history[-2].role == "gpt" and retry_ctx.history[-2].value == "garbage ###"
    assert retry_ctx.history[-1].value.startswith("Your last reply could not be used: no \"actions\" marker")
    assert retry_ctx.image is not None and retry_ctx.image.dtype == np.uint8 and retry_ctx.image.shape[2] == 3
    assert "mL" in result.answer
    assert any("garbage ###" in e for e in result.errors)


def test_twice_malformed_falls_back_to_rules_and_records_why(phantom: tuple[Volume, object]) -> None:
    volume, _ = phantom
    invalid_params = AssistantTurn("x", [Action("ct lung segmentation", {"image": "<imagepath>", "lungs": 2})], "v")
    planner = _Scripted(["garbage", invalid_params])
    result = run_agent(INSTRUCTION, volume, registry_of(lung_tool_class()), planner)
    assert result.planner == "rules"
    assert result.fallback_reason is not None
    assert "after one corrective retry" in result.fallback_reason and "invalid API_params" in result.fallback_reason
    # The failed exchange is not in the conversation; the rules planner's turns are.
    plan = result.conversation.messages[1].turn
    assert plan is not None and plan.api_names == ["ct lung segmentation"]
    assert all("garbage" not in m.value for m in result.conversation.messages)
    assert "mL" in result.answer


def test_unavailable_backend_falls_back_at_once(phantom: tuple[Volume, object]) -> None:
    volume, _ = phantom
    planner = _Scripted([PlannerUnavailable("connection refused by 127.0.0.1:9")])
    result = run_agent(INSTRUCTION, volume, registry_of(lung_tool_class()), planner)
    assert result.planner == "rules" and "connection refused" in (result.fallback_reason or "")
    assert len(planner.seen) == 1


def test_rounds_are_bounded(phantom: tuple[Volume, object]) -> None:
    volume, _ = phantom
    planner = _Scripted([_lung_call()] * 5)
    result = run_agent(INSTRUCTION, volume, registry_of(lung_tool_class()), planner, max_rounds=2)
    gpt_turns = result.conversation.turns()
    assert len(gpt_turns) == 3 and gpt_turns[-1].actions == []
    assert any("round limit (2)" in e for e in result.errors)
    assert len(result.outputs) == 2 and "mL" in result.answer


def test_route_tool_restriction_is_enforced(phantom: tuple[Volume, object]) -> None:
    volume, _ = phantom
    registry = registry_of(lung_tool_class(), ModalityTool)
    result = run_agent(
        "What modality is this image?", volume, registry, RulesPlanner(), allowed_tools=["ct lung segmentation"]
    )
    assert result.conversation.turns()[0].actions == []  # the classifier is not offered on this route
    result = run_agent("What modality is this image?", volume, registry, RulesPlanner())
    assert result.conversation.turns()[0].api_names == ["metadata classification"]
    assert "CT volume" in result.answer


def test_a_report_is_written_from_the_other_tools_results(phantom: tuple[Volume, object]) -> None:
    volume, _ = phantom
    classes = real_tool_classes()
    registry = registry_of(lung_tool_class(), classes["report generation"])
    assert "report generation" in registry.available_names()
    result = run_agent("Segment the lungs and write a report.", volume, registry, RulesPlanner())
    turns = result.conversation.turns()
    assert [t.api_names for t in turns] == [["ct lung segmentation"], ["report generation"], []]
    findings = turns[1].actions[0].api_params["findings"]
    lung_summary = result.outputs[0].summary
    assert findings == {"ct lung segmentation": to_plain(lung_summary)}
    report = result.outputs[1].summary["report"]
    assert report and report.split()[0] in result.answer  # the answer carries the report
    assert f"{lung_summary['total_lung_ml']:.1f} mL" in result.answer
