"""The rule-based planner: which tools for which instruction and series, params, aggregation."""
from __future__ import annotations

import jsonschema
import pytest

from agent.planners.base import PlanContext, UnknownPlanner, build_planner
from agent.planners.rules import RulesPlanner, find_asks
from agent.protocol import (
    IMAGE_PLACEHOLDER,
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
CR = ("CR", (1, 256, 256))


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


TABLE = [
    ("Segment the lungs and measure their volumes.", CT_VOL, ["ct lung segmentation"]),
    ("How large are the lungs in this scan?", CT_VOL, ["ct lung segmentation"]),
    ("Analyse this chest CT.", CT_VOL, ["ct lung segmentation"]),
    ("Segment the lungs.", CR, ["grounding dino + MedSAM"]),
    ("Can you locate the tumor?", MR_2D, ["grounding dino"]),
    ("Where is the nodule in this chest X-ray?", CR, ["grounding dino"]),
    ("Please outline the liver.", CT_VOL, ["organ segmentation 3d"]),
    ("Please outline the liver.", CT_2D, ["grounding dino + MedSAM"]),
    ("Delineate the brain tumour for me.", MR_VOL, ["grounding dino + MedSAM"]),
    ("What modality is this image?", CR, ["BiomedClip"]),
    ("Which kind of scan is this?", MR_2D, ["BiomedClip"]),
    ("Write a radiology report for this chest X-ray.", CR, ["report generation"]),
    ("What are the findings?", CR, ["report generation"]),
    ("What are the symptoms of pneumonia?", CR, ["retrieval"]),
    ("Explain how pulmonary embolism is treated.", CT_VOL, ["retrieval"]),
    ("What is shown in this image?", CR, []),
    ("Is the patient standing?", CR, []),
]


@pytest.mark.parametrize(("instruction", "series", "tools"), TABLE)
def test_tool_choice_table(instruction: str, series: tuple[str, tuple[int, int, int]], tools: list[str]) -> None:
    turn = RulesPlanner().next_turn(ctx_for(instruction, series))
    assert turn.api_names == tools
    if tools:
        assert turn.value.endswith("Please wait.")
    else:
        assert turn.value  # a direct answer


def test_several_independent_asks_give_several_actions_in_one_turn() -> None:
    turn = RulesPlanner().next_turn(
        ctx_for("Segment the liver and the spleen, tell me what modality this is, and what causes liver cirrhosis?", CT_VOL)
    )
    assert turn.api_names == ["organ segmentation 3d", "BiomedClip", "retrieval"]
    organs = turn.actions[0].api_params
    assert [v for k, v in organs.items() if k != "image"] == [["liver", "spleen"]]


def test_same_tool_asks_merge_into_one_action() -> None:
    turn = RulesPlanner().next_turn(ctx_for("Find the kidney and locate the bladder.", CR))
    assert turn.api_names == ["grounding dino"]
    assert turn.actions[0].api_params["prompts"] == ["kidney", "bladder"]


def test_unavailable_tool_falls_to_the_next_candidate() -> None:
    names = [n for n in (spec.name for spec in suite_specs()) if n != "BiomedClip"]
    turn = RulesPlanner().next_turn(ctx_for("What modality is this image?", CR, names))
    assert turn.api_names == ["metadata classification"]
    no_3d = [n for n in names if n != "organ segmentation 3d"]
    turn = RulesPlanner().next_turn(ctx_for("Segment the spleen", CT_VOL, no_3d))
    assert turn.api_names == ["grounding dino + MedSAM"]


def test_no_tool_for_the_ask_answers_directly_and_says_so() -> None:
    turn = RulesPlanner().next_turn(ctx_for("Write a report on this study.", CR, ["grounding dino"]))
    assert turn.actions == []
    assert "No available tool can write a report" in turn.value


def test_params_fit_the_tools_schemas() -> None:
    cases = [t for t in TABLE if t[2]] + [("Segment the liver and the spleen, and where is the tumor?", CT_VOL, [])]
    for instruction, series, _ in cases:
        ctx = ctx_for(instruction, series)
        schemas = {t.name: t.params_schema for t in ctx.tools}
        for action in RulesPlanner().next_turn(ctx).actions:
            jsonschema.validate(action.api_params, schemas[action.api_name])
            if "image" in schemas[action.api_name].get("properties", {}):
                assert action.api_params["image"] == IMAGE_PLACEHOLDER


def test_targets_found_with_synonyms_and_compounds() -> None:
    asks = find_asks("Detect the lung nodules and the renal masses.")
    assert [(a.intent, a.targets) for a in asks] == [("locate", ["nodule", "tumor"])]
    asks = find_asks("Outline the meniscus.")
    assert asks[0].targets == ["meniscus"]


def test_aggregation_turn_states_results_in_words() -> None:
    instruction = "Segment the lungs and measure their volumes."
    ctx = ctx_for(instruction, CT_VOL)
    plan = RulesPlanner().next_turn(ctx)
    outputs = [
        ("ct lung segmentation", {"left_lung": {"volume_ml": 2412.3, "mean_hu": -848.7}, "right_lung": {"volume_ml": 2890.1, "mean_hu": -851.2}}),
        ("grounding dino", {"boxes": [[0.1, 0.2, 0.3, 0.4]], "logits": [0.91], "phrases": ["nodule"]}),
        ("BiomedClip", {"refused": "no checkpoint configured"}),
    ]
    ctx.history += [Message.gpt(plan), Message.human(tool_outputs_message(outputs, instruction))]
    final = RulesPlanner().next_turn(ctx)
    assert final.actions == []
    for fragment in ("2412.3 mL", "-848.7 HU", "2890.1 mL", "nodule at [0.10, 0.20, 0.30, 0.40] (score 0.91)",
                     "BiomedClip could not run: no checkpoint configured"):
        assert fragment in final.value


def test_build_planner_by_name() -> None:
    planner = build_planner("rules", PlannerConfig())
    assert isinstance(planner, RulesPlanner) and planner.name == "rules"
    with pytest.raises(UnknownPlanner, match="unknown planner 'gpt5'; known: \\['openai', 'rules', 'transformers'\\]"):
        build_planner("gpt5", PlannerConfig())
