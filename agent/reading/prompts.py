"""Box and point prompts, and slice or instance numbers, read from an instruction's text.

MMedAgent passes MedSAM a box or points normalised 0-1 (x along columns, y along rows). Users give
them in many forms; each is read here deterministically:

* ``[x1, y1, x2, y2]`` or ``(x1, y1, x2, y2)``: a box; ``(x, y)`` or ``[x, y]``: a point;
* keyed: ``x1=.. y1=.. x2=.. y2=..`` (also ``x0/y0``, ``xmin/ymin/xmax/ymax``), ``x=.. y=..``
  (a point, or a box with ``w``/``h`` or ``width``/``height``);
* two points joined by "from .. to ..", "between .. and ..", or named as corners: a box;
* four bare numbers after "box"/"bbox"/"rectangle"/"roi", two after "point"/"clicked at";
* a point named "background"/"negative"/"exclude" is a background point (label 0).

Units: words such as "pixels" or "normalised" decide; else values all within 0-1 are normalised
and anything larger is pixels, converted with the image's columns and rows. A coordinate outside
the image, an empty box, or pixels with no image size is a :class:`PromptError` with the reason.

Slices: "slice 45" (counting from 1 in the series' order, as viewers do; ranges "slices 40-45")
and "instance 12" (the DICOM InstanceNumber) are read for volumes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from agent.reading.vocabulary import Words

_NUM = r"\d+(?:\.\d+)?%?|\.\d+%?"
_SEP = r"\s*[,;]\s*|\s+"
_POINT = rf"[\[(]\s*({_NUM})(?:{_SEP})({_NUM})\s*[\])]"
_BOX = rf"[\[(]\s*({_NUM})(?:{_SEP})({_NUM})(?:{_SEP})({_NUM})(?:{_SEP})({_NUM})\s*[\])]"
_BARE_POINT = rf"({_NUM})\s*,\s*({_NUM})"
_KEYED = re.compile(
    rf"\b(x0|y0|x1|y1|x2|y2|xmin|ymin|xmax|ymax|x|y|w|h|width|height)\s*(?:=|:)\s*({_NUM})", re.IGNORECASE
)
_BOX_RE = re.compile(_BOX)
_POINT_RE = re.compile(_POINT)
_TWO_POINTS = re.compile(
    rf"\b(from|between|corners?|top[- ]?left|upper[- ]?left)\b[^()\[\]\d]{{0,30}}(?:{_POINT}|{_BARE_POINT})"
    rf"[^()\[\]\d]{{1,40}}?(?:{_POINT}|{_BARE_POINT})",
    re.IGNORECASE,
)
_BARE_BOX = re.compile(
    rf"\b(?:bbox|bounding box|box|rectangle|roi)\b\s*(?:of|at|is|=|:)?\s*({_NUM})(?:{_SEP})({_NUM})(?:{_SEP})({_NUM})(?:{_SEP})({_NUM})\b",
    re.IGNORECASE,
)
_BARE_POINT_AFTER = re.compile(
    rf"\b(?:point|clicked at|clicked on|click at|click on|clicked|pixel|coordinates?|location|position)\s*(?:of|at|is|=|:)?\s*{_BARE_POINT}",
    re.IGNORECASE,
)


class PromptError(ValueError):
    """The instruction's coordinates cannot be used (outside the image, empty box, no size)."""


@dataclass(frozen=True)
class PromptSlots:
    """What the instruction says about where to segment."""

    #: Boxes (x0, y0, x1, y1) normalised 0-1.
    boxes: tuple[tuple[float, float, float, float], ...] = ()
    #: Points (x, y) normalised 0-1, and their labels (1 foreground, 0 background).
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    #: "normalised" or "pixels": how the user wrote them.
    units: str = ""
    #: Character spans of the instruction the coordinates took (removed before the rest is read).
    spans: tuple[tuple[int, int], ...] = ()

    @property
    def given(self) -> bool:
        return bool(self.boxes or self.points)


