"""The intent classifier: the shipped weights are small, load with their checks, were fitted on
exactly today's make-data output plus paraphrase bank, and the command reproduces them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.dataset import make_data
from agent.reading.intents import (
    INTENTS,
    MODEL_FILE,
    IntentModel,
    IntentModelError,
    data_fingerprint,
    default_encoder_path,
    load_intent_model,
    sentence_encoder,
)
from agent.reading.load import reading_parts
from agent.reading.training import augment, clause_examples, read_bank, read_make_data, train_intents
from tools.registry import ToolRegistry, known_tool_classes


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make-data's output with the default config and seed, as ``train-intents`` was run on."""
    out = tmp_path_factory.mktemp("make-data")
    make_data(out, known_tool_classes(), ToolRegistry({}), seed=0)
    return out


def test_shipped_weights_are_small_and_checked_when_loaded(tmp_path: Path) -> None:
    assert MODEL_FILE.stat().st_size < 300_000
    model = load_intent_model()
    assert model.labels == INTENTS and model.weights.shape == (len(INTENTS), 384)
    wrong = IntentModel(("segment", "none"), np.zeros((2, 384)), np.zeros(2), "x")
    wrong.save(tmp_path / "wrong.npz")
    with pytest.raises(IntentModelError, match="retrain it"):
        load_intent_model(tmp_path / "wrong.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(IntentModelError, match="cannot be read"):
        load_intent_model(tmp_path / "junk.npz")


def test_bank_lines_are_single_clauses_with_known_intents() -> None:
    bank = read_bank()
    assert {intent for _, intent in bank} == set(INTENTS)
    reader = reading_parts(False)
    assert [text for text, _ in bank if len(reader.masked_clauses(text)) != 1] == []


def test_shipped_weights_were_fitted_on_todays_data(made: Path) -> None:
    examples, _ = clause_examples(read_bank() + read_make_data(made))
    assert data_fingerprint(augment(examples)) == load_intent_model().fingerprint, (
        "the paraphrase bank, the templates or the reading changed: run "
        "`mmed-node agent make-data --out D && mmed-node agent train-intents --data D`"
    )


@pytest.mark.slow
def test_train_intents_reproduces_the_shipped_weights(made: Path, tmp_path: Path) -> None:
    path = default_encoder_path()
    assert path is not None
    report = train_intents(made, tmp_path / "model.npz", sentence_encoder(path))
    shipped, again = load_intent_model(), load_intent_model(tmp_path / "model.npz")
    assert report.fingerprint == shipped.fingerprint and report.train_accuracy > 0.95
    np.testing.assert_allclose(again.weights, shipped.weights, atol=1e-3)
    np.testing.assert_allclose(again.bias, shipped.bias, atol=1e-3)
