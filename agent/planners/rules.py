"""The deterministic rule-based planner: the default backend and the fallback of the MLLM planners.

It reads the instruction and the series' metadata and writes MMedAgent-format turns. Planning
(first turn): the instruction is cut into clauses, each clause's intents and targets are found
with the keyword tables in :mod:`agent.planners.rules_tables`, each intent is mapped to the first
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.planners.aggregate import aggregate_turn
from agent.planners.base import PlanContext, Planner, ToolSpec, register_planner
from agent.planners.rules_tables import (
    ACQUISITION_PARAMETERS,
    ALL_STRUCTURES,
    BARE_CLAUSE_WORDS,
    CLAUSE_PRECEDENCE,
    CLAUSE_SPLIT,
    CONTEXT_OPENING,
    CONTINUATION_WORDS,
    DEFAULT_ASKS,
    DEFERRED_TOOLS,
    DEICTIC,
    FINDING_FORM,
    FINDING_TARGETS,
    IMAGE_PROPERTIES,
    INTENT_PATTERNS,
    INTENT_WORDING,
    KNOWLEDGE_STRONG,
    NOT_STRUCTURES,
    ORGANS_3D,
    PARAM_ROLES,
    PARAM_ROLES_BY_TOOL,
    PHRASE_STOP,
    SUPPRESSES,
    TARGET_REQUIRED,
    TARGET_TERMS,
    TOOL_CHOICES,
    VAGUE_INTENT_PATTERNS,
    WEAK_INTENT_PATTERNS,
)
from agent.planners.rules_text import negated_at, normalise_instruction
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

_TARGET_RE = [(re.compile(p, re.IGNORECASE), canon) for p, canon in TARGET_TERMS]
_INTENT_RE = {name: [re.compile(p, re.IGNORECASE) for p in pats] for name, pats in INTENT_PATTERNS.items()}
_WEAK_RE = {name: [re.compile(p, re.IGNORECASE) for p in pats] for name, pats in WEAK_INTENT_PATTERNS.items()}
_VAGUE_RE = {name: [re.compile(p, re.IGNORECASE) for p in pats] for name, pats in VAGUE_INTENT_PATTERNS.items()}
#: Intent asks found by embedding carry this keyword position: no free-phrase target is read.
EMBEDDED = -1


@dataclass
class Ask:
    """One thing the user asks for: an intent and the structures it concerns."""

    intent: str
    targets: list[str] = field(default_factory=list)
    #: Where the intent keyword ended in its clause (free-phrase targets are read from there).
    clause: str = ""
    keyword_end: int = 0
    #: Found by a weak pattern only (a word that asks something only beside a structure name).
    weak: bool = False
    #: Suggested by a clinical-context clause (weak words, knowledge words or embedding only): kept
    #: only when the instruction asks nothing else.
    context: bool = False
    #: The target was read as a free phrase after the keyword (no known structure term).
    free_target: bool = False


@dataclass
class Plan:
    """The chosen tools (in order, merged per tool) and asks no available tool could serve."""

    actions: list[tuple[str, Ask]]
    unserved: list[Ask]


def find_targets(text: str) -> list[str]:
    """Known structures named in ``text``, canonical and in order of appearance; a longer term
    ("lung nodule") wins over the shorter ones it overlaps ("lung")."""
    hits: list[tuple[int, int, str]] = []
    for pattern, canon in _TARGET_RE:
        for m in pattern.finditer(text):
            hits.append((m.start(), m.end(), canon or m.group(0).lower()))
    hits.sort(key=lambda h: (h[0], -(h[1] - h[0])))
    out: list[str] = []
    covered_until = -1
    for start, end, canon in hits:
        if start < covered_until:
            continue
        covered_until = end
        if canon not in out:
            out.append(canon)
    return out


_FINDING_FORM_RE = re.compile(FINDING_FORM, re.IGNORECASE)


def is_finding(target: str) -> bool:
    """A finding (something to look for), not anatomy: listed, or a disease word by its form."""
    return target in FINDING_TARGETS or _FINDING_FORM_RE.fullmatch(target) is not None


def _free_phrase(clause: str, start: int) -> str | None:
    """A target named with no known term: up to three words after the intent keyword."""
    words = re.findall(r"[a-zA-Z][a-zA-Z\-']*", clause[start:])
    picked: list[str] = []
    for w in words:
        lw = w.lower()
        if lw in PHRASE_STOP:
            if picked:
                break
            continue
        if not picked and lw in NOT_STRUCTURES:
            return None
        picked.append(lw)
        if len(picked) == 3:
            break
    return " ".join(picked) or None


def split_clauses(instruction: str) -> list[str]:
    """The instruction cut at CLAUSE_SPLIT; a piece after a bare comma that is one word or opens
    with a CONTINUATION_WORDS word is joined back to the clause before it."""
    parts = re.split(f"({CLAUSE_SPLIT})", instruction, flags=re.IGNORECASE)
    clauses: list[str] = []
    separator = ""
    for i, part in enumerate(parts):
        if i % 2:
            separator = part
            continue
        piece = (part or "").strip()
        if not piece:
            continue
        words = piece.split()
        continues = separator.strip() == "," and (len(words) == 1 or words[0].lower() in CONTINUATION_WORDS)
        if clauses and continues:
            clauses[-1] += " " + piece
        else:
            clauses.append(piece)
    return clauses


def _keyword_intents(clause: str, targets: list[str]) -> tuple[list[tuple[int, Ask]], bool]:
    """The clause's intents found by keyword (not negated), in order, and whether any was negated."""
    found: list[tuple[int, Ask]] = []
    negated = False
    for intent, patterns in _INTENT_RE.items():
        matches = [m for p in patterns for m in p.finditer(clause)]
        weak = not matches and bool(targets)
        if weak:
            matches = [m for p in _WEAK_RE.get(intent, ()) for m in p.finditer(clause)]
        vague = not matches
        if vague:
            matches = [m for p in _VAGUE_RE.get(intent, ()) for m in p.finditer(clause)]
        kept = [m for m in matches if not negated_at(clause, m.start(), m.end())]
        negated = negated or len(kept) < len(matches)
        if kept:
            first = min(kept, key=lambda m: m.start())
            ask = Ask(intent, list(targets), clause, first.end(), weak=weak or vague, context=vague)
            found.append((first.start(), ask))
    found.sort(key=lambda f: f[0])
    beaten = {loser for _, ask in found for loser in CLAUSE_PRECEDENCE.get(ask.intent, ())}
    firm = any(not ask.weak for _, ask in found)
    return [(pos, ask) for pos, ask in found if ask.intent not in beaten and not (firm and ask.weak)], negated


