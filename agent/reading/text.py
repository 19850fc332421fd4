"""An instruction as the readers see it: tokens, shorthand expanded, typos corrected, clauses.

Shorthand ("seg", "vols", "cxr", "r/o") is expanded from ``words.json``; "?PTX" reads "query
pneumothorax". A token is corrected only when it is no word at all (neither a whole word of the
sentence encoder's vocabulary nor a vocabulary term) and exactly one correction word or target
word is one edit away ("segmnet" -> "segment", "kidny" -> "kidney"): real words ("river", "lover")
are never touched, without a list of them.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from agent.reading.slots import is_negated
from agent.reading.vocabulary import Vocabulary, tokens

#: "?X" (a query about X), and separators a tokenizer would lose: dashes between words, "+".
_QUERY = re.compile(r"(?<![\w?])\?\s*(?=[A-Za-z])")
_DASH = re.compile(r"\s+[-\u2013\u2014]+\s+|\s*[\u2013\u2014]\s*")
_PLUS = re.compile(r"(?<=[A-Za-z])\s*\+\s*(?=[A-Za-z])")


def _swapped(a: str, b: str) -> bool:
    if len(a) != len(b) or a == b:
        return False
    diff = [i for i in range(len(a)) if a[i] != b[i]]
    return len(diff) == 2 and diff[1] == diff[0] + 1 and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]]


def one_edit_apart(a: str, b: str) -> bool:
    """``a`` becomes ``b`` by one insertion, deletion, substitution or adjacent swap."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        return sum(x != y for x, y in zip(a, b)) == 1 or _swapped(a, b)
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    i = 0
    while i < len(short) and short[i] == long_[i]:
        i += 1
    return short[i:] == long_[i + 1:]


@functools.cache
def encoder_words(vocab_file: Path | None) -> frozenset[str]:
    """Whole words of the sentence encoder's WordPiece vocabulary (no ``##`` pieces)."""
    if vocab_file is None or not vocab_file.is_file():
        return frozenset()
    words = vocab_file.read_text(encoding="utf-8").split()
    return frozenset(w for w in words if w.isalpha() and len(w) > 1)


@dataclass(frozen=True)
class Normaliser:
    vocabulary: Vocabulary
    #: Known real words (never corrected); empty: no typo correction at all.
    known_words: frozenset[str]

    @functools.cached_property
    def _targets_for_correction(self) -> tuple[str, ...]:
        pool = set(self.vocabulary.words.correction_words) | {
            w for w in self.vocabulary.target_words if len(w) >= 4 and w.isalpha()
        }
        return tuple(sorted(pool))

    def correct(self, token: str) -> str:
        if (
            not self.known_words
            or len(token) < 4
            or not token.isalpha()
            or token in self.known_words
            or token in self.vocabulary.target_words
            or token in self.vocabulary.words.correction_words
        ):
            return token
        # A dropped, swapped or wrong letter ("kidny", "segmnet"); a letter too many only in a long
        # word ("stomache"), never in a short one ("supine" is not "spine").
        near = [
            w for w in self._targets_for_correction
            if (len(w) >= len(token) or len(token) >= 7) and one_edit_apart(token, w)
        ]
        return near[0] if len(near) == 1 else token

    def normalise(self, text: str) -> list[str]:
        """Tokens of ``text``: shorthand expanded, "?X" as "query X", typos corrected."""
        text = re.sub(r"\bno\.\s*(?=of\b)", "number ", text, flags=re.IGNORECASE)  # "no. of nodules"
        text = re.sub(r"(?<=[A-Za-z])\s*#(?!\s*\d)", " fracture", text)  # "scaphoid #"
        text = _QUERY.sub(" query ", text)
        text = _DASH.sub(" ; ", text)
        text = _PLUS.sub(" and ", text)
        shorthand = self.vocabulary.words.shorthand
        for key in sorted((k for k in shorthand if "/" in k), key=len, reverse=True):
            text = re.sub(rf"(?<![\w/]){re.escape(key)}(?![\w/])", " " + shorthand[key] + " ", text, flags=re.IGNORECASE)
        out: list[str] = []
        for token in tokens(text):
            expansion = shorthand.get(token)
            if expansion is not None:
                out.extend(tokens(expansion))
            else:
                out.append(self.correct(token))
        return out


#: Tokens that end a clause, and those that may (see :func:`split_clauses`).
CLAUSE_END = frozenset({".", "?", "!", ";", ":"})
JOINERS = frozenset({"and", "plus"})
SPLITTERS = frozenset({"then", "but"})
_AFTER_JOINER = frozenset({"the", "a", "an", "both", "also", "then", "its", "their", "my", "his", "her", "any", "all"})


@dataclass(frozen=True)
class Clause:
    tokens: tuple[str, ...]
    #: The clause ended with a question mark.
    question: bool
    #: The clause follows a colon: it spells out the one before ("tell me what this shows: CT or MR?").
    after_colon: bool = False
    #: The clause ends with a colon: a heading ("CT abdomen:", "Request:").
    heading: bool = False

    @property
    def text(self) -> str:
        return " ".join(self.tokens)


def _starts_target(tokens_: list[str], i: int, vocabulary: Vocabulary) -> bool:
    """A target phrase or a side word starts at ``i`` (after fillers such as "the")."""
    while i < len(tokens_) and tokens_[i] in _AFTER_JOINER:
        i += 1
    if i >= len(tokens_):
        return False
    words = vocabulary.words
    if tokens_[i] in words.laterality.left or tokens_[i] in words.laterality.right:
        return True
    for n in range(min(vocabulary.longest_phrase, len(tokens_) - i), 0, -1):
        if tuple(tokens_[i:i + n]) in vocabulary.phrases:
            return True
    return any(tuple(tokens_[i:i + n]) == phrase for phrase, n in vocabulary.image_phrases.items())


def split_clauses(tokens_: list[str], vocabulary: Vocabulary) -> list[Clause]:
    """Clauses at sentence punctuation, commas, "then", "but", "as well as"/"along with", and at
    "and"/"plus" unless a target or side word follows ("the liver and spleen" stays whole)."""
    clauses: list[Clause] = []
    current: list[str] = []
    colon = False

    def close(question: bool = False, heading: bool = False) -> None:
        nonlocal colon
        if current:
            clauses.append(Clause(tuple(current), question, colon, heading))
            current.clear()
            colon = False

    i = 0
    while i < len(tokens_):
        tok = tokens_[i]
        if tok in CLAUSE_END:
            close(tok == "?", tok == ":")
            colon = tok == ":"
        elif tok == ",":
            close()
        elif tok in vocabulary.words.negation_split_words and current and is_negated(vocabulary, tuple(current), False):
            close()  # "don't need a report just tell me ...": the request starts here
            current.append(tok)
        elif tok == "query" and current and current[-1] != "query":
            close()  # "?effusion ?consolidation": one question each
            current.append(tok)
        elif tok in SPLITTERS:
            close()
            if tok == "but":  # kept: "but not the liver" is read as an exclusion
                current.append(tok)
        elif tok in JOINERS and not _starts_target(tokens_, i + 1, vocabulary):
            close()
        elif tok == "as" and tokens_[i + 1:i + 3] == ["well", "as"]:
            close()
            i += 2
        elif tok == "along" and tokens_[i + 1:i + 2] == ["with"]:
            close()
            i += 1
        else:
            current.append(tok)
        i += 1
    close()
    return clauses
