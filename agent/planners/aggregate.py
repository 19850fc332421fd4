"""The aggregation turn: tool output summaries stated in words (MMedAgent's result aggregator role).

Works on the summaries the planner saw (the ``<API_name> output: {...}`` messages), whatever tool
produced them: boxes, label/score lists, prose (reports, answers), retrieved passages, nested
measurements whose unit is read from the key's suffix (``left_lung_ml`` -> mL), and refusals.
"""
from __future__ import annotations

from typing import Any

from agent.protocol import AssistantTurn

#: Key suffix -> unit, for stating tool results in words (``left_volume_ml`` -> "left volume ... mL").
UNIT_SUFFIXES: dict[str, str] = {
    "ml": "mL", "hu": "HU", "mm": "mm", "cm": "cm", "mm2": "mm2", "mm3": "mm3", "cm3": "cm3",
    "pct": "%", "percent": "%", "s": "s",
}


def aggregate_turn(outputs: list[tuple[str, dict[str, Any]]], question: str) -> AssistantTurn:
    """The final turn: no actions, the tool results stated in words."""
    sentences = [describe_output(name, summary) for name, summary in outputs]
    names = ", ".join(name for name, _ in outputs)
    thoughts = f"{names} returned; I will answer the question with the results."
    return AssistantTurn(thoughts, [], " ".join(sentences))


def describe_output(name: str, summary: dict[str, Any]) -> str:
    for key in ("refused", "error"):
        if key in summary:
            return f"{name} could not run: {summary[key]}."
    parts: list[str] = []
    skip = {"message"}
    if "boxes" in summary:
        parts.append(_describe_boxes(summary))
        skip |= _BOX_KEYS
    labels, scores = summary.get("labels"), summary.get("scores")
    if isinstance(labels, list) and isinstance(scores, list) and len(labels) == len(scores) and "boxes" not in summary:
        parts.append("labels: " + ", ".join(f"{lab} ({_fmt(sc)})" for lab, sc in zip(labels, scores)))
        skip |= {"labels", "scores"}
    for key in TEXT_KEYS:
        if isinstance(summary.get(key), str):
            parts.append(summary[key].strip())
            skip |= {key, "mode"}
    passages = summary.get("passages")
    if isinstance(passages, list) and passages and all(isinstance(p, dict) for p in passages):
        cited = [f"{p.get('text', '').strip()} [{p.get('source', '?')}]" for p in passages[:PASSAGES_STATED]]
        parts.append("retrieved: " + " ".join(cited))
        skip |= {"passages", "query", "method"}
    for key, value in summary.items():
        if key in skip:
            continue
        parts.extend(_describe_value(_humanise(key), key, value))
    if "message" in summary and not parts:
        parts.append(str(summary["message"]))
    body = "; ".join(p for p in parts if p)
    return f"{name} result: {body}." if body else f"{name} returned no result."


#: Summary keys holding prose (a report, an answer): stated as they are.
TEXT_KEYS = ("report", "answer", "text")
#: Retrieved passages quoted in the answer.
PASSAGES_STATED = 2

_BOX_KEYS = frozenset({"boxes", "logits", "scores", "phrases", "slices"})


def _describe_boxes(summary: dict[str, Any]) -> str:
    boxes = summary.get("boxes") or []
    phrases = summary.get("phrases") or []
    logits = summary.get("logits") or summary.get("scores") or []
    slices = summary.get("slices") or []
    if not boxes:
        return "no matching region found"
    items = []
    for i, box in enumerate(boxes):
        label = phrases[i] if i < len(phrases) else "region"
        coords = ", ".join(f"{float(c):.2f}" for c in box)
        where = f" on slice {slices[i]}" if i < len(slices) else ""
        score = f" (score {float(logits[i]):.2f})" if i < len(logits) else ""
        items.append(f"{label} at [{coords}]{where}{score}")
    return f"found {len(boxes)} region(s): " + ", ".join(items)


def _describe_value(label: str, key: str, value: Any, inherited_unit: str = "") -> list[str]:
    if isinstance(value, dict):
        inner: list[str] = []
        for k, v in value.items():
            inner.extend(_describe_value(_humanise(k), k, v, _unit(key) or inherited_unit))
        return [f"{label}: " + ", ".join(inner)] if inner else []
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            return [_describe_record(v) for v in value]
        if not value:
            return [f"{label}: none"]
        return [f"{label}: " + ", ".join(_fmt(v) for v in value)]
    unit = _unit(key) or inherited_unit
    return [f"{label} {_fmt(value)}{unit}"]


def _describe_record(record: dict[str, Any]) -> str:
    name = record.get("label") or record.get("name") or record.get("structure")
    rest = [p for k, v in record.items() if k not in ("label", "name", "structure") for p in _describe_value(_humanise(k), k, v)]
    return f"{name}: " + ", ".join(rest) if name else ", ".join(rest)


def _humanise(key: str) -> str:
    words = key.replace("-", "_").split("_")
    for suffix in UNIT_SUFFIXES:
        if words and words[-1].lower() == suffix:
            words = words[:-1]
    return " ".join(words)


def _unit(key: str) -> str:
    last = key.replace("-", "_").split("_")[-1].lower()
    return f" {UNIT_SUFFIXES[last]}" if last in UNIT_SUFFIXES else ""


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.1f}"
