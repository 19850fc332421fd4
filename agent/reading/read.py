"""Reading an instruction: what it asks for (intents, learned) and about what (slots, parsed).

1. Coordinates and slice numbers are read from the raw text (:mod:`agent.reading.prompts`) and
   taken out of it.
2. The rest is normalised and cut into clauses (:mod:`agent.reading.text`).
3. Each clause: its targets, sides and exclusions, whether it is negated or a yes/no question
   (:mod:`agent.reading.slots`), and its intent from the classifier
   (:mod:`agent.reading.intents`) on the clause with its targets masked.
4. Clauses become asks: a clause naming only targets adds them to the ask before it ("... and
   the spleen"), or, alone and about findings, asks whether they are there ("Fracture?"); a
   clause with a task but no target inherits the previous targets ("... and measure them"); a
   negated clause is dropped, and its targets become exclusions when it names nothing else
   ("..., but not the liver"); a clause of side words limits the ask before it ("..., left only").
5. Coordinates make the region ask a prompted segmentation (MedSAM's job).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from agent.reading.intents import NO_INTENT, ClauseScorer
from agent.reading.prompts import (
    PromptError,
    PromptSlots,
    SliceSlots,
    prompt_spans,
    read_prompts,
    read_slices,
)
from agent.reading.slots import (
    Mention,
    find_mentions,
    free_phrase,
    has_presence_cue,
    is_bare,
    is_context,
    is_negated,
    is_polar,
    mask_text,
    only_fillers,
    side_only,
)
from agent.reading.text import Clause, Normaliser, split_clauses
from agent.reading.vocabulary import Vocabulary

#: Intents about a region of the image (they need a target, or coordinates).
REGION_INTENTS = frozenset({"segment", "measure", "locate", "count", "presence", "size"})
#: An ask of a key intent covers asks of the listed intents on the same targets.
COVERS: dict[str, frozenset[str]] = {
    "segment": frozenset({"locate", "presence", "count"}),
    "measure": frozenset({"locate", "presence", "count"}),
}
#: Below this probability a clause is read as asking nothing.
MIN_INTENT_PROBABILITY = 0.2


@dataclass
class Ask:
    """One thing the user asks for."""

    intent: str
    targets: list[Mention] = field(default_factory=list)
    #: Targets the user said to leave out.
    excluded: list[str] = field(default_factory=list)
    #: "yes/no" or "count": the explicit answer the question needs.
    answer: str | None = None
    clause: str = ""
    probability: float = 1.0
    prompt: PromptSlots | None = None
    #: 1-based slice numbers and instance numbers the user named.
    slices: tuple[int, ...] = ()
    instances: tuple[int, ...] = ()
    #: The target was read as a free phrase (no vocabulary term).
    free_target: bool = False
    #: Read from a statement of clinical context: dropped when the instruction asks anything else.
    context: bool = False

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(m.name for m in self.targets))


@dataclass(frozen=True)
class Reading:
    asks: list[Ask]
    prompt: PromptSlots = field(default_factory=PromptSlots)
    slices: SliceSlots = field(default_factory=SliceSlots)
    #: Why the coordinates could not be used, if they could not.
    prompt_error: str | None = None
    #: Some word of the instruction names the chest.
    chest: bool = False


@dataclass(frozen=True)
class _ClauseReading:
    clause: Clause
    mentions: list[Mention]
    negated: bool
    polar: bool
    bare: bool
    intent: str
    probability: float
    context: bool = False


class InstructionReader:
    """Reads instructions with one vocabulary and one intent scorer (None: the learned reading is
    unavailable, and only coordinates can be read)."""

    def __init__(self, vocabulary: Vocabulary, normaliser: Normaliser, scorer: ClauseScorer | None) -> None:
        self.vocabulary = vocabulary
        self.normaliser = normaliser
        self.scorer = scorer

    def _clause(self, clause: Clause) -> _ClauseReading:
        vocab = self.vocabulary
        mentions = find_mentions(vocab, clause.tokens)
        negated = is_negated(vocab, clause.tokens, clause.question)
        polar = is_polar(vocab, clause.tokens)
        bare = bool(mentions) and is_bare(vocab, clause.tokens, mentions)
        intent, probability = NO_INTENT, 1.0
        known = self.normaliser.known_words
        if self.scorer is not None and not only_fillers(vocab, clause.tokens, clause.heading, clause.question):
            scores = self.scorer.scores(mask_text(vocab, clause.tokens, mentions, known))
            intent, probability = max(scores.items(), key=lambda kv: kv[1])
            if probability < MIN_INTENT_PROBABILITY:
                intent = NO_INTENT
        if has_presence_cue(vocab, clause.tokens) and any(_findable(vocab, m) for m in mentions):
            intent = "presence"
        context = is_context(vocab, clause.tokens, clause.question)
        return _ClauseReading(clause, mentions, negated, polar, bare, intent, probability, context)

    def _tokens(self, instruction: str, rows: int | None, cols: int | None) -> tuple[list[str], PromptSlots, SliceSlots, str | None]:
        """The instruction's tokens once its coordinates and slice numbers are taken out."""
        words = self.vocabulary.words
        prompt, error = PromptSlots(), None
        try:
            prompt = read_prompts(instruction, words, rows, cols)
        except PromptError as exc:
            error = str(exc)
        slices = read_slices(instruction, words)
        text = _without(instruction, [*prompt_spans(instruction, words), *slices.spans])
        return self.normaliser.normalise(text), prompt, slices, error

    def masked_clauses(self, text: str) -> list[str]:
        """The classifier's inputs for ``text``: each clause with its targets masked."""
        tokens = self._tokens(text, None, None)[0]
        out = []
        for clause in split_clauses(tokens, self.vocabulary):
            mentions = find_mentions(self.vocabulary, clause.tokens)
            out.append(mask_text(self.vocabulary, clause.tokens, mentions, self.normaliser.known_words))
        return out

    def read(self, instruction: str, rows: int | None = None, cols: int | None = None) -> Reading:
        vocab = self.vocabulary
        tokens, prompt, slices, error = self._tokens(instruction, rows, cols)
        chest = any(t in vocab.words.chest_words for t in tokens)
        readings = [self._clause(c) for c in split_clauses(tokens, vocab)]
        asks = _assemble(vocab, readings, self.normaliser.known_words)
        asks = _apply_prompt(asks, prompt, slices, error is not None)
        return Reading(_resolve(asks), prompt, slices, error, chest)


