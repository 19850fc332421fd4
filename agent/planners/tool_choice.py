"""Which tool serves each ask, per target, on this series with these tools (the planner's policy).

The order of the rules is the order of ``docs/agent-eval.md`` ("Which tools each kind of request
expects"): coordinates -> ``MedSAM``; lungs on a CT volume -> ``ct lung segmentation``; organs of the
3D network on a CT/MR volume -> ``organ segmentation 3d``; anything else to segment or measure ->
``grounding dino + MedSAM`` (or ``grounding dino`` then ``MedSAM`` when the fused tool is missing);
locating and counting -> ``grounding dino``; a chest-radiograph finding's presence -> the
classifier's findings labels; image type -> ``BiomedClip``; reads -> ``report generation``;
knowledge -> ``retrieval``. Asks one tool serves are merged into one call.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from agent.planners.base import PlanContext, ToolSpec
from agent.reading.read import Ask, Reading
from agent.reading.slots import Mention
from agent.reading.vocabulary import Vocabulary
from image_model.codes import structure_names

LUNG_TOOL = "ct lung segmentation"
ORGAN_TOOL = "organ segmentation 3d"
GROUNDING = "grounding dino"
MEDSAM = "MedSAM"
GROUNDED_SAM = "grounding dino + MedSAM"
CLASSIFIERS = ("BiomedClip", "metadata classification")
FINDINGS_CLASSIFIER = "BiomedClip"
REPORT = "report generation"
RETRIEVAL = "retrieval"
ALL_ORGANS = "all organs"

#: Tools that run after others, on their results: the tool -> the tools it waits for (None: all
#: the others). A chained MedSAM segments the boxes grounding found (MMedAgent's two steps).
DEFERRED: dict[str, tuple[str, ...] | None] = {MEDSAM: (GROUNDING,), REPORT: None}


@dataclass
class ToolCall:
    """One planned call: the asks it serves and what they name."""

    name: str
    asks: list[Ask] = field(default_factory=list)
    targets: list[Mention] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    #: MedSAM fed with the boxes of the grounding call (no coordinates of its own).
    chained: bool = False
    #: BiomedClip asked about findings (labels from the findings set), not the image type.
    findings: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return list(dict.fromkeys(t.name for t in self.targets))

    def add(self, ask: Ask, targets: list[Mention]) -> None:
        if all(a is not ask for a in self.asks):
            self.asks.append(ask)
        for t in targets:
            if all(t.sided_name != o.sided_name for o in self.targets):
                self.targets.append(t)
        self.excluded.extend(e for e in ask.excluded if e not in self.excluded)


@dataclass
class Plan:
    """The calls in order of rounds, the asks no available tool serves (with why), the reading."""

    calls: list[ToolCall]
    unserved: list[tuple[Ask, str]]
    reading: Reading

    @property
    def actions(self) -> list[tuple[str, ToolCall]]:
        return [(c.name, c) for c in self.calls]

    def rounds(self) -> list[list[ToolCall]]:
        """Calls grouped by round: a deferred call follows the calls it waits for."""
        done: set[str] = set()
        left = list(self.calls)
        out: list[list[ToolCall]] = []
        while left:
            ready = [c for c in left if _ready(c, left, done)]
            if not ready:  # nothing it waits for is planned: run what is left now
                ready = list(left)
            out.append(ready)
            done |= {c.name for c in ready}
            left = [c for c in left if c not in ready]
        return out


def _ready(call: ToolCall, pending: list[ToolCall], done: set[str]) -> bool:
    if call.name not in DEFERRED or (call.name == MEDSAM and not call.chained):
        return True
    waits = DEFERRED[call.name]
    others = [c for c in pending if c is not call and (waits is None or c.name in waits)]
    return not others


def is_volume(ctx: PlanContext) -> bool:
    return ctx.is_3d and ctx.modality in ("CT", "MR")


def is_radiograph(ctx: PlanContext, vocab: Vocabulary) -> bool:
    return ctx.modality in vocab.words.radiograph_modalities and not ctx.is_3d


def organ3d_names(ctx: PlanContext, vocab: Vocabulary) -> set[str]:
    """Organs the 3D tool knows: its schema's enum when it declares one, else the anatomy of the
    one code table (so the planner and the encoders name the same organs)."""
    for spec in ctx.tools:
        if spec.name == ORGAN_TOOL:
            enum = _target_enum(spec)
            if enum is not None:
                return {e.lower() for e in enum}
    return set(structure_names())


def _target_enum(spec: ToolSpec) -> list[str] | None:
    for name in ("targets", "labels"):
        prop = (spec.params_schema.get("properties") or {}).get(name)
        if isinstance(prop, dict):
            enum = prop.get("enum") or (prop.get("items") or {}).get("enum")
            if enum:
                return [str(e) for e in enum]
    return None


class Chooser:
    """Routes asks to tools for one planning context."""

    def __init__(self, ctx: PlanContext, vocab: Vocabulary, chest: bool) -> None:
        self.ctx = ctx
        self.vocab = vocab
        self.available = set(ctx.tool_names)
        self.chest = chest or any(
            w in str(v).lower() for v in ctx.meta.values() for w in vocab.words.chest_words
        )

    def _have(self, name: str) -> bool:
        return name in self.available

    def _segmenter(self) -> tuple[str, ...] | None:
        """Text-prompted segmentation: the fused tool, or grounding then MedSAM."""
        if self._have(GROUNDED_SAM):
            return (GROUNDED_SAM,)
        if self._have(GROUNDING) and self._have(MEDSAM):
            return (GROUNDING, MEDSAM)
        return None

    def _volumetric(self, organ: str) -> str | None:
        ctx = self.ctx
        if organ == "lung" and ctx.modality == "CT" and ctx.is_3d and self._have(LUNG_TOOL):
            return LUNG_TOOL
        if is_volume(ctx) and self._have(ORGAN_TOOL) and organ in organ3d_names(ctx, self.vocab) | {ALL_ORGANS}:
            return ORGAN_TOOL
        return None

    def segment(self, ask: Ask, target: Mention) -> tuple[str, ...] | str:
        """The tools for segmenting or measuring ``target``, or why there are none."""
        volumetric = self._volumetric(target.name)
        if volumetric is not None:
            return (volumetric,)
        if target.name == ALL_ORGANS:
            return "segmenting every organ needs a CT or MR volume and the 3D organ tool"
        return self._segmenter() or "no text-prompted segmentation tool is available"

    def size(self, target: Mention) -> tuple[str, ...] | str:
        entry = self.vocab.entry(target.name)
        organ = entry.enlarged_organ if entry is not None and entry.enlarged_organ else target.name
        volumetric = self._volumetric(organ)
        if volumetric is not None:
            return (volumetric,)
        if organ == "heart" and is_radiograph(self.ctx, self.vocab) and self._have(FINDINGS_CLASSIFIER):
            return (FINDINGS_CLASSIFIER,)
        return f"whether the {organ} is enlarged cannot be judged on this series by any available tool"

    def presence(self, target: Mention) -> tuple[str, ...] | str:
        entry = self.vocab.entry(target.name)
        if entry is not None and entry.enlarged_organ and (
            is_volume(self.ctx) and self._volumetric(entry.enlarged_organ) is not None
        ):
            return self.size(target)
        if (
            entry is not None and entry.cxr_finding and target.side is None
            and is_radiograph(self.ctx, self.vocab) and self._have(FINDINGS_CLASSIFIER)
        ):
            return (FINDINGS_CLASSIFIER,)
        return self.locate(target)

    def locate(self, target: Mention) -> tuple[str, ...] | str:
        if self._have(GROUNDING):
            return (GROUNDING,)
        if self._have(GROUNDED_SAM):
            return (GROUNDED_SAM,)
        return "no detection tool is available"

    def whole_image(self, intent: str) -> tuple[str, ...] | str:
        if intent == "classify":
            for name in CLASSIFIERS:
                if self._have(name):
                    return (name,)
            return "no image classifier is available"
        if intent == "analyse" and self.ctx.modality == "CT" and self.ctx.is_3d and self.chest and self._have(LUNG_TOOL):
            return (LUNG_TOOL,)
        if intent in ("report", "analyse"):
            return (REPORT,) if self._have(REPORT) else "no report tool is available"
        if intent == "knowledge":
            return (RETRIEVAL,) if self._have(RETRIEVAL) else "no knowledge base is available"
        return f"no tool for {intent}"

    def route(self, ask: Ask, target: Mention | None) -> tuple[str, ...] | str:
        if ask.prompt is not None:
            return (MEDSAM,) if self._have(MEDSAM) else "MedSAM (prompted segmentation) is not available"
        if ask.intent in ("segment", "measure"):
            if target is None:
                if self.ctx.modality == "CT" and self.ctx.is_3d and self.chest and self._have(LUNG_TOOL):
                    return (LUNG_TOOL,)
                return "no structure was named"
            return self.segment(ask, target)
        if ask.intent == "size":
            return self.size(target) if target is not None else "no organ was named"
        if ask.intent == "presence":
            return self.presence(target) if target is not None else "nothing to look for was named"
        if ask.intent in ("locate", "count"):
            return self.locate(target) if target is not None else "nothing to look for was named"
        return self.whole_image(ask.intent)


def choose(ctx: PlanContext, reading: Reading, vocab: Vocabulary) -> Plan:
    """The calls serving every ask of ``reading`` (merged per tool), and the unserved asks."""
    chooser = Chooser(ctx, vocab, reading.chest)
    calls: dict[tuple[str, str], ToolCall] = {}
    unserved: list[tuple[Ask, str]] = []
    if reading.prompt_error is not None:
        unserved.append((Ask("segment", clause="the given region"), f"the coordinates cannot be used: {reading.prompt_error}"))
    for ask in reading.asks:
        targets: list[Mention | None] = list(ask.targets) or [None]
        if ask.prompt is not None:
            targets = [None]
        for target in targets:
            route = chooser.route(ask, target)
            if isinstance(route, str):
                if all(a is not ask for a, _ in unserved):
                    unserved.append((ask, route))
                continue
            for name in route:
                chained = len(route) > 1 and name == MEDSAM
                findings = name == FINDINGS_CLASSIFIER and ask.intent in ("presence", "size") and target is not None
                variant = "chained" if chained else "findings" if findings else ""
                call = calls.setdefault((name, variant), ToolCall(name, chained=chained))
                named = ask.targets if ask.prompt is not None else ([target] if target is not None else [])
                call.add(ask, named)
                if findings and target is not None:
                    finding = "cardiomegaly" if target.name == "heart" else target.name
                    if finding not in call.findings:
                        call.findings.append(finding)
    ordered = sorted(calls.values(), key=lambda c: c.name in DEFERRED and (c.name != MEDSAM or c.chained))
    return Plan(ordered, unserved, reading)
