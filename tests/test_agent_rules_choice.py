"""The rules planner: which tools for which instruction and series, their params from the tools'
schemas (targets, sides, exclusions, coordinates, slices, findings labels), chained and deferred
rounds, direct answers, aggregation with explicit yes/no and counting answers."""
from __future__ import annotations

import jsonschema
import pytest

from agent.planners.base import PlanContext, UnknownPlanner, build_planner
from agent.planners.rules import RulesPlanner
from agent.protocol import (
    IMAGE_PLACEHOLDER,
    AssistantTurn,
    Message,
    first_human_message,
    tool_outputs_message,
)
from config.schema import PlannerConfig
from tests.agent_helpers import suite_specs

CT_VOL = ("CT", (40, 64, 64))
CT_2D = ("CT", (1, 64, 64))
MR_VOL = ("MR", (30, 64, 64))
MR_2D = ("MR", (1, 64, 64))
CR = ("CR", (1, 256, 200))

L = "ct lung segmentation"
G = "grounding dino"
GS = "grounding dino + MedSAM"
M = "MedSAM"
O = "organ segmentation 3d"
B = "BiomedClip"
R = "report generation"
K = "retrieval"
PLANNER = RulesPlanner()


def ctx_for(instruction: str, series: tuple[str, tuple[int, int, int]], tools: list[str] | None = None, body: str = "") -> PlanContext:
    modality, shape = series
    meta = {"Modality": modality}
    if body:
        meta["BodyPartExamined"] = body
    return PlanContext(
        instruction=instruction,
        metadata_text=f"Modality: {modality}\nBody part: {body or 'unknown'}",
        image=None,
        history=[Message.human(first_human_message(instruction))],
        tools=suite_specs(tools),
        modality=modality,
        volume_shape=shape,
        meta=meta,
    )


#: One or two instructions per rule of docs/agent-eval.md.
TABLE = [
    ("Segment the region in box [0.1, 0.2, 0.5, 0.6].", CR, [M]),
    ("Outline the liver inside x1=10 y1=10 x2=40 y2=50 on slice 3", CT_VOL, [M]),
    ("Segment the lungs and measure their volumes.", CT_VOL, [L]),
    ("Segment the left lung only.", CT_VOL, [L]),
    ("Please outline the liver.", CT_VOL, [O]),
    ("Segment every organ except the liver.", CT_VOL, [O]),
    ("Please outline the liver.", CT_2D, [GS]),
    ("Delineate the brain tumour for me.", MR_VOL, [GS]),
    ("Can you locate the tumor?", MR_2D, [G]),
    ("How many nodules are there?", CT_VOL, [G]),
    ("Does this patient have pneumonia?", CR, [B]),
    ("Is there a pleural effusion on the left?", CR, [G]),
    ("Is there a nodule?", CT_VOL, [G]),
    ("Is the spleen enlarged?", CT_VOL, [O]),
    ("Is the heart enlarged?", CR, [B]),
    ("What modality is this image?", CR, [B]),
    ("Write a radiology report for this chest X-ray.", CR, [R]),
    ("What are the symptoms of pneumonia?", CR, [K]),
    ("What is the slice thickness?", CT_VOL, []),
    ("Don't segment anything, just tell me the modality.", CT_VOL, [B]),
    ("Analyse this chest CT.", CT_VOL, [L]),
]


@pytest.mark.parametrize(("instruction", "series", "tools"), TABLE)
def test_tool_choice_table(instruction: str, series: tuple[str, tuple[int, int, int]], tools: list[str]) -> None:
    ctx = ctx_for(instruction, series)
    assert sorted(n for n, _ in PLANNER.plan(ctx).actions) == sorted(tools)
    turn = PLANNER.next_turn(ctx)
    schemas = {t.name: t.params_schema for t in ctx.tools}
    for action in turn.actions:
        jsonschema.validate(action.api_params, schemas[action.api_name])
        if "image" in schemas[action.api_name].get("properties", {}):
            assert action.api_params["image"] == IMAGE_PLACEHOLDER
    assert turn.value.endswith("Please wait.") if tools else turn.value


