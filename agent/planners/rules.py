"""The deterministic rule-based planner: the default backend and the fallback of the MLLM planners.

It reads the instruction and the series' metadata and writes MMedAgent-format turns. Planning
(first turn): the instruction is cut into clauses, each clause's intents and targets are found
with the keyword tables in :mod:`agent.planners.rules_tables` (the reading is in
:mod:`agent.planners.rules_reading`), each intent is mapped to the first
available tool whose conditions hold (table ``TOOL_CHOICES``), and all chosen tools go into ONE
turn (MMedAgent allows one tool per turn; independent asks here run together). A tool that works
on other tools' results (``DEFERRED_TOOLS``: report generation) follows them in a second round.
Aggregation (after the tool output messages): a final turn with no actions states every result in
words (volumes in mL, HU, boxes, labels, reports, passages, and any refusal's reason).

Before the tables are read, radiologist shorthand is expanded (``SHORTHAND``), tokens one edit
away from an intent word are corrected (``TYPO_TARGETS``) and inflected intent verbs are reduced to
their base form (``LEMMA_BASES``: "writing up" -> "write up"); an intent keyword right after a
negation cue ("don't segment", "no need for a report") is dropped. How a clause is read:

- strong patterns (``INTENT_PATTERNS``) ask by themselves; weak ones (``WEAK_INTENT_PATTERNS``:
  "any", "is there", "enlarged") only beside a structure name and only when no strong one is in
  the clause; vague ones (``VAGUE_INTENT_PATTERNS``: "have a look") only when nothing else is asked;
- within a clause, ``CLAUSE_PRECEDENCE`` settles intents that compete ("what this image shows: MRI
  or CT?" is a modality question), and a clause about the image itself (``IMAGE_PROPERTIES``) asks
  for no report;
- a clause naming only findings ("Fracture?") asks where they are; one naming only organs
  ("lungs?") adds them to the asks around it; neither is sent to the embedding bank;
- a clause that opens like clinical context (``CONTEXT_OPENING``: "65M smoker", "Known lung
  cancer", "I was told I have ...") contributes only its strong asks when the instruction asks
  anything else;
- a clause the keywords cannot read is matched by sentence embedding against the labelled
  instruction templates and exemplars (:mod:`agent.planners.intent_embed`), when that model is
  available; below its similarity threshold the clause asks for nothing (a direct answer).

The planner is stateless: each call re-reads the instruction and the conversation so far, so it
can take over a conversation another planner started (the loop's fallback).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.planners.aggregate import aggregate_turn
from agent.planners.base import PlanContext, Planner, ToolSpec, register_planner
from agent.planners.rules_reading import Ask, find_asks, needs_bank
from agent.planners.rules_tables import (
    ACQUISITION_PARAMETERS,
    ALL_STRUCTURES,
    DEFAULT_ASKS,
    DEFERRED_TOOLS,
    IMAGE_PROPERTIES,
    INTENT_WORDING,
    ORGANS_3D,
    PARAM_ROLES,
    PARAM_ROLES_BY_TOOL,
    TOOL_CHOICES,
)
from agent.protocol import (
    IMAGE_PLACEHOLDER,
    Action,
    AssistantTurn,
    Message,
    ProtocolError,
    parse_tool_outputs_message,
)

if TYPE_CHECKING:
    from agent.planners.intent_embed import IntentBank
    from config.schema import PlannerConfig

@dataclass
class Plan:
    """The chosen tools (in order, merged per tool) and asks no available tool could serve."""

    actions: list[tuple[str, Ask]]
    unserved: list[Ask]


Condition = Callable[[PlanContext, Ask], bool]


def _has_lung(ctx: PlanContext, ask: Ask) -> bool:
    return "lung" in ask.targets


def _is_ct_volume(ctx: PlanContext, ask: Ask) -> bool:
    return ctx.modality == "CT" and ctx.is_3d


def _is_volume(ctx: PlanContext, ask: Ask) -> bool:
    return ctx.modality in ("CT", "MR") and ctx.is_3d


def _organ_targets(ctx: PlanContext, ask: Ask) -> bool:
    """All targets are organs the 3D network knows: its schema's enum if it has one, else ORGANS_3D."""
    known: set[str] = set(ORGANS_3D)
    for spec in ctx.tools:
        if spec.name == "organ segmentation 3d":
            enum = _target_enum(spec)
            if enum is not None:
                known = {e.lower() for e in enum}
    return bool(ask.targets) and all(t in known or t == ALL_STRUCTURES for t in ask.targets)


