"""Planner evaluation on item sets (``mmed-node agent eval --items SET.jsonl``).

An item is an instruction, the series it comes with (modality, shape, body part), the tools the
plan should call and, optionally, the slots it should carry (targets, side, exclusions,
coordinates, slice or instance, the kind of answer). The format and the labelling rules are in
``docs/agent-eval.md``. Tool choice is right when the set of tools over all rounds equals the
expected set; slots are scored separately, on the items that give them; both per item class.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.planners.base import PlanContext, Planner, PlannerOutputError, ToolSpec
from agent.protocol import Message, ProtocolError, first_human_message

ItemClass = Literal[
    "segment", "measure", "locate", "classify", "report", "knowledge", "none", "prompt", "laterality",
    "yesno", "count", "negation", "multi",
]
#: Coordinates within this of the expected ones (normalised) count as the same.
PROMPT_TOLERANCE = 0.005


class PromptSlot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    boxes: list[list[float]] = Field(default_factory=list)
    points: list[list[float]] = Field(default_factory=list)
    units: Literal["normalised", "normalized", "pixels"] = "normalised"


class Slots(BaseModel):
    model_config = ConfigDict(extra="forbid")
    targets: list[str] | None = None
    laterality: Literal["left", "right"] | None = None
    exclude: list[str] | None = None
    prompt: PromptSlot | None = None
    slice: int | None = None
    instance: int | None = None
    answer: Literal["yes/no", "count"] | None = None


class EvalItem(BaseModel):
    """One line of a set (docs/agent-eval.md)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    instruction: str = Field(min_length=1)
    modality: str = Field(min_length=1)
    shape: tuple[int, int, int]
    body_part: str = ""
    expected_tools: list[str]
    item_class: ItemClass = Field(alias="class")
    voice: str | None = None
    slots: Slots = Field(default_factory=Slots)
    available_tools: list[str] | None = None
    notes: str | None = None

    @model_validator(mode="after")
    def _shape(self) -> EvalItem:
        if any(v < 1 for v in self.shape):
            raise ValueError("shape values must be positive")
        return self


class ItemError(ValueError):
    """A set file does not follow the item format; the message names the line."""


def read_items(path: Path) -> list[EvalItem]:
    items: list[EvalItem] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = EvalItem.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise ItemError(f"{path}:{number}: not JSON: {exc.msg}") from None
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ItemError(f"{path}:{number}: {where}: {err['msg']}") from None
        if item.id in seen:
            raise ItemError(f"{path}:{number}: id {item.id!r} used twice")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise ItemError(f"{path}: no items")
    return items


def context_for(item: EvalItem, tools: list[ToolSpec]) -> PlanContext:
    """What the planner would see live for this item (no pixels: planning reads no image)."""
    modality = item.modality.upper()
    meta: dict[str, Any] = {"Modality": modality}
    if item.body_part:
        meta["BodyPartExamined"] = item.body_part
    slices, rows, cols = item.shape
    text = f"Modality: {modality}\nBody part: {item.body_part or 'unknown'}\nSize: {slices} x {rows} x {cols}"
    available = [t for t in tools if item.available_tools is None or t.name in item.available_tools]
    return PlanContext(
        instruction=item.instruction, metadata_text=text, image=None,
        history=[Message.human(first_human_message(item.instruction))], tools=available,
        modality=modality, volume_shape=item.shape, meta=meta,
    )


@dataclass
class ItemResult:
    id: str
    item_class: str
    instruction: str
    expected: list[str]
    planned: list[str]
    tools_ok: bool
    #: slot -> right or wrong, for the slots the item gives.
    slots: dict[str, bool] = field(default_factory=dict)
    ms: float = 0.0
    error: str | None = None