def _params(instruction: str, series: tuple[str, tuple[int, int, int]], tool: str, tools: list[str] | None = None) -> dict:
    turn = PLANNER.next_turn(ctx_for(instruction, series, tools))
    (params,) = [a.api_params for a in turn.actions if a.api_name == tool]
    return {k: v for k, v in params.items() if k != "image"}


def test_targets_sides_and_exclusions_reach_the_tools() -> None:
    assert _params("Segment the left lung only.", CT_VOL, L) == {"targets": ["left lung"]}
    assert _params("Volume of the right kidney please", CT_VOL, O) == {"targets": ["right kidney"]}
    assert _params("Segment the liver and spleen.", CT_VOL, O) == {"targets": ["liver", "spleen"]}
    assert _params("Segment all organs except the liver and the spleen.", CT_VOL, O) == {"exclude": ["liver", "spleen"]}
    assert _params("Segment the kidneys, but not the left one.", CT_VOL, O) == {"targets": ["right kidney"]}
    assert _params("Is there an effusion on the right?", CR, G) == {"prompts": ["pleural effusion"], "targets": ["right pleural effusion"]}


def test_coordinates_and_slices_reach_medsam() -> None:
    assert _params("Segment box [0.1, 0.2, 0.5, 0.6] on slice 5", CT_VOL, M) == {"boxes": [[0.1, 0.2, 0.5, 0.6]], "slices": [4]}
    assert _params("Outline the nodule at point (32, 16), instance 12", CT_VOL, M) == {
        "points": [[0.5, 0.25]], "point_labels": [1], "labels": ["nodule"], "instance_numbers": [12],
    }
    # Pixels are normalised with the image's columns (x) and rows (y).
    assert _params("mask from (20, 64) to (100, 128)", CR, M) == {"boxes": [[0.1, 0.25, 0.5, 0.5]]}


def test_unusable_coordinates_are_answered_with_the_reason() -> None:
    turn = PLANNER.next_turn(ctx_for("Segment the box [10, 10, 300, 20].", CR))
    assert turn.actions == [] and "outside the image (200 columns)" in turn.value and turn.unserved


def test_finding_questions_on_a_radiograph_use_the_findings_labels() -> None:
    assert _params("Does this patient have pneumonia or a pneumothorax?", CR, B) == {
        "labels": ["chest X-ray with pneumonia", "chest X-ray with pneumothorax", "normal chest X-ray"],
    }
    # Image type and a finding in one instruction: two classifier calls with their own labels.
    turn = PLANNER.next_turn(ctx_for("What modality is this, and is there cardiomegaly?", CR))
    assert sorted(str(a.api_params.get("labels")) for a in turn.actions) == [
        "None", "['chest X-ray with cardiomegaly', 'normal chest X-ray']"]


def test_without_the_fused_tool_grounding_boxes_go_to_medsam_next_round() -> None:
    tools = [G, M, R]
    instruction = "Outline the nodule and write a report."
    ctx = ctx_for(instruction, CT_VOL, tools)
    first = PLANNER.next_turn(ctx)
    assert first.api_names == [G] and first.actions[0].api_params["prompts"] == ["nodule"]
    found = {"boxes": [[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.31, 0.3]], "logits": [0.9, 0.8], "phrases": ["nodule", "nodule"],
             "slices": [7, 8]}
    ctx.history += [Message.gpt(first), Message.human(tool_outputs_message([(G, found)], instruction))]
    second = PLANNER.next_turn(ctx)
    assert second.api_names == [M]
    assert second.actions[0].api_params == {"image": IMAGE_PLACEHOLDER, "boxes": found["boxes"],
                                            "labels": ["nodule", "nodule"], "box_slices": [7, 8]}
    masks = {"segments": [{"label": "nodule", "pixels": 40, "volume_ml": 0.2}], "empty_prompts": 0}
    ctx.history += [Message.gpt(second), Message.human(tool_outputs_message([(M, masks)], instruction))]
    third = PLANNER.next_turn(ctx)
    assert third.api_names == [R] and set(third.actions[0].api_params.get("findings", {})) <= {G, M}
    # Nothing found: MedSAM has nothing to segment, the report follows at once.
    ctx.history[2:] = [Message.gpt(first), Message.human(tool_outputs_message([(G, {"boxes": [], "logits": [], "phrases": []})], instruction))]
    assert PLANNER.next_turn(ctx).api_names == [R]


