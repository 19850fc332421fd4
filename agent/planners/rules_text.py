"""Text the rules planner reads: radiologist shorthand expanded, typos corrected, verb inflections
reduced to their base form, negations found.

All word lists are data in :mod:`agent.planners.rules_tables` (SHORTHAND, TYPO_TARGETS,
SWAP_TARGETS, TYPO_PROTECTED, LEMMA_BASES, LEMMA_IRREGULAR, LEMMA_KEEP, NEGATION_CUES); this module only applies them.
"""
from __future__ import annotations

import re

from agent.planners.rules_tables import (
    LEMMA_BASES,
    LEMMA_IRREGULAR,
    LEMMA_KEEP,
    NEGATION_CUES,
    NEGATION_WINDOW,
    POST_NEGATION_CUES,
    SHORTHAND,
    SWAP_TARGETS,
    TYPO_PROTECTED,
    TYPO_TARGETS,
)

_SHORTHAND_RE = [(re.compile(p, re.IGNORECASE), r) for p, r in SHORTHAND]
_NEGATION_RE = re.compile(NEGATION_CUES, re.IGNORECASE)
_POST_NEGATION_RE = re.compile(POST_NEGATION_CUES, re.IGNORECASE)
#: Tokens considered for typo correction (shorter ones are too ambiguous).
_WORD_RE = re.compile(r"[A-Za-z]{4,}")


def _swapped(a: str, b: str) -> bool:
    """True if ``a`` is ``b`` with two adjacent letters swapped ("waht" / "what")."""
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


def _one_edit_apart(a: str, b: str) -> bool:
    """True if ``a`` becomes ``b`` by one insertion, deletion, substitution or adjacent swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1 or _swapped(a, b)
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1:]


_SWAP_WORD_RE = re.compile(r"[A-Za-z]{3,}")


def correct_typos(text: str) -> str:
    """Tokens that are a SWAP_TARGETS word with two adjacent letters swapped (``riks`` -> ``risk``),
    or one edit away from exactly one intent word (``segmnet`` -> ``segment``), corrected."""

    def unswap(m: re.Match[str]) -> str:
        low = m.group(0).lower()
        near = [t for t in SWAP_TARGETS if _swapped(low, t)]
        return near[0] if len(near) == 1 else m.group(0)

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        low = word.lower()
        if low in TYPO_PROTECTED or low in TYPO_TARGETS:
            return word
        near = [t for t in TYPO_TARGETS if len(t) >= 5 and _one_edit_apart(low, t)]
        return near[0] if len(near) == 1 else word

    return _WORD_RE.sub(fix, _SWAP_WORD_RE.sub(unswap, text))


def inflections(base: str) -> set[str]:
    """The regular inflected forms of the verb ``base`` (a superset: forms no word has do no harm)."""
    forms = {base + "s", base + "es", base + "ed", base + "ing"}
    if base.endswith("e"):
        forms |= {base + "d", base[:-1] + "ing"}
    if base.endswith("y"):
        forms |= {base[:-1] + "ies", base[:-1] + "ied"}
    if len(base) >= 3 and base[-1] not in "aeiouwxy" and base[-2] in "aeiou" and base[-3] not in "aeiou":
        forms |= {base + base[-1] + "ed", base + base[-1] + "ing"}
    return forms


def _lemma_table() -> dict[str, str]:
    table = {form: base for base in LEMMA_BASES for form in inflections(base)}
    table.update(LEMMA_IRREGULAR)
    for word in (*LEMMA_BASES, *LEMMA_KEEP):
        table.pop(word, None)
    return table


_LEMMAS = _lemma_table()
_TOKEN_RE = re.compile(r"[A-Za-z]+")


def lemmatise(text: str) -> str:
    """Inflected forms of the intent verbs replaced by their base form ("writing up" -> "write up")."""
    return _TOKEN_RE.sub(lambda m: _LEMMAS.get(m.group(0).lower(), m.group(0)), text)


def normalise_instruction(instruction: str) -> str:
    """Shorthand expanded, typos corrected and intent verbs lemmatised: what the keyword tables read."""
    text = instruction
    for pattern, replacement in _SHORTHAND_RE:
        text = pattern.sub(replacement, text)
    return lemmatise(correct_typos(text))


def negated_at(clause: str, start: int, end: int | None = None) -> bool:
    """A negation cue among the NEGATION_WINDOW words before ``start`` ("don't segment"), or one
    right after ``end`` ("report not required")."""
    before = clause[:start].split()[-NEGATION_WINDOW:]
    if _NEGATION_RE.search(" ".join(before)) is not None:
        return True
    return end is not None and _POST_NEGATION_RE.search(clause[end:]) is not None