_CONTEXT_RE = re.compile(CONTEXT_OPENING, re.IGNORECASE)
_STRONG_KNOWLEDGE_RE = re.compile(KNOWLEDGE_STRONG, re.IGNORECASE)
_TERM_RE = [p for p, _ in _TARGET_RE]


def is_bare(clause: str) -> bool:
    """The clause names structures and nothing else of note ("Fracture", "query L effusion")."""
    rest = clause
    for pattern in _TERM_RE:
        rest = pattern.sub(" ", rest)
    words = re.findall(r"[a-z][a-z\-']*", rest.lower())
    return all(w in BARE_CLAUSE_WORDS or w in PHRASE_STOP for w in words)


def is_context(clause: str) -> bool:
    """The clause opens like a statement of clinical context (CONTEXT_OPENING)."""
    return _CONTEXT_RE.search(clause.strip()) is not None


def _arbitrate(found: list[tuple[int, Ask]], bank: IntentBank, clause: str) -> list[tuple[int, Ask]]:
    """Several intents in one clause: keep those whose exemplars the clause resembles nearly as
    well as the best one's (within CONFLICT_MARGIN); all of them if none is close at all."""
    from agent.planners.intent_embed import CONFLICT_MARGIN

    scores = bank.scores(clause)
    sims = {ask.intent: scores.get(ask.intent, (0.0, ""))[0] for _, ask in found}
    best = max(sims.values())
    if best < bank.min_similarity:
        return found
    return [(pos, ask) for pos, ask in found if sims[ask.intent] >= best - CONFLICT_MARGIN]