def _without(text: str, spans: list[tuple[int, int]]) -> str:
    for start, end in sorted(spans, reverse=True):
        text = text[:start] + " " + text[end:]
    return text


def _add_targets(ask: Ask, mentions: list[Mention]) -> None:
    for m in mentions:
        if m.location:
            continue
        if m.excluded:
            ask.excluded.append(m.name)
        elif all(t.sided_name != m.sided_name for t in ask.targets):
            ask.targets.append(m)


def _answer(intent: str, polar: bool) -> str | None:
    if intent == "count":
        return "count"
    if intent in ("presence", "size") or polar:
        return "yes/no"
    return None


def _assemble(vocab: Vocabulary, readings: list[_ClauseReading], known: frozenset[str] = frozenset()) -> list[Ask]:
    asks: list[Ask] = []
    previous: list[Mention] = []
    negated_intent: str | None = None
    pending_excluded: list[str] = []
    for r in readings:
        toks = r.clause.tokens
        included = [m for m in r.mentions if not m.excluded and not m.location]
        if r.negated:
            only_targets = bool(r.mentions) and is_bare(vocab, toks, r.mentions)
            if only_targets or side_only(vocab, toks) is not None:
                target = asks[-1] if asks else None
                if target is not None:
                    target.excluded.extend(m.sided_name for m in r.mentions)
                    side = side_only(vocab, toks)
                    if side is not None:
                        _drop_side(target, side)
                else:  # "Not the kidneys this time - only the liver and spleen."
                    pending_excluded.extend(m.sided_name for m in r.mentions)
            else:
                negated_intent = r.intent if r.intent != NO_INTENT else None
                previous = included or previous  # "don't measure the nodule, only tell me where it is"
            continue
        side = side_only(vocab, toks) if not r.mentions else None
        if side is not None and asks:
            _keep_side(asks[-1], side)
            continue
        if r.bare:
            asking = r.clause.question or r.polar
            excluded = [m.name for m in r.mentions if m.excluded]
            if asking and any(_findable(vocab, m) for m in included):
                # "Fracture?", "query L effusion", "any mass?": is it there? ("Liver?" asks nothing.)
                asks.append(Ask("presence", included, excluded, "yes/no", r.clause.text))
            elif negated_intent is not None and negated_intent in REGION_INTENTS and not asking:
                # "don't segment the liver, only the spleen"
                asks.append(Ask(negated_intent, included, excluded, clause=r.clause.text))
                negated_intent = None
            elif not asking and not asks and (pending_excluded or any(m.name == "all organs" for m in included)):
                # "Every organ, but not the colon"; "not the kidneys - only the liver and spleen"
                asks.append(Ask("segment", included, [*pending_excluded, *excluded], clause=r.clause.text))
            elif asks and asks[-1].intent in REGION_INTENTS:
                _add_targets(asks[-1], r.mentions)
            elif not asks and any(_findable(vocab, m) for m in included):
                asks.append(Ask("presence", included, excluded, "yes/no", r.clause.text))
            elif asking and r.intent in ("size", "report", "classify"):
                asks.append(Ask(r.intent, included, excluded, "yes/no", r.clause.text, r.probability))
            previous = included or previous
            continue
        if r.intent == NO_INTENT:
            if included and asks and asks[-1].intent in REGION_INTENTS and not r.clause.question:
                _add_targets(asks[-1], r.mentions)
            previous = included or previous
            continue
        if r.clause.after_colon and r.intent == "classify" and asks and asks[-1].intent == "report":
            asks.pop()  # "tell me what this shows: is it an MRI or a CT?" asks for the modality
        ask = Ask(r.intent, [], [], _answer(r.intent, r.polar), r.clause.text, r.probability, context=r.context)
        _add_targets(ask, r.mentions)
        if ask.intent in REGION_INTENTS and pending_excluded:
            ask.excluded.extend(pending_excluded)
            pending_excluded = []
        if ask.intent == "presence" and ask.targets and not any(_findable(vocab, m) for m in ask.targets):
            ask.intent, ask.targets = "report", []  # "is there anything wrong with my lungs?" is a read
        if not ask.targets and r.intent in REGION_INTENTS:
            ask.targets = [replace(m) for m in previous]
            if not ask.targets:
                phrase = free_phrase(vocab, toks, known)
                if phrase is not None:
                    ask.targets = [Mention(phrase, None, 0, 0)]
                    ask.free_target = True
        asks.append(ask)
        previous = included or previous
    for k, ask in enumerate(asks[:-1]):  # "detect and localise the mass": the verb before shares it
        following = asks[k + 1]
        if ask.intent in REGION_INTENTS and not ask.targets and following.intent in REGION_INTENTS:
            ask.targets = list(following.targets)
    return asks


