"""The planner on every item set in tests/agent_sets/ (docs/agent-eval.md), with each set's exact
misses pinned: a plan that changes on any item, better or worse, shows here and is reviewed.

The sets and their history are in tests/agent_sets/README.md. Only the figure a set got the day it
was written (measured once, before anyone read its misses) may be quoted; the pins below are
regression pins, not accuracy claims.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from agent.dataset import tool_specs_of
from agent.eval_sets import evaluate_items
from agent.planners.rules import RulesPlanner
from tools.registry import known_tool_classes

SETS = Path(__file__).with_name("agent_sets")

#: Set -> the ids the planner gets wrong today.
PINNED_MISSES: dict[str, list[str]] = {
    "blind_1": ["b1-032", "b1-085"],
    "blind_2": ["b2-008", "b2-050", "b2-051", "b2-087", "b2-097", "b2-108", "b2-109"],
    "dev": [
        "dev-015", "dev-078", "dev-166", "dev-175", "dev-184", "dev-199", "dev-207", "dev-211", "dev-221",
        "dev-224", "dev-274", "dev-276", "dev-282", "dev-300", "dev-315", "dev-317", "dev-320", "dev-322",
        "dev-359", "dev-454", "dev-460",
    ],
    "dev_paraphrases": ["para-021", "para-063"],
    "dev_slots": [],
    "dev_table": ["table-016"],
    "heldout_01": [],
    "heldout_02": [],
    "heldout_03": [
        "heldout03-001", "heldout03-030", "heldout03-046", "heldout03-055", "heldout03-059", "heldout03-080",
        "heldout03-087",
    ],
    "heldout_04": [],
    "heldout_05": ["heldout05-065"],
    "heldout_06": ["heldout06-047", "heldout06-076"],
    "heldout_07": ["heldout07-006", "heldout07-011", "heldout07-054"],
    "heldout_08": ["heldout08-024", "heldout08-035"],
    "heldout_09": ["heldout09-020", "heldout09-079"],
}


def test_every_set_is_pinned() -> None:
    assert {p.stem for p in SETS.glob("*.jsonl")} == set(PINNED_MISSES)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PINNED_MISSES))
def test_set_misses_are_exactly_the_pinned_ones(name: str) -> None:
    report = evaluate_items(SETS / f"{name}.jsonl", RulesPlanner(), tool_specs_of(known_tool_classes()))
    wrong = {r.id: f"{r.instruction!r}: planned {sorted(r.planned)}, expected {sorted(r.expected)}"
             for r in report.items if not r.tools_ok}
    assert sorted(wrong) == PINNED_MISSES[name], "\n".join(f"{k}: {v}" for k, v in sorted(wrong.items()))