def find_asks(instruction: str, bank: IntentBank | None = None) -> list[Ask]:
    """The intents of the instruction, clause by clause, with their targets.

    A clause with targets but no intent (``... and the spleen``) adds them to the previous ask; a
    clause with an intent but no target (``... and measure their volumes``) inherits the previous
    clause's targets. A clause with no keyword intent (and nothing to add to a previous ask) is
    read by the embedding ``bank`` when one is given.
    """
    from agent.planners.intent_embed import NO_TOOL

    asks: list[Ask] = []
    previous_targets: list[str] = []
    for clause in split_clauses(normalise_instruction(instruction)):
        targets = find_targets(clause)
        found, negated = _keyword_intents(clause, targets)
        if negated and not found:
            continue
        bare = bool(targets) and is_bare(clause)
        if bare and not found and not asks and any(is_finding(t) for t in targets):
            found = [(0, Ask("locate", list(targets), clause, len(clause), weak=True))]
        elif not found and bank is not None and not bare and not (targets and asks):
            match = bank.nearest(clause)
            if match is not None and match.intent != NO_TOOL:
                found = [(0, Ask(match.intent, list(targets), clause, EMBEDDED))]
        elif len(found) > 1 and bank is not None:
            found = _arbitrate(found, bank, clause)
        if is_context(clause):
            for _, ask in found:
                ask.context = ask.context or ask.weak or ask.intent == "knowledge" or ask.keyword_end == EMBEDDED
        if not found:
            if targets and asks:
                for t in targets:
                    if t not in asks[-1].targets:
                        asks[-1].targets.append(t)
            previous_targets = targets or previous_targets
            continue
        if not targets and any(a.intent == "knowledge" for _, a in found) and _STRONG_KNOWLEDGE_RE.search(clause):
            # "How long is recovery after surgery?": a textbook question; its "how long" asks
            # for no measurement of what an earlier clause named.
            found = [(p, a) for p, a in found if a.intent not in TARGET_REQUIRED]
        for _, ask in found:
            if not ask.targets and ask.intent in TARGET_REQUIRED:
                ask.targets = list(previous_targets)
                if not ask.targets and ask.keyword_end != EMBEDDED:
                    phrase = _free_phrase(clause, ask.keyword_end)
                    if phrase and not re.search(DEICTIC, phrase, re.IGNORECASE):
                        ask.targets = [phrase]
                        ask.free_target = True
        if re.search(IMAGE_PROPERTIES, clause, re.IGNORECASE):
            # A question about the image itself: no report, no search for an unnamed structure.
            found = [(p, a) for p, a in found if a.intent != "report" and not a.free_target]
        if re.search(ACQUISITION_PARAMETERS, clause, re.IGNORECASE):
            # An acquisition parameter: the header answers it, not a classifier.
            found = [(p, a) for p, a in found if a.intent not in ("classify", "report", "knowledge")]
        if any(a.intent not in TARGET_REQUIRED for _, a in found):
            # "Which part of the body was scanned": beside a non-image-task intent, a task whose
            # target is only a guessed phrase is that intent's wording, not a second ask.
            found = [(p, a) for p, a in found if not (a.intent in TARGET_REQUIRED and (a.free_target or not a.targets))]
        asks.extend(ask for _, ask in found)
        previous_targets = targets or previous_targets
    return _resolve_conflicts(asks)


def _resolve_conflicts(asks: list[Ask]) -> list[Ask]:
    """Drop asks another ask covers (SUPPRESSES), and generic knowledge questions that are really
    about the image: their clause points at the image or asks for an image task too (unless they
    use strong knowledge words)."""
    if any(not a.context for a in asks):
        asks = [a for a in asks if not a.context]
    kept: list[Ask] = []
    for ask in asks:
        covered = any(
            ask.intent in SUPPRESSES.get(other.intent, ()) and set(ask.targets) <= set(other.targets)
            for other in asks
            if other is not ask
        )
        if not covered:
            kept.append(ask)

    def about_image(ask: Ask) -> bool:
        beside_task = any(o.clause == ask.clause and o.intent != "knowledge" for o in kept)
        return beside_task or re.search(DEICTIC, ask.clause, re.IGNORECASE) is not None

    return [
        a
        for a in kept
        if a.intent != "knowledge" or re.search(KNOWLEDGE_STRONG, a.clause, re.IGNORECASE) or not about_image(a)
    ]


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
        if self.embeddings and _needs_bank(ctx.instruction):
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


def _needs_bank(instruction: str) -> bool:
    """Some clause of the instruction has no keyword intent (no negated one, and is not a bare list
    of structures): only then is the embedding model worth loading."""
    asked = False
    for clause in split_clauses(normalise_instruction(instruction)):
        targets = find_targets(clause)
        found, negated = _keyword_intents(clause, targets)
        bare = bool(targets) and is_bare(clause)
        if (not found and not negated and not bare and not (targets and asked)) or len(found) > 1:
            return True
        asked = asked or bool(found)
    return False


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