def _findable(vocab: Vocabulary, mention: Mention) -> bool:
    """A finding or device (or an unknown disease word), not plain anatomy."""
    entry = vocab.entry(mention.name)
    return entry is None or entry.kind in ("finding", "device")


def _keep_side(ask: Ask, side: str) -> None:
    ask.targets = [replace(m, side=side) if m.side is None else m for m in ask.targets]


def _drop_side(ask: Ask, side: str) -> None:
    other = "right" if side == "left" else "left"
    _keep_side(ask, other)


def _apply_prompt(asks: list[Ask], prompt: PromptSlots, slices: SliceSlots, prompt_failed: bool) -> list[Ask]:
    """Coordinates make one prompted segmentation of the region asks; slices go to region asks."""
    for ask in asks:
        if ask.intent in REGION_INTENTS:
            ask.slices, ask.instances = slices.slices, slices.instances
    if not prompt.given and not prompt_failed:
        return asks
    region = [a for a in asks if a.intent in REGION_INTENTS]
    others = [a for a in asks if a.intent not in REGION_INTENTS]
    if not region and all(a.intent == "classify" for a in others):
        others = []  # "what is inside the box (..)?" asks about the region
    if prompt_failed:
        return others  # the region asks cannot be served: the reading's prompt_error says why
    intent = "measure" if any(a.intent in ("measure", "size") for a in region) else "segment"
    prompted = Ask(intent, [], [], None, " ".join(a.clause for a in region), prompt=prompt,
                   slices=slices.slices, instances=slices.instances)
    for a in region:
        _add_targets(prompted, [t for t in a.targets if not a.free_target])
    return [prompted, *others]


def _resolve(asks: list[Ask]) -> list[Ask]:
    """Drop what statements of context seemed to ask when anything else is asked, and asks
    another ask covers (segmenting the nodule covers finding it); a lone "is anything wrong?" is
    a read."""
    if any(not a.context for a in asks):
        asks = [a for a in asks if not a.context]
    if any(a.intent != "analyse" for a in asks):
        asks = [a for a in asks if a.intent != "analyse"]  # "analyse" is what asks for nothing specific
    kept: list[Ask] = []
    for ask in asks:
        covered = any(
            ask.intent in COVERS.get(other.intent, ())
            and {t.name for t in ask.targets} <= {t.name for t in other.targets}
            and other.prompt is None
            for other in asks
            if other is not ask
        )
        if not covered:
            kept.append(ask)
    if len(kept) == 1 and kept[0].intent == "presence" and not kept[0].targets and kept[0].prompt is None:
        return [Ask("report", [], [], "yes/no", kept[0].clause, kept[0].probability)]
    return kept
