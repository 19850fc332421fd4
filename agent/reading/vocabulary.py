"""The planner's vocabularies: data files, validated once when loaded.

``data/targets.json`` lists the structures and findings a user may name (canonical name, kind,
synonyms, and what the tools know of them); ``data/words.json`` holds the small word lists the
slot parsers use (sides, negation and exclusion cues, shorthand, question openers);
``data/answers.json`` the thresholds that turn tool outputs into yes/no/uncertain answers. The parsers
in :mod:`agent.reading` only apply these lists; extending the planner to a new structure or
abbreviation is an edit of a data file, checked here: names and synonyms are unique, kinds and
flags consistent, and every list non-empty.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DATA_DIR = Path(__file__).with_name("data")

TargetKind = Literal["all", "organ", "anatomy", "finding", "device"]

#: Words and punctuation as the readers see them: lower case, hyphens and slashes as spaces.
TOKEN_RE = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[?.,;:!]")


def tokens(text: str) -> list[str]:
    """``text`` as the vocabularies are matched against: lower-case word tokens and punctuation."""
    return TOKEN_RE.findall(text.lower().replace("\u2019", "'").replace("-", " ").replace("/", " "))


class TargetEntry(BaseModel):
    """One structure or finding a user may name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    kind: TargetKind
    synonyms: tuple[str, ...] = Field(min_length=1)
    #: Known to ``organ segmentation 3d`` (its default organ list, when its schema has no enum).
    organ3d: bool = False
    #: Has a left and a right (a side word before or after it limits it to one).
    sided: bool = False
    #: A chest-radiograph finding the classifier answers yes/no for (a label of its findings set).
    cxr_finding: bool = False
    #: A finding that means this organ is enlarged ("splenomegaly" -> "spleen"): a question about
    #: it is a size question about the organ when a tool can measure the organ.
    enlarged_organ: str | None = None

    @field_validator("name")
    @classmethod
    def _lower(cls, v: str) -> str:
        if v != v.lower().strip():
            raise ValueError(f"target name {v!r} must be lower case without surrounding blanks")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TargetEntry:
        if self.name not in self.synonyms:
            raise ValueError(f"{self.name}: the name must be among its synonyms")
        if self.cxr_finding and self.kind != "finding":
            raise ValueError(f"{self.name}: only findings can be chest-radiograph findings")
        if self.organ3d and self.kind != "organ":
            raise ValueError(f"{self.name}: only organs can be known to the 3D organ tool")
        return self


