"""The deterministic planner: the default backend and the fallback of the MLLM planners.

It reads the instruction (:mod:`agent.reading`: intents from a small classifier on sentence
embeddings, slots from parsers over validated vocabularies), chooses a tool per ask and target
(:mod:`agent.planners.tool_choice`), and writes MMedAgent-format turns with each tool's
``API_params`` filled from its schema (targets, sides, exclusions, coordinates, slices, labels).
Independent tools run together in one turn; a tool that works on others' results follows them
(``report generation`` on every result; ``MedSAM`` on the boxes ``grounding dino`` found, when
the fused tool is not available: MMedAgent's two steps). The final turn states every result in
words and answers each yes/no and counting question explicitly (:mod:`agent.planners.answers`).

The planner is stateless: each call re-reads the instruction and the conversation so far, so it
can take over a conversation another planner started (the loop's fallback).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.planners.aggregate import aggregate_turn
from agent.planners.answers import answer_sentences
from agent.planners.base import PlanContext, Planner, ToolSpec, register_planner
from agent.planners.tool_choice import (
    ALL_ORGANS,
    FINDINGS_CLASSIFIER,
    GROUNDING,
    MEDSAM,
    ORGAN_TOOL,
    REPORT,
    Plan,
    ToolCall,
    choose,
)
from agent.protocol import (
    IMAGE_PLACEHOLDER,
    Action,
    AssistantTurn,
    Message,
    ProtocolError,
    parse_tool_outputs_message,
)
from agent.reading.intents import MODEL_FILE
from agent.reading.load import load_reader
from agent.reading.read import InstructionReader
from agent.reading.vocabulary import Vocabulary

if TYPE_CHECKING:
    from config.schema import PlannerConfig

#: API_params property name -> what the planner puts there.
PARAM_ROLES: dict[str, str] = {
    "image": "image", "image_path": "image", "img": "image",
    "prompts": "prompts", "prompt": "prompts", "text_prompt": "prompts", "text_prompts": "prompts", "caption": "prompts",
    "targets": "targets", "organs": "names", "structures": "names", "exclude": "exclude",
    "query": "question", "question": "question", "instruction": "question", "indication": "question",
    "boxes": "boxes", "points": "points", "point_labels": "point_labels",
    "slices": "slices", "instance_numbers": "instances", "labels": "labels",
}
#: The param of a deferred tool that receives the other tools' summaries.
FINDINGS_PARAM = "findings"


def _prompt_ask(call: ToolCall) -> Any:
    return next((a for a in call.asks if a.prompt is not None), None)


def _slices(call: ToolCall, ctx: PlanContext) -> list[int]:
    """0-based indices of the 1-based slice numbers the user named (volumes only)."""
    if not ctx.is_3d:
        return []
    numbers = sorted({n for a in call.asks for n in a.slices})
    return [n - 1 for n in numbers if 1 <= n <= ctx.volume_shape[0]]


def _labels(call: ToolCall, vocab: Vocabulary, props: dict[str, Any]) -> list[str] | None:
    if call.name == FINDINGS_CLASSIFIER and call.findings:
        settings = vocab.answers
        return [settings.finding_label.format(finding=f) for f in call.findings] + [settings.normal_label]
    if call.name == ORGAN_TOOL and "targets" not in props:
        names = [n for n in call.names if n != ALL_ORGANS]
        return names or None
    if call.name == MEDSAM and call.names:
        return call.names
    return None


def fill_params(spec: ToolSpec, call: ToolCall, ctx: PlanContext, vocab: Vocabulary) -> dict[str, Any]:
    """API_params from the tool's schema: each property whose name has a known role is filled."""
    props = spec.params_schema.get("properties", {}) or {}
    required = set(spec.params_schema.get("required", []) or [])
    params: dict[str, Any] = {}
    prompted = _prompt_ask(call)
    concrete = [t for t in call.targets if t.name != ALL_ORGANS]
    for name, prop in props.items():
        role = PARAM_ROLES.get(name)
        is_array = isinstance(prop, dict) and prop.get("type") == "array"
        value: Any = None
        if role == "image":
            value = IMAGE_PLACEHOLDER
        elif role == "prompts" and concrete:
            names = list(dict.fromkeys(t.name for t in concrete))
            value = names if is_array else ". ".join(names)
        elif role == "targets" and concrete and (any(t.side for t in concrete) or call.name != GROUNDING):
            value = list(dict.fromkeys(t.sided_name for t in concrete))
        elif role == "names" and concrete:
            value = list(dict.fromkeys(t.name for t in concrete))
        elif role == "exclude" and call.excluded:
            value = list(dict.fromkeys(call.excluded))
        elif role == "question":
            value = [ctx.instruction] if is_array else ctx.instruction
        elif role == "labels":
            value = _labels(call, vocab, props)
        elif role in ("boxes", "points", "point_labels") and prompted is not None and prompted.prompt is not None:
            value = [list(v) for v in getattr(prompted.prompt, role)] if role != "point_labels" else list(prompted.prompt.point_labels)
            value = value or None
        elif role == "slices":
            value = _slices(call, ctx) or None
        elif role == "instances" and ctx.is_3d:
            value = sorted({n for a in call.asks for n in a.instances}) or None
        elif name in required and isinstance(prop, dict) and "default" in prop:
            value = prop["default"]
        if value is not None:
            params[name] = value
    return params