def test_unavailable_tool_falls_to_the_next_candidate_or_says_why() -> None:
    names = [n for n in (spec.name for spec in suite_specs()) if n != B]
    assert PLANNER.next_turn(ctx_for("What modality is this image?", CR, names)).api_names == ["metadata classification"]
    no_3d = [n for n in names if n != O]
    assert PLANNER.next_turn(ctx_for("Segment the spleen", CT_VOL, no_3d)).api_names == [GS]
    turn = PLANNER.next_turn(ctx_for("Write a report on this study.", CR, [G]))
    assert turn.actions == [] and "no report tool is available" in turn.value and turn.unserved


def _final(instruction: str, series: tuple[str, tuple[int, int, int]], outputs: list[tuple[str, dict]]) -> AssistantTurn:
    ctx = ctx_for(instruction, series)
    plan = PLANNER.next_turn(ctx)
    ctx.history += [Message.gpt(plan), Message.human(tool_outputs_message(outputs, instruction))]
    final = PLANNER.next_turn(ctx)
    assert final.actions == []
    return final


def test_aggregation_states_results_and_answers_yes_no_and_counts() -> None:
    final = _final("Segment the lungs and measure their volumes.", CT_VOL, [
        (L, {"left_lung_ml": 2412.3, "left_lung_mean_hu": -848.7, "right_lung_ml": 2890.1}),
    ])
    for fragment in ("2412.3 mL", "-848.7 HU", "2890.1 mL"):
        assert fragment in final.value
    final = _final("Does this patient have pneumonia?", CR, [
        (B, {"labels": ["normal chest X-ray", "chest X-ray with pneumonia"], "scores": [0.8, 0.2]}),
    ])
    assert final.value.startswith("Yes/no (pneumonia): no - BiomedClip gives pneumonia 0.20")
    final = _final("Count the nodules.", CT_VOL, [
        (G, {"boxes": [[0.1, 0.1, 0.2, 0.2], [0.1, 0.1, 0.2, 0.21], [0.6, 0.6, 0.7, 0.7], [0.3, 0.3, 0.4, 0.4]],
             "logits": [0.9, 0.8, 0.7, 0.35], "phrases": ["nodule"] * 4, "slices": [3, 4, 10, 10]}),
    ])
    assert final.value.startswith("How many (nodule): 2 (grounding dino")  # the same nodule on slices 3 and 4
    assert "1 weaker candidate(s) not counted" in final.value
    final = _final("Is there a pneumothorax?", CT_VOL, [(G, {"refused": "no model configured"})])
    assert final.value.startswith("Yes/no (pneumothorax): uncertain - grounding dino could not run: no model configured")


def test_plans_are_deterministic_and_the_planner_builds_by_name() -> None:
    ctx = ctx_for("Find the nodule, measure the liver, and is this a CT?", CT_VOL)
    assert PLANNER.next_turn(ctx) == PLANNER.next_turn(ctx)
    planner = build_planner("rules", PlannerConfig())
    assert isinstance(planner, RulesPlanner) and planner.name == "rules"
    with pytest.raises(UnknownPlanner, match="unknown planner 'gpt5'; known: \\['openai', 'rules', 'transformers'\\]"):
        build_planner("gpt5", PlannerConfig())