@dataclass
class SetReport:
    name: str
    items: list[ItemResult]

    @property
    def tool_accuracy(self) -> float:
        return sum(r.tools_ok for r in self.items) / len(self.items)

    def per_class(self) -> dict[str, tuple[int, int]]:
        """class -> (right, total)."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in self.items:
            out[r.item_class][0] += r.tools_ok
            out[r.item_class][1] += 1
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    def slot_accuracy(self) -> dict[str, tuple[int, int]]:
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in self.items:
            for slot, ok in r.slots.items():
                out[slot][0] += ok
                out[slot][1] += 1
        return {k: (v[0], v[1]) for k, v in sorted(out.items())}

    @property
    def ms_per_plan(self) -> float:
        return sum(r.ms for r in self.items) / len(self.items)

    def misses(self) -> list[str]:
        return sorted(r.id for r in self.items if not r.tools_ok)

    def to_json(self) -> dict[str, Any]:
        return {
            "set": self.name, "n": len(self.items), "tool_accuracy": round(self.tool_accuracy, 4),
            "per_class": {k: {"right": a, "total": b} for k, (a, b) in self.per_class().items()},
            "slots": {k: {"right": a, "total": b} for k, (a, b) in self.slot_accuracy().items()},
            "ms_per_plan": round(self.ms_per_plan, 1), "misses": self.misses(),
            "items": [asdict(r) for r in self.items],
        }


def planned_tools(planner: Planner, ctx: PlanContext) -> tuple[list[str], Any]:
    """The tools of every round (a planner with ``plan()``), else of the first turn; and the plan."""
    plan_fn = getattr(planner, "plan", None)
    if callable(plan_fn):
        plan = plan_fn(ctx)
        return [name for name, _ in plan.actions], plan
    return [a.api_name for a in planner.next_turn(ctx).actions], None


def _canonical(names: list[str]) -> set[str]:
    from agent.reading.load import load_reader
    from agent.reading.slots import find_mentions
    from agent.reading.vocabulary import tokens

    vocab = load_reader().vocabulary
    out = set()
    for name in names:
        mentions = find_mentions(vocab, tuple(tokens(name)))
        out |= {m.name for m in mentions} if mentions else {" ".join(tokens(name))}
    return out


def _close(a: list[list[float]], b: list[list[float]]) -> bool:
    return len(a) == len(b) and all(
        len(x) == len(y) and all(abs(p - q) <= PROMPT_TOLERANCE for p, q in zip(x, y)) for x, y in zip(a, b)
    )


def _normalised(values: list[list[float]], units: str, rows: int, cols: int) -> list[list[float]]:
    if units == "pixels":
        return [[v / (cols if k % 2 == 0 else rows) for k, v in enumerate(xs)] for xs in values]
    return values


def score_slots(item: EvalItem, plan: Any, params: dict[str, dict[str, Any]]) -> dict[str, bool]:
    """Each slot the item gives: does the plan carry it? (Only planners that expose a plan.)"""
    slots = item.slots
    if plan is None:
        return {}
    calls = list(getattr(plan, "calls", []))
    region = [c for c in calls if c.targets or c.name in ("MedSAM",)]
    names = {t.name for c in region for t in c.targets}
    sides = {t.side for c in region for t in c.targets if t.side}
    out: dict[str, bool] = {}
    if slots.targets is not None:
        out["targets"] = _canonical(slots.targets) == names
    if slots.laterality is not None:
        out["laterality"] = sides == {slots.laterality}
    if slots.exclude is not None:
        out["exclude"] = _canonical(slots.exclude) == _canonical([e for c in calls for e in c.excluded])
    medsam = params.get("MedSAM", {})
    _, rows, cols = item.shape
    if slots.prompt is not None:
        boxes = _normalised(slots.prompt.boxes, slots.prompt.units, rows, cols)
        points = _normalised(slots.prompt.points, slots.prompt.units, rows, cols)
        out["prompt"] = _close(boxes, medsam.get("boxes", [])) and _close(points, medsam.get("points", []))
    if slots.slice is not None:
        out["slice"] = any(slots.slice - 1 in p.get("slices", []) for p in params.values())
    if slots.instance is not None:
        out["instance"] = slots.instance in medsam.get("instance_numbers", [])
    if slots.answer is not None:
        out["answer"] = any(a.answer == slots.answer for a in plan.reading.asks)
    return out


def _first_params(planner: Planner, ctx: PlanContext, plan: Any) -> dict[str, dict[str, Any]]:
    """API_params of each planned call (rules planner: filled from the schemas)."""
    if plan is None:
        return {}
    from agent.planners.rules import fill_params

    specs = {t.name: t for t in ctx.tools}
    vocab = planner.reader.vocabulary  # type: ignore[attr-defined]
    return {c.name: fill_params(specs[c.name], c, ctx, vocab) for c in plan.calls if c.name in specs}


def evaluate_items(path: Path, planner: Planner, tools: list[ToolSpec]) -> SetReport:
    results: list[ItemResult] = []
    items = read_items(path)
    getattr(planner, "reader", None)  # load the planner's model before timing plans
    for item in items:
        ctx = context_for(item, tools)
        start = time.perf_counter()
        error = None
        try:
            planned, plan = planned_tools(planner, ctx)
        except (PlannerOutputError, ProtocolError) as exc:
            planned, plan, error = [], None, str(exc)
        ms = (time.perf_counter() - start) * 1000
        ok = error is None and set(planned) == set(item.expected_tools)
        slots = score_slots(item, plan, _first_params(planner, ctx, plan)) if error is None else {}
        results.append(ItemResult(item.id, item.item_class, item.instruction, item.expected_tools, planned, ok, slots, ms, error))
    return SetReport(path.stem, results)


def format_report(report: SetReport, per_item: bool) -> str:
    lines = []
    if per_item:
        for r in report.items:
            mark = "ok  " if r.tools_ok else "MISS"
            bad_slots = [k for k, v in r.slots.items() if not v]
            extra = f"  slots wrong: {', '.join(bad_slots)}" if bad_slots else ""
            lines.append(f"{mark} {r.id} [{r.item_class}] {r.instruction!r}: planned {sorted(r.planned)}"
                         + ("" if r.tools_ok else f", expected {sorted(r.expected)}") + extra)
    lines.append(f"set              {report.name}")
    lines.append(f"items            {len(report.items)}")
    lines.append(f"tool accuracy    {report.tool_accuracy:.3f}")
    for name, (right, total) in report.per_class().items():
        lines.append(f"  {name:<14} {right}/{total}")
    for name, (right, total) in report.slot_accuracy().items():
        lines.append(f"slot {name:<11} {right}/{total}")
    lines.append(f"ms per plan      {report.ms_per_plan:.1f}")
    return "\n".join(lines)