def _chained_params(
    spec: ToolSpec, call: ToolCall, ctx: PlanContext, vocab: Vocabulary, outputs: list[tuple[str, dict[str, Any]]]
) -> dict[str, Any] | None:
    """MedSAM's params from the grounding boxes of its targets; None when none was found."""
    boxes: list[list[float]] = []
    labels: list[str] = []
    slices: list[int] = []
    wanted = set(call.names)
    for name, summary in outputs:
        if name != GROUNDING or "boxes" not in summary:
            continue
        phrases = summary.get("phrases") or []
        found_slices = summary.get("slices") or []
        for i, box in enumerate(summary.get("boxes") or []):
            phrase = str(phrases[i]) if i < len(phrases) else ""
            if wanted and phrase not in wanted:
                continue
            boxes.append([float(v) for v in box])
            labels.append(phrase or "region")
            if i < len(found_slices):
                slices.append(int(found_slices[i]))
    if not boxes:
        return None
    params = {k: v for k, v in fill_params(spec, call, ctx, vocab).items() if k not in ("boxes", "points", "slices")}
    params["boxes"] = boxes
    props = spec.params_schema.get("properties") or {}
    if "labels" in props:
        params["labels"] = labels
    if slices and len(slices) == len(boxes) and "box_slices" in props:
        params["box_slices"] = slices
    return params


class RulesPlanning:
    """One instruction's plan and its turns (the reader and vocabulary of the process)."""

    def __init__(self, reader: InstructionReader) -> None:
        self.reader = reader
        self.vocab = reader.vocabulary

    def plan(self, ctx: PlanContext) -> Plan:
        rows, cols = (ctx.volume_shape[1], ctx.volume_shape[2]) if len(ctx.volume_shape) == 3 else (None, None)
        reading = self.reader.read(ctx.instruction, rows, cols)
        return choose(ctx, reading, self.vocab)

    def first_turn(self, ctx: PlanContext, plan: Plan) -> AssistantTurn:
        rounds = plan.rounds()
        if not rounds:
            return self.direct_answer(ctx, plan)
        specs = {t.name: t for t in ctx.tools}
        now = rounds[0]
        actions = [Action(c.name, fill_params(specs[c.name], c, ctx, self.vocab)) for c in now]
        thoughts = "The user asks to " + "; and to ".join(f"{_phrase(c)}, for which I will use {c.name}" for c in now) + "."
        if len(actions) > 1:
            thoughts += " These are independent, so I will call the tools together."
        later = [c for r in rounds[1:] for c in r]
        if later:
            thoughts += " Then I will " + ", ".join(f"{_phrase(c)} with {c.name} on their results" for c in later) + "."
        if plan.unserved:
            thoughts += " " + _unserved_text(plan)
        value = f"I will use {', '.join(c.name for c in now)} to answer this. Please wait."
        return AssistantTurn(thoughts, actions, value, unserved=_unserved(plan))

    def next_round(self, ctx: PlanContext, plan: Plan, outputs: list[tuple[str, dict[str, Any]]]) -> AssistantTurn | None:
        """The turn calling the next round's tools not yet run, fed with the outputs so far; None
        when nothing is left (or a chained tool has nothing to work on)."""
        ran = Counter(name for name, _ in outputs)
        specs = {t.name: t for t in ctx.tools}
        for calls in plan.rounds():
            pending = []
            for call in calls:
                if ran[call.name] > 0:
                    ran[call.name] -= 1
                else:
                    pending.append(call)
            if not pending:
                continue
            actions = []
            for call in pending:
                spec = specs[call.name]
                if call.chained:
                    params = _chained_params(spec, call, ctx, self.vocab, outputs)
                    if params is None:
                        continue
                else:
                    params = fill_params(spec, call, ctx, self.vocab)
                if call.name == REPORT and FINDINGS_PARAM in (spec.params_schema.get("properties") or {}):
                    found = {name: s for name, s in outputs if "refused" not in s}
                    if found:
                        params[FINDINGS_PARAM] = found
                actions.append(Action(call.name, params))
            if not actions:
                continue  # a chained tool with nothing to work on: on to the next round
            names = ", ".join(a.api_name for a in actions)
            done = ", ".join(dict.fromkeys(n for n, _ in outputs))
            return AssistantTurn(f"{done} returned; now I will use {names} on their results.", actions,
                                 f"I will use {names} with these results. Please wait.")
        return None

    def final_turn(self, ctx: PlanContext, plan: Plan, outputs: list[tuple[str, dict[str, Any]]]) -> AssistantTurn:
        turn = aggregate_turn(outputs, ctx.instruction)
        answers = answer_sentences(plan, outputs, self.vocab)
        value = " ".join([*answers, turn.value]) if answers else turn.value
        if plan.unserved:
            value += " " + _unserved_text(plan)
        return AssistantTurn(turn.thoughts, [], value)

    def direct_answer(self, ctx: PlanContext, plan: Plan) -> AssistantTurn:
        facts = "; ".join(line for line in ctx.metadata_text.splitlines() if line.strip())
        reading = plan.reading
        if reading.prompt_error is not None:
            reason = f"the coordinates in the instruction cannot be used: {reading.prompt_error}"
            return AssistantTurn(f"The user gives a region, but {reason}.", [], f"I cannot segment that region: {reason}.",
                                 unserved=(f"segment the given region ({reading.prompt_error})",))
        if self.reader.scorer is None and not reading.asks:
            reason = "the instruction reader's model (all-MiniLM-L6-v2) is not installed"
            return AssistantTurn(f"I cannot read the instruction: {reason}.", [], f"The instruction could not be read: {reason}.",
                                 unserved=(f"read the instruction ({reason})",))
        if plan.unserved:
            text = _unserved_text(plan)
            answers = answer_sentences(plan, [], self.vocab)
            value = " ".join([*answers, text, f"What is known about this series: {facts}."])
            return AssistantTurn(f"No available tool serves this request. {text}", [], value, unserved=_unserved(plan))
        return AssistantTurn(
            "This is a question that needs no tool; I answer directly from the image and its metadata.", [],
            f"From the image and its metadata: {facts}.",
        )