def _target_enum(spec: ToolSpec) -> list[str] | None:
    roles = param_roles(spec.name)
    for name, prop in (spec.params_schema.get("properties") or {}).items():
        if roles.get(name) == "targets" and isinstance(prop, dict):
            enum = prop.get("enum") or (prop.get("items") or {}).get("enum")
            if enum:
                return [str(e) for e in enum]
    return None


def _has_target(ctx: PlanContext, ask: Ask) -> bool:
    """A named structure (a text-prompted tool cannot take "all organs")."""
    return any(t != ALL_STRUCTURES for t in ask.targets)


def _is_ct(ctx: PlanContext, ask: Ask) -> bool:
    return ctx.modality == "CT"


_CHEST_WORDS = r"\b(?:chest|thorax|thoracic|lungs?|pulmonary|volumes?)\b"


def _chest(ctx: PlanContext, ask: Ask) -> bool:
    """The series or the instruction is about the chest."""
    text = " ".join(str(v) for v in ctx.meta.values()) + " " + ctx.instruction
    return bool(re.search(_CHEST_WORDS, text, re.IGNORECASE))


def _chest_words(ctx: PlanContext, ask: Ask) -> bool:
    """The instruction itself speaks of the chest, lungs or volumes."""
    return bool(re.search(_CHEST_WORDS, ctx.instruction, re.IGNORECASE))


def _explicit(ctx: PlanContext, ask: Ask) -> bool:
    """Asked in so many words: a yes/no size question ("Is the heart enlarged?") is measured only
    by a volumetric tool, a mask on a 2D image does not answer it."""
    return not ask.weak


#: The named conditions TOOL_CHOICES may use.
CONDITIONS: dict[str, Condition] = {
    "lung_target": _has_lung,
    "ct_volume": _is_ct_volume,
    "ct": _is_ct,
    "volume": _is_volume,
    "organ_targets": _organ_targets,
    "has_target": _has_target,
    "chest": _chest,
    "chest_words": _chest_words,
    "explicit": _explicit,
}


def choose_tools(ctx: PlanContext, asks: list[Ask]) -> Plan:
    """Map each ask to the first available tool whose conditions hold; merge asks per tool."""
    available = set(ctx.tool_names)
    chosen: dict[str, Ask] = {}
    unserved: list[Ask] = []
    for ask in asks:
        tool = None
        for candidate, conditions in TOOL_CHOICES.get(ask.intent, ()):
            if candidate in available and all(CONDITIONS[c](ctx, ask) for c in conditions):
                tool = candidate
                break
        if tool is None:
            unserved.append(ask)
            continue
        if tool in chosen:
            for t in ask.targets:
                if t not in chosen[tool].targets:
                    chosen[tool].targets.append(t)
        else:
            chosen[tool] = Ask(ask.intent, list(ask.targets), ask.clause, ask.keyword_end, weak=ask.weak)
    return Plan(list(chosen.items()), unserved)


def default_asks(ctx: PlanContext) -> list[Ask]:
    """What to do with an instruction that names no task (e.g. "Analyse this chest CT")."""
    for conditions, intent, targets in DEFAULT_ASKS:
        ask = Ask(intent, list(targets))
        if all(CONDITIONS[c](ctx, ask) for c in conditions):
            return [ask]
    return []


def param_roles(tool: str) -> dict[str, str]:
    return {**PARAM_ROLES, **PARAM_ROLES_BY_TOOL.get(tool, {})}