@dataclass(frozen=True)
class SliceSlots:
    #: Slice numbers as the user wrote them (1-based).
    slices: tuple[int, ...] = ()
    instances: tuple[int, ...] = ()
    spans: tuple[tuple[int, int], ...] = field(default=())


def _value(text: str) -> tuple[float, bool]:
    """The number, and whether it was a percentage."""
    if text.endswith("%"):
        return float(text[:-1]) / 100.0, True
    return float(text), False


@dataclass
class _Raw:
    kind: str  # "box" | "point"
    values: list[float]
    span: tuple[int, int]
    percent: bool = False
    background: bool = False


def _overlaps(span: tuple[int, int], taken: list[tuple[int, int]]) -> bool:
    return any(span[0] < end and start < span[1] for start, end in taken)


def _numbers(groups: tuple[str | None, ...]) -> tuple[list[float], bool]:
    values, percent = [], False
    for g in groups:
        if g is None:
            continue
        v, p = _value(g)
        values.append(v)
        percent = percent or p
    return values, percent


def _keyed(text: str, taken: list[tuple[int, int]]) -> list[_Raw]:
    """``x1=.. y1=..`` runs: keys close together form one prompt."""
    found: list[_Raw] = []
    run: dict[str, float] = {}
    run_span: list[int] = []
    last_end = -1000

    def flush() -> None:
        if not run:
            return
        keys = dict(run)
        span = (run_span[0], run_span[1])
        corners = [("x0", "y0", "x1", "y1"), ("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax")]
        for a, b, c, d in corners:
            if all(k in keys for k in (a, b, c, d)):
                found.append(_Raw("box", [keys[a], keys[b], keys[c], keys[d]], span))
                return
        if "x" in keys and "y" in keys:
            w = keys.get("w", keys.get("width"))
            h = keys.get("h", keys.get("height"))
            if w is not None and h is not None:
                found.append(_Raw("box", [keys["x"], keys["y"], keys["x"] + w, keys["y"] + h], span))
            else:
                found.append(_Raw("point", [keys["x"], keys["y"]], span))

    for m in _KEYED.finditer(text):
        if _overlaps(m.span(), taken):
            continue
        if m.start() - last_end > 12:
            flush()
            run, run_span = {}, [m.start(), m.end()]
        run[m.group(1).lower()] = _value(m.group(2))[0]
        run_span[1] = m.end()
        last_end = m.end()
    flush()
    return found


def _raw_prompts(text: str, words: Words) -> list[_Raw]:
    taken: list[tuple[int, int]] = []
    found: list[_Raw] = []

    def take(raw: _Raw) -> None:
        taken.append(raw.span)
        found.append(raw)

    for m in _TWO_POINTS.finditer(text):
        values, percent = _numbers(m.groups()[1:])
        if len(values) == 4:
            x0, y0, x1, y1 = values
            take(_Raw("box", [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], m.span(), percent))
    for m in _BOX_RE.finditer(text):
        if not _overlaps(m.span(), taken):
            values, percent = _numbers(m.groups())
            take(_Raw("box", values, m.span(), percent))
    for m in _BARE_BOX.finditer(text):
        if not _overlaps(m.span(), taken):
            values, percent = _numbers(m.groups())
            take(_Raw("box", values, m.span(), percent))
    for raw in _keyed(text, taken):
        take(raw)
    for pattern in (_POINT_RE, _BARE_POINT_AFTER):
        for m in pattern.finditer(text):
            if not _overlaps(m.span(), taken):
                values, percent = _numbers(m.groups())
                before = text[max(0, m.start() - 40):m.start()].lower()
                background = any(re.search(rf"\b{re.escape(w)}\b", before) for w in words.background_point_words)
                take(_Raw("point", values, m.span(), percent, background))
    return sorted(found, key=lambda r: r.span)


