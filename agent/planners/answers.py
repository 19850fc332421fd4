"""Explicit answers to yes/no and counting questions, from the tool outputs that serve them.

Every yes/no question gets "yes", "no" or "uncertain" with the evidence and the tool's score;
every counting question a number (or "uncertain"). The thresholds are data
(``agent/reading/data/answers.json``):

* a detection (``grounding dino``): yes when a box of the thing scores at least ``detection_yes``,
  uncertain when only weaker boxes were found, no when none; counting links boxes of one thing on
  neighbouring slices of a volume (overlap at least ``link_iou``) into one object;
* the findings classifier: the finding's probability against the normal label, yes at or above
  ``classifier_yes``, no at or below ``classifier_no``, uncertain between;
* a segmentation: yes when a non-empty segment of the thing was found, no when none;
* a size question: the measured volume, and uncertain (no tool gives a normal range);
* an image-type question ("is this a CT?"): yes/no from the classifier's top label;
* anything else, a refusal or a missing tool: uncertain, with why.
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from agent.reading.read import Ask
from agent.reading.vocabulary import Vocabulary, tokens

if TYPE_CHECKING:
    from agent.planners.tool_choice import Plan, ToolCall


def _outputs_by_call(plan: Plan, outputs: list[tuple[str, dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """The output of each call (by ``id``), matching same-named calls to outputs in order."""
    queues: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, summary in outputs:
        queues[name].append(summary)
    found: dict[int, dict[str, Any]] = {}
    for calls in plan.rounds():
        for call in calls:
            if queues[call.name]:
                found[id(call)] = queues[call.name].pop(0)
    return found


def _iou(a: list[float], b: list[float]) -> float:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def count_objects(boxes: list[list[float]], slices: list[int] | None, link_iou: float) -> int:
    """Distinct objects among ``boxes``: on a volume, boxes on neighbouring slices that overlap
    at least ``link_iou`` are one object seen twice."""
    if not slices:
        return len(boxes)
    parent = list(range(len(boxes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if abs(slices[i] - slices[j]) <= 1 and slices[i] != slices[j] and _iou(boxes[i], boxes[j]) >= link_iou:
                parent[root(i)] = root(j)
    return len({root(i) for i in range(len(boxes))})


def _detections(summary: dict[str, Any], name: str) -> tuple[list[list[float]], list[float], list[int]]:
    boxes = summary.get("boxes") or []
    phrases = summary.get("phrases") or []
    logits = summary.get("logits") or summary.get("scores") or []
    slices = summary.get("slices") or []
    keep = [i for i in range(len(boxes)) if i >= len(phrases) or str(phrases[i]) == name]
    return ([list(boxes[i]) for i in keep], [float(logits[i]) for i in keep if i < len(logits)],
            [int(slices[i]) for i in keep if i < len(slices)])


def _presence_from_boxes(tool: str, summary: dict[str, Any], target: str, vocab: Vocabulary) -> str:
    boxes, scores, _ = _detections(summary, target)
    if not boxes:
        return f"no - {tool} found no {target}"
    best = max(scores) if scores else 0.0
    if best >= vocab.answers.detection_yes:
        return f"yes - {tool} found {len(boxes)} {target} region(s), best score {best:.2f}"
    return f"uncertain - {tool} found only weak {target} candidates (best score {best:.2f})"


def _count_from_boxes(tool: str, summary: dict[str, Any], target: str, vocab: Vocabulary) -> str:
    boxes, scores, slices = _detections(summary, target)
    settings = vocab.answers
    strong = [i for i, s in enumerate(scores) if s >= settings.detection_yes]
    weak = len(boxes) - len(strong)
    n = count_objects([boxes[i] for i in strong], [slices[i] for i in strong] if slices else None, settings.link_iou)
    total = summary.get("total_boxes")
    at_least = "at least " if isinstance(total, int) and total > len(summary.get("boxes") or []) else ""
    text = f"{at_least}{n} ({tool}, boxes scoring at least {settings.detection_yes:.2f}"
    text += f"; {weak} weaker candidate(s) not counted)" if weak else ")"
    return text if n or not weak else f"uncertain - {tool} found only {weak} weak candidate(s)"


def _presence_from_classifier(tool: str, summary: dict[str, Any], finding: str, vocab: Vocabulary) -> str:
    settings = vocab.answers
    labels = [str(x) for x in summary.get("labels") or []]
    scores = [float(x) for x in summary.get("scores") or []]
    score = dict(zip(labels, scores))
    label = settings.finding_label.format(finding=finding)
    if label not in score or settings.normal_label not in score:
        return f"uncertain - {tool} did not score {finding} against the normal label"
    p = score[label] / max(score[label] + score[settings.normal_label], 1e-9)
    verdict = "yes" if p >= settings.classifier_yes else "no" if p <= settings.classifier_no else "uncertain"
    return f"{verdict} - {tool} gives {finding} {p:.2f} against a normal chest X-ray"


def _presence_from_segments(tool: str, summary: dict[str, Any], target: str) -> str:
    segments = [s for s in summary.get("segments") or [] if isinstance(s, dict)]
    named = [s for s in segments if str(s.get("label", "")).endswith(target)]
    if named:
        return f"yes - {tool} segmented the {target}"
    return f"no - {tool} found no {target}"


def _size_answer(tool: str, summary: dict[str, Any], organ: str) -> str:
    found = summary.get("volumes_ml")
    volumes: dict[str, Any] = found if isinstance(found, dict) else {}
    measured = [f"{k} {v} mL" for k, v in volumes.items() if organ in str(k).lower()]
    measured += [f"{k.replace('_', ' ')} {v}" for k, v in summary.items() if organ in k and k.endswith("_ml") and v is not None]
    found = "; ".join(measured) or "no volume was measured"
    return f"uncertain - {tool} measures {found}; it gives no normal range, so whether the {organ} is enlarged is for the reader"


def _modality_answer(tool: str, summary: dict[str, Any], ask: Ask, vocab: Vocabulary) -> str:
    asked = set()
    words = " " + " ".join(tokens(ask.clause)) + " "
    for kind, names in vocab.answers.modality_words.items():
        if any(f" {' '.join(tokens(n))} " in words for n in names):
            asked.add(kind)
    top = str(summary.get("label") or (summary.get("labels") or [""])[0])
    top_words = " " + " ".join(tokens(top)) + " "
    kinds = {k for k, names in vocab.answers.modality_words.items() if any(f" {' '.join(tokens(n))} " in top_words for n in names)}
    if not asked or not kinds:
        return f"uncertain - {tool} says {top or 'nothing'}"
    verdict = "yes" if asked & kinds else "no"
    return f"{verdict} - {tool} classifies the image as {top}"


def _answer(ask: Ask, target: str | None, call: ToolCall, summary: dict[str, Any], vocab: Vocabulary) -> str:
    tool = call.name
    if "refused" in summary or "error" in summary:
        return f"uncertain - {tool} could not run: {summary.get('refused') or summary.get('error')}"
    if ask.answer == "count" and target is not None:
        return _count_from_boxes(tool, summary, target, vocab)
    if ask.intent == "size" and target is not None:
        entry = vocab.entry(target)
        organ = entry.enlarged_organ if entry is not None and entry.enlarged_organ else target
        if call.findings:
            return _presence_from_classifier(tool, summary, "cardiomegaly", vocab)
        return _size_answer(tool, summary, organ)
    if target is not None and call.findings:
        return _presence_from_classifier(tool, summary, target, vocab)
    if target is not None and "segments" in summary:
        return _presence_from_segments(tool, summary, target)
    if target is not None and "boxes" in summary:
        return _presence_from_boxes(tool, summary, target, vocab)
    if ask.intent == "classify":
        return _modality_answer(tool, summary, ask, vocab)
    return f"uncertain - the {tool} result below is the evidence; it gives no yes/no verdict"


def answer_sentences(plan: Plan, outputs: list[tuple[str, dict[str, Any]]], vocab: Vocabulary) -> list[str]:
    """One "Answer: ..." sentence per yes/no or counting question (and target) of the plan."""
    by_call = _outputs_by_call(plan, outputs)
    sentences: list[str] = []
    unserved = {id(a): why for a, why in plan.unserved}
    for ask in plan.reading.asks:
        if ask.answer is None:
            continue
        kind = "How many" if ask.answer == "count" else "Yes/no"
        targets: list[str | None] = list(ask.names) or [None]
        for target in targets:
            about = f" ({target})" if target else ""
            verdict = None
            for calls in plan.rounds():
                for call in calls:
                    serves = any(a is ask for a in call.asks) and (target is None or target in call.names or call.findings)
                    if serves and id(call) in by_call:
                        verdict = _answer(ask, target, call, by_call[id(call)], vocab)
                        break
                if verdict is not None:
                    break
            if verdict is None:
                why = unserved.get(id(ask), "no tool result answers it")
                verdict = f"uncertain - {why}"
            sentences.append(f"{kind}{about}: {verdict}.")
    return sentences