def fill_params(spec: ToolSpec, targets: list[str], question: str) -> dict[str, Any]:
    """API_params from the tool's schema: each property whose name has a known role is filled."""
    props = spec.params_schema.get("properties", {}) or {}
    required = set(spec.params_schema.get("required", []) or [])
    roles = param_roles(spec.name)
    params: dict[str, Any] = {}
    for name, prop in props.items():
        role = roles.get(name)
        is_array = isinstance(prop, dict) and prop.get("type") == "array"
        if role == "image":
            params[name] = IMAGE_PLACEHOLDER
        elif role == "targets":
            concrete = [t for t in targets if t != ALL_STRUCTURES]
            if ALL_STRUCTURES in targets and name not in required:
                continue  # the tool's default: every structure it knows
            if concrete:
                params[name] = concrete if is_array else ". ".join(concrete)
        elif role == "question":
            params[name] = [question] if is_array else question
        elif name in required and isinstance(prop, dict) and "default" in prop:
            params[name] = prop["default"]
    return params


def make_plan(ctx: PlanContext, bank: IntentBank | None = None) -> Plan:
    """The tools for the instruction (all rounds), from its asks or the default asks; ``bank``
    reads clauses the keywords cannot (keywords alone when None)."""
    asks = find_asks(ctx.instruction, bank)
    if not asks and not re.search(f"{IMAGE_PROPERTIES}|{ACQUISITION_PARAMETERS}", ctx.instruction, re.IGNORECASE):
        # A question about the image itself ("how many slices does this volume contain?") is
        # answered directly, not with the default task.
        asks = default_asks(ctx)
    return choose_tools(ctx, asks)


def plan_turn(ctx: PlanContext, bank: IntentBank | None = None) -> AssistantTurn:
    """The first turn: tool calls for every ask a tool can serve now, or a direct answer."""
    plan = make_plan(ctx, bank)
    if not plan.actions:
        return direct_answer(ctx, plan.unserved)
    return turn_for_plan(ctx, plan)


def first_round(plan: Plan) -> tuple[list[tuple[str, Ask]], list[tuple[str, Ask]]]:
    """Split the plan into tools for the first turn and deferred ones (DEFERRED_TOOLS) that wait
    for the others' outputs; a deferred tool planned alone runs at once."""
    now = [(n, a) for n, a in plan.actions if n not in DEFERRED_TOOLS]
    later = [(n, a) for n, a in plan.actions if n in DEFERRED_TOOLS]
    return (now, later) if now else (later, [])


def turn_for_plan(ctx: PlanContext, plan: Plan) -> AssistantTurn:
    """The MMedAgent turn calling the plan's first-round tools (together), params from their schemas."""
    now, later = first_round(plan)
    specs = {t.name: t for t in ctx.tools}
    actions = [Action(name, fill_params(specs[name], ask.targets, ctx.instruction)) for name, ask in now]
    steps = [_wording(ask, name) for name, ask in now]
    thoughts = "The user asks to " + "; and to ".join(steps) + "."
    if len(actions) > 1:
        thoughts += " These are independent, so I will call the tools together."
    if later:
        thoughts += " Then I will " + ", ".join(
            f"{_intent_phrase(ask)} with {name} from their results" for name, ask in later
        ) + "."
    if plan.unserved:
        thoughts += " No available tool can " + ", ".join(_intent_phrase(a) for a in plan.unserved) + "."
    tools = ", ".join(name for name, _ in now)
    value = f"I will use {tools} to answer this. Please wait."
    return AssistantTurn(thoughts, actions, value)