def _units(text: str, raws: list[_Raw], words: Words) -> str:
    low = text.lower()
    if any(re.search(rf"\b{re.escape(w)}\b", low) for w in words.pixel_words):
        return "pixels"
    if any(r.percent for r in raws) or any(re.search(rf"(?<![\w-]){re.escape(w)}\b", low) for w in words.normalised_words):
        return "normalised"
    values = [v for r in raws for v in r.values]
    return "normalised" if all(v <= 1.0 for v in values) else "pixels"


def prompt_spans(text: str, words: Words) -> list[tuple[int, int]]:
    """Where the coordinates are in ``text`` (whether or not they can be used)."""
    return [raw.span for raw in _raw_prompts(text, words)]


def read_prompts(text: str, words: Words, rows: int | None, cols: int | None) -> PromptSlots:
    """Boxes and points in ``text``, normalised with the image size (``rows``, ``cols``)."""
    raws = _raw_prompts(text, words)
    if not raws:
        return PromptSlots()
    units = _units(text, raws, words)
    boxes: list[tuple[float, float, float, float]] = []
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    for raw in raws:
        values = raw.values
        if units == "pixels":
            if not rows or not cols:
                raise PromptError("pixel coordinates need the image size, which is not known")
            scale = [cols, rows] * (len(values) // 2)
            for v, s, axis in zip(values, scale, "xy" * 2):
                if v > s:
                    size = "columns" if axis == "x" else "rows"
                    raise PromptError(f"coordinate {axis}={v:g} is outside the image ({s} {size})")
            values = [v / s for v, s in zip(values, scale)]
        elif any(v > 1.0 for v in values):
            raise PromptError(f"normalised coordinates must lie within 0-1, got {raw.values}")
        if raw.kind == "box":
            x0, y0, x1, y1 = (round(v, 4) for v in values)
            if not (x0 < x1 and y0 < y1):
                raise PromptError(f"the box {raw.values} is empty (needs x1 < x2 and y1 < y2)")
            boxes.append((x0, y0, x1, y1))
        else:
            points.append((round(values[0], 4), round(values[1], 4)))
            labels.append(0 if raw.background else 1)
    return PromptSlots(tuple(boxes), tuple(points), tuple(labels), units, tuple(r.span for r in raws))


_SLICE_NUMBER = r"(?:#|no\.?|nr\.?|number|num\.?)?\s*"
_RANGE = r"(\d+)(?:\s*(?:-|to|through|until|\u2013)\s*(\d+))?"


def read_slices(text: str, words: Words) -> SliceSlots:
    """Slice numbers (1-based, as written) and instance numbers named in ``text``."""
    instance_words = "|".join(re.escape(w) for w in sorted(words.instance_words, key=len, reverse=True))
    slice_words = "|".join(re.escape(w) for w in sorted(words.slice_words, key=len, reverse=True))
    instances: list[int] = []
    slices: list[int] = []
    spans: list[tuple[int, int]] = []
    for m in re.finditer(rf"\b(?:{instance_words})\s*{_SLICE_NUMBER}{_RANGE}\b", text, re.IGNORECASE):
        instances.extend(_expand(m.group(1), m.group(2)))
        spans.append(m.span())
    for m in re.finditer(rf"\b(?:{slice_words})\s*{_SLICE_NUMBER}{_RANGE}\b(?!\s*(?:mm|cm|ml|%))", text, re.IGNORECASE):
        if _overlaps(m.span(), spans):
            continue
        slices.extend(_expand(m.group(1), m.group(2)))
        spans.append(m.span())
    return SliceSlots(tuple(dict.fromkeys(slices)), tuple(dict.fromkeys(instances)), tuple(spans))


#: A range longer than this is not a list of slices the user means one by one.
MAX_RANGE = 500


def _expand(first: str, last: str | None) -> list[int]:
    a = int(first)
    b = int(last) if last is not None else a
    if b < a or b - a > MAX_RANGE:
        return [a]
    return list(range(a, b + 1))
