"""Planner evaluation on an MMedAgent-format eval file (``mmed-node agent eval``).

For every record the planner under test sees what it would see live (the first question, the
record's image, the series metadata, every known tool) and plans one turn; that turn is compared
with the record's first assistant turn:

* ``tool_accuracy``: share of records whose set of called tools equals the reference set
  (calling no tool when the reference calls none counts as correct);
* ``param_accuracy``: share of records with reference actions whose tools match AND whose
  ``API_params`` match the reference's (image placeholders ignored; strings compared without case
  or trailing punctuation; lists of strings as sets);
* ``parse_failure_rate``: share of records where the planner's output could not be parsed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.planners.base import PlanContext, Planner, PlannerOutputError, ToolSpec
from agent.protocol import (
    IMAGE_PLACEHOLDER,
    Action,
    Conversation,
    Message,
    ProtocolError,
    first_human_message,
)
from agent.records import load_record_image, read_records
from agent.render import metadata_text, volume_meta
from tools.progress import track


@dataclass(frozen=True)
class EvalResult:
    tool_accuracy: float
    param_accuracy: float
    parse_failure_rate: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def normalise(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.lower().split()).rstrip(".?!")
    if isinstance(value, list):
        items = [normalise(v) for v in value]
        if all(isinstance(v, str) for v in items):
            return sorted(set(items))
        return items
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if v != IMAGE_PLACEHOLDER}
    if isinstance(value, float):
        return round(value, 4)
    return value


def actions_match(predicted: list[Action], reference: list[Action]) -> tuple[bool, bool]:
    """(tools match, tools and params match)."""
    pred = {a.api_name: a.api_params for a in predicted}
    ref = {a.api_name: a.api_params for a in reference}
    if set(pred) != set(ref) or len(pred) != len(predicted):
        return False, False
    return True, all(normalise(pred[name]) == normalise(ref[name]) for name in ref)


def _context(conv: Conversation, base: Path, tools: list[ToolSpec]) -> PlanContext:
    question = conv.question
    image: np.ndarray | None = None
    meta = conv.metadata or {}
    shape: tuple[int, ...] = tuple(meta.get("shape") or ())
    modality = str(meta.get("modality") or "")
    text = str(meta.get("text") or "")
    extra = dict(meta.get("meta") or {})
    if conv.image is not None:
        loaded = load_record_image(base / conv.image)
        image, volume = loaded.rgb, loaded.volume
        if volume is not None:
            modality, shape, text, extra = volume.modality, volume.shape, metadata_text(volume), volume_meta(volume)
        elif not shape:
            shape = (1, image.shape[0], image.shape[1])
    return PlanContext(
        instruction=question,
        metadata_text=text,
        image=image,
        history=[Message.human(first_human_message(question, with_image=image is not None))],
        tools=tools,
        modality=modality.upper(),
        volume_shape=shape,
        meta=extra,
    )


def evaluate(path: Path, planner: Planner, tools: list[ToolSpec]) -> EvalResult:
    records = read_records(path)
    if not records:
        raise ValueError(f"{path}: no records")
    tools_ok = params_ok = with_actions = failures = 0
    for conv in track(records, "eval", unit="item"):
        turns = conv.turns()
        if not turns:
            raise ProtocolError(f"{path}: record {conv.id}: no assistant turn to compare with")
        reference = turns[0].actions
        with_actions += bool(reference)
        try:
            predicted = planner.next_turn(_context(conv, path.parent, tools)).actions
        except (PlannerOutputError, ProtocolError):
            failures += 1
            continue
        tool_match, param_match = actions_match(predicted, reference)
        tools_ok += tool_match
        params_ok += param_match and bool(reference)
    n = len(records)
    return EvalResult(
        tool_accuracy=tools_ok / n,
        param_accuracy=params_ok / with_actions if with_actions else 1.0,
        parse_failure_rate=failures / n,
        n=n,
    )