class Laterality(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    left: tuple[str, ...] = Field(min_length=1)
    right: tuple[str, ...] = Field(min_length=1)
    both: tuple[str, ...] = Field(min_length=1)


class Words(BaseModel):
    """``data/words.json``: the slot parsers' word lists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    laterality: Laterality
    side_abbreviations: frozenset[str]
    side_modifiers: frozenset[str]
    shorthand: dict[str, str]
    negation_openers: tuple[str, ...] = Field(min_length=1)
    negation_closers: tuple[str, ...] = Field(min_length=1)
    exclusion_cues: tuple[str, ...] = Field(min_length=1)
    clause_fillers: frozenset[str]
    anaphora: frozenset[str]
    finding_suffixes: tuple[str, ...] = Field(min_length=1)
    finding_suffix_exceptions: frozenset[str]
    polar_openers: frozenset[str]
    polar_phrases: tuple[str, ...] = Field(min_length=1)
    request_openers: tuple[str, ...] = Field(min_length=1)
    chest_words: frozenset[str]
    radiograph_modalities: frozenset[str]
    volume_modalities: frozenset[str]
    correction_words: frozenset[str]
    placeholder: str = Field(min_length=1)
    slice_words: tuple[str, ...] = Field(min_length=1)
    instance_words: tuple[str, ...] = Field(min_length=1)
    pixel_words: tuple[str, ...] = Field(min_length=1)
    normalised_words: tuple[str, ...] = Field(min_length=1)
    background_point_words: tuple[str, ...] = Field(min_length=1)
    determiners: frozenset[str]
    phrase_stops: frozenset[str]
    not_structures: frozenset[str]
    #: "all/every/each (of the) (abdominal) organ(s)": every structure the tool knows.
    all_quantifiers: frozenset[str]
    all_nouns: frozenset[str]
    #: Words naming the image or its modality: the classifier reads them all as one word
    #: (``image_placeholder``), so "where is it on this chest X-ray" and "... on this MRI" meet.
    image_words: tuple[str, ...] = Field(min_length=1)
    image_placeholder: str = Field(min_length=1)
    #: A clause of these words alone says nothing ("please", "thanks a lot").
    courtesy_words: frozenset[str]
    #: Prepositions that make an organ named after a finding its location ("nodule in the lung").
    locatives: frozenset[str]
    #: First words of a statement of clinical context ("Known lung cancer", "The patient fell"):
    #: beside a request, what such a clause seems to ask is context, not an ask.
    context_openers: frozenset[str]
    #: ... unless the statement is a request in the first person ("I need the lungs outlined").
    first_person_requests: tuple[str, ...] = Field(min_length=1)
    #: Words that ask whether a named finding is there, whatever else the clause says ("CTA chest
    #: r/o PE", "?PTX").
    presence_cues: tuple[str, ...] = Field(min_length=1)
    #: Words that start the real request after a negated one ("don't need a report just tell me ...").
    negation_split_words: frozenset[str]

    @model_validator(mode="after")
    def _disjoint_sides(self) -> Words:
        sides = [set(self.laterality.left), set(self.laterality.right), set(self.laterality.both)]
        if sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2]:
            raise ValueError("laterality: a word names two sides")
        for key, value in self.shorthand.items():
            if len(tokens(key)) == 0 or not value.strip():
                raise ValueError(f"shorthand {key!r}: empty key or expansion")
        if not self.side_abbreviations <= set(self.laterality.left) | set(self.laterality.right):
            raise ValueError("side_abbreviations must be left or right words")
        return self


class AnswerSettings(BaseModel):
    """``data/answers.json``: how tool outputs become yes/no/uncertain answers and counts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The classifier label for a chest-radiograph finding, and the label it competes with.
    finding_label: str
    normal_label: str = Field(min_length=1)
    #: Finding probability (against the normal label) at or above which the answer is yes, at
    #: or below which it is no; between them, uncertain.
    classifier_yes: float = Field(gt=0, lt=1)
    classifier_no: float = Field(gt=0, lt=1)
    #: A detection at or above this score answers yes; weaker ones alone answer uncertain.
    detection_yes: float = Field(gt=0, lt=1)
    #: Boxes on neighbouring slices overlapping at least this much are one object when counting.
    link_iou: float = Field(gt=0, le=1)
    #: Imaging kinds and the words naming them ("is this a CT?").
    modality_words: dict[str, tuple[str, ...]]

    @model_validator(mode="after")
    def _ordered(self) -> AnswerSettings:
        if "{finding}" not in self.finding_label:
            raise ValueError("finding_label must contain {finding}")
        if self.classifier_no >= self.classifier_yes:
            raise ValueError("classifier_no must be below classifier_yes")
        return self


@dataclass(frozen=True)
class Vocabulary:
    """Both files, validated, with the lookups the parsers need."""

    targets: tuple[TargetEntry, ...]
    words: Words
    answers: AnswerSettings
    #: Synonym token tuple -> target name, longest synonyms first.
    phrases: dict[tuple[str, ...], str]
    longest_phrase: int

    def entry(self, name: str) -> TargetEntry | None:
        return self.by_name.get(name)

    @functools.cached_property
    def by_name(self) -> dict[str, TargetEntry]:
        return {t.name: t for t in self.targets}

    @property
    def organ3d(self) -> frozenset[str]:
        return frozenset(t.name for t in self.targets if t.organ3d)

    @property
    def cxr_findings(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.targets if t.cxr_finding)

    @functools.cached_property
    def image_phrases(self) -> dict[tuple[str, ...], int]:
        """Image-word token tuples -> their length, longest first."""
        keys = {tuple(tokens(w)) for w in self.words.image_words}
        return {k: len(k) for k in sorted(keys, key=len, reverse=True)}

    @functools.cached_property
    def request_verbs(self) -> frozenset[str]:
        """First words of the paraphrase bank's requests ("segment", "outline", "explain"...):
        a clause opening with one is a request, not a statement."""
        path = DATA_DIR / "paraphrases.jsonl"
        firsts: set[str] = set()
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                row = json.loads(line) if line.strip() else {}
                words = tokens(str(row.get("text", "")))
                if words and row.get("intent") != "none":
                    firsts.add(words[0])
        return frozenset(firsts - self.words.context_openers)

    @functools.cached_property
    def target_words(self) -> frozenset[str]:
        """Every word of every synonym (a token that is one is never "corrected")."""
        return frozenset(w for phrase in self.phrases for w in phrase)


def plural_forms(word: str) -> set[str]:
    """Regular English plurals (and the Latin ones medicine uses) of ``word``."""
    forms = {word + "s", word + "es"}
    if word.endswith("y") and len(word) > 2:
        forms.add(word[:-1] + "ies")
    for singular, plural in (("is", "es"), ("us", "i"), ("a", "ae"), ("um", "a"), ("on", "a"), ("ex", "ices")):
        if word.endswith(singular):
            forms.add(word[: -len(singular)] + plural)
    return forms


class VocabularyError(ValueError):
    """A vocabulary file does not validate; the message names the file and the problem."""


def build_vocabulary(targets_data: object, words_data: object, answers_data: object) -> Vocabulary:
    """Validate both files' contents and index the synonyms (plurals and possessives added)."""
    if not isinstance(targets_data, dict) or not isinstance(targets_data.get("targets"), list):
        raise VocabularyError("targets.json: expected {\"targets\": [...]}")
    try:
        entries = tuple(TargetEntry.model_validate(t) for t in targets_data["targets"])
        words = Words.model_validate(words_data)
        answers = AnswerSettings.model_validate(answers_data)
    except ValueError as exc:
        raise VocabularyError(str(exc)) from None
    names = [t.name for t in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise VocabularyError(f"targets.json: names listed twice: {duplicates}")
    for entry in entries:
        if entry.enlarged_organ is not None and entry.enlarged_organ not in names:
            raise VocabularyError(f"targets.json: {entry.name}: enlarged_organ {entry.enlarged_organ!r} is no target")
    declared: dict[tuple[str, ...], str] = {}
    for entry in entries:
        for synonym in entry.synonyms:
            key = tuple(tokens(synonym))
            if not key:
                raise VocabularyError(f"targets.json: {entry.name}: empty synonym")
            if key in declared and declared[key] != entry.name:
                raise VocabularyError(f"targets.json: {synonym!r} names both {declared[key]!r} and {entry.name!r}")
            declared[key] = entry.name
    phrases = dict(declared)
    for key, name in declared.items():  # "fluid on the lungs" also as "fluid on my lungs"
        if "the" in key[1:]:
            k = key.index("the", 1)
            for other in ("my", "his", "her", "their", "your", "a"):
                phrases.setdefault((*key[:k], other, *key[k + 1:]), name)
            phrases.setdefault((*key[:k], *key[k + 1:]), name)
    declared = dict(phrases)
    for key, name in declared.items():
        for form in (*plural_forms(key[-1]), key[-1] + "'s"):
            phrases.setdefault((*key[:-1], form), name)  # a declared synonym wins over a made plural
    ordered = dict(sorted(phrases.items(), key=lambda kv: -len(kv[0])))
    return Vocabulary(entries, words, answers, ordered, max(len(k) for k in ordered))


@functools.cache
def load_vocabulary(data_dir: Path = DATA_DIR) -> Vocabulary:
    """The packaged vocabularies (once per process)."""
    targets = json.loads((data_dir / "targets.json").read_text(encoding="utf-8"))
    words = json.loads((data_dir / "words.json").read_text(encoding="utf-8"))
    answers = json.loads((data_dir / "answers.json").read_text(encoding="utf-8"))
    return build_vocabulary(targets, words, answers)
