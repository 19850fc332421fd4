"""Reading an instruction for the rule-based planner: clauses, intents and targets -> asks.

The instruction is normalised (:mod:`agent.planners.rules_text`), cut into clauses, and each
clause's intents and targets are found with the keyword tables of
:mod:`agent.planners.rules_tables`; :func:`find_asks` returns what the user asks for, which
:mod:`agent.planners.rules` turns into tool calls. How each table is used is described in the
docstring of :mod:`agent.planners.rules`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agent.planners.rules_tables import (
    ACQUISITION_PARAMETERS,
    BARE_CLAUSE_WORDS,
    CLAUSE_PRECEDENCE,
    CLAUSE_SPLIT,
    CONTEXT_OPENING,
    CONTINUATION_WORDS,
    DEICTIC,
    FINDING_FORM,
    FINDING_TARGETS,
    IMAGE_PROPERTIES,
    INTENT_PATTERNS,
    KNOWLEDGE_STRONG,
    NOT_STRUCTURES,
    PHRASE_STOP,
    SUPPRESSES,
    TARGET_REQUIRED,
    TARGET_TERMS,
    VAGUE_INTENT_PATTERNS,
    WEAK_INTENT_PATTERNS,
)
from agent.planners.rules_text import negated_at, normalise_instruction

if TYPE_CHECKING:
    from agent.planners.intent_embed import IntentBank

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
        if a.intent != "knowledge" or _STRONG_KNOWLEDGE_RE.search(a.clause) or not about_image(a)
    ]


def needs_bank(instruction: str) -> bool:
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