def _phrase(call: ToolCall) -> str:
    intents = list(dict.fromkeys(a.intent for a in call.asks))
    what = {"presence": "check for", "size": "judge the size of", "count": "count", "analyse": "analyse the series",
            "classify": "identify the image type", "report": "write a report", "knowledge": "answer a medical question"}
    words = " and ".join(what.get(i, i) for i in intents)
    if call.targets:
        words += " (" + ", ".join(t.sided_name for t in call.targets) + ")"
    if call.excluded:
        words += " except " + ", ".join(call.excluded)
    return words


def _unserved(plan: Plan) -> tuple[str, ...]:
    return tuple(f"{a.intent} {', '.join(a.names)}".strip() + f" ({why})" for a, why in plan.unserved)


def _unserved_text(plan: Plan) -> str:
    return " ".join(f"Not done: {a.intent} {', '.join(a.names)}".rstrip() + f": {why}." for a, why in plan.unserved)


@register_planner
class RulesPlanner(Planner):
    """Reads the instruction (learned intents, parsed slots) and plans deterministically."""

    name = "rules"

    def __init__(self, cfg: PlannerConfig | None = None, *, reader: InstructionReader | None = None) -> None:
        super().__init__(cfg)
        self._reader = reader
        self._encoder_path: Path | None = cfg.intent_model if cfg is not None else None
        self._weights: Path | None = cfg.intent_weights if cfg is not None else None

    @property
    def reader(self) -> InstructionReader:
        """The instruction reader (built once per process, encoder and weights)."""
        if self._reader is None:
            self._reader = load_reader(self._encoder_path, self._weights or MODEL_FILE)
        return self._reader

    def planning(self) -> RulesPlanning:
        return RulesPlanning(self.reader)

    def plan(self, ctx: PlanContext) -> Plan:
        """Every tool the instruction needs (all rounds)."""
        return self.planning().plan(ctx)

    def next_turn(self, ctx: PlanContext) -> AssistantTurn:
        planning = self.planning()
        plan = planning.plan(ctx)
        last = ctx.last_message
        if last is not None and last.role == "human" and len(ctx.history) > 1:
            outputs = history_outputs(ctx.history)
            if outputs:
                return planning.next_round(ctx, plan, outputs) or planning.final_turn(ctx, plan, outputs)
        return planning.first_turn(ctx, plan)


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