def deferred_turn(ctx: PlanContext, plan: Plan, outputs: list[tuple[str, dict[str, Any]]]) -> AssistantTurn | None:
    """The turn calling the deferred tools not yet run, given the outputs so far; None if none is left."""
    called = {name for name, _ in outputs}
    pending = [(n, a) for n, a in first_round(plan)[1] if n not in called]
    if not pending:
        return None
    specs = {t.name: t for t in ctx.tools}
    findings = {name: summary for name, summary in outputs if "refused" not in summary}
    actions = []
    for name, ask in pending:
        params = fill_params(specs[name], ask.targets, ctx.instruction)
        if DEFERRED_TOOLS[name] in (specs[name].params_schema.get("properties") or {}) and findings:
            params[DEFERRED_TOOLS[name]] = findings
        actions.append(Action(name, params))
    names = ", ".join(n for n, _ in pending)
    done = ", ".join(dict.fromkeys(n for n, _ in outputs))
    thoughts = f"{done} returned; now I will use {names} on their results."
    return AssistantTurn(thoughts, actions, f"I will use {names} with these results. Please wait.")


def _wording(ask: Ask, tool: str) -> str:
    return f"{_intent_phrase(ask)}, for which I will use {tool}"


def _intent_phrase(ask: Ask) -> str:
    phrase = INTENT_WORDING.get(ask.intent, ask.intent)
    if ask.targets:
        phrase += " (" + ", ".join(ask.targets) + ")"
    return phrase


def direct_answer(ctx: PlanContext, unserved: list[Ask]) -> AssistantTurn:
    facts = "; ".join(line for line in ctx.metadata_text.splitlines() if line.strip())
    if unserved:
        missing = ", ".join(_intent_phrase(a) for a in unserved)
        thoughts = f"The user asks to {missing}, but no available tool can do this; I answer from the image information."
        value = f"No available tool can {missing} for this series. What is known about it: {facts}."
        return AssistantTurn(thoughts, [], value, unserved=tuple(_intent_phrase(a) for a in unserved))
    thoughts = "This is a visual question that needs no tool; I answer directly from the image and its metadata."
    value = f"From the image and its metadata: {facts}."
    return AssistantTurn(thoughts, [], value)


@register_planner
class RulesPlanner(Planner):
    """Keyword rules over the instruction and metadata; needs no weights and never fails to parse."""

    name = "rules"

    def __init__(self, cfg: PlannerConfig | None = None, *, embeddings: bool | None = None) -> None:
        super().__init__(cfg)
        #: Whether to read clauses the keywords miss by sentence embedding (config
        #: ``planner.intent_embedding``, default on); the bank loads on first need.
        self.embeddings = embeddings if embeddings is not None else (cfg.intent_embedding if cfg is not None else True)
        self._model_path = cfg.intent_model if cfg is not None else None

    @property
    def bank(self) -> IntentBank | None:
        """The embedding bank (built once per process and model), or None: keywords only."""
        if not self.embeddings:
            return None
        from agent.planners.intent_embed import load_intent_bank

        return load_intent_bank(self._model_path)

    def plan(self, ctx: PlanContext) -> Plan:
        """Every tool the instruction needs (all rounds), keywords first, embeddings for the rest."""
        plan = make_plan(ctx)
        if self.embeddings and needs_bank(ctx.instruction):
            plan = make_plan(ctx, self.bank)
        return plan

    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        last = ctx.last_message
        plan = self.plan(ctx)
        if last is not None and last.role == "human" and len(ctx.history) > 1:
            outputs = history_outputs(ctx.history)
            if outputs:
                follow_up = deferred_turn(ctx, plan, outputs)
                return follow_up or aggregate_turn(outputs, ctx.instruction)
        if not plan.actions:
            return direct_answer(ctx, plan.unserved)
        return turn_for_plan(ctx, plan)


def history_outputs(history: list[Message]) -> list[tuple[str, dict[str, Any]]]:
    """Every tool output reported so far in the conversation, in order."""
    outputs: list[tuple[str, dict[str, Any]]] = []
    for message in history[1:]:
        if message.role != "human":
            continue
        try:
            found, _ = parse_tool_outputs_message(message.value)
        except ProtocolError:
            continue
        outputs.extend(found)
    return outputs
