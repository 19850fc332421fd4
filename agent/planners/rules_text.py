"""Text the rules planner reads: radiologist shorthand expanded, typos corrected, negations found.

All word lists are data in :mod:`agent.planners.rules_tables` (SHORTHAND, TYPO_TARGETS,
TYPO_PROTECTED, NEGATION_CUES); this module only applies them.
"""
from __future__ import annotations

import re

from agent.planners.rules_tables import (
    NEGATION_CUES,
    NEGATION_WINDOW,
    SHORTHAND,
    TYPO_PROTECTED,
    TYPO_TARGETS,
)

_SHORTHAND_RE = [(re.compile(p, re.IGNORECASE), r) for p, r in SHORTHAND]
_NEGATION_RE = re.compile(NEGATION_CUES, re.IGNORECASE)
#: Tokens considered for typo correction (shorter ones are too ambiguous).
_WORD_RE = re.compile(r"[A-Za-z]{4,}")


def _one_edit_apart(a: str, b: str) -> bool:
    """True if ``a`` becomes ``b`` by one insertion, deletion, substitution or adjacent swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1:]


def correct_typos(text: str) -> str:
    """Tokens one edit away from exactly one intent word (``segmnet`` -> ``segment``) corrected."""

    def fix(m: re.Match[str]) -> str:
        word = m.group(0)
        low = word.lower()
        if low in TYPO_PROTECTED or low in TYPO_TARGETS:
            return word
        near = [t for t in TYPO_TARGETS if len(t) >= 5 and _one_edit_apart(low, t)]
        return near[0] if len(near) == 1 else word

    return _WORD_RE.sub(fix, text)


def normalise_instruction(instruction: str) -> str:
    """Shorthand expanded and typos corrected: what the keyword tables read."""
    text = instruction
    for pattern, replacement in _SHORTHAND_RE:
        text = pattern.sub(replacement, text)
    return correct_typos(text)


def negated_at(clause: str, start: int) -> bool:
    """A negation cue among the NEGATION_WINDOW words before ``start`` ("don't segment")."""
    before = clause[:start].split()[-NEGATION_WINDOW:]
    return _NEGATION_RE.search(" ".join(before)) is not None
