"""The ``targets`` and ``exclude`` params: which of a tool's segments and boxes were asked for.

One mechanism for every tool that returns several structures: its schema includes
:data:`TARGET_PARAMS`, and it passes what it found through :func:`select_segments` (or
:func:`select_boxes`) before building its output. A target is a structure name with an optional
side, as the planner writes it ("left lung", "liver", "right pleural effusion"):

* a segment matches when its label names the structure (words compared without case, "_" or
  "-", plural "s": "kidney" matches "kidney_left" and "Right Kidney") and, when a side is asked,
  its side is that side (from its laterality code, PS3.16 CID 244, or a side word in its label);
  a segment whose side is unknown does not match a sided target: a wrong side is worse than none;
* a box's side is the patient side of its centre, from the image orientation
  (ImageOrientationPatient, or PatientOrientation on a projection radiograph, PS3.3 C.7.6.1.1.1);
  when neither is known the boxes are kept and :func:`select_boxes` says the side is unknown.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from image_model.codes import concept

if TYPE_CHECKING:
    from image_model.findings import Box, Segment
    from image_model.volume import Volume

#: JSON schema properties a tool adds to its ``params_schema`` to take targets.
TARGET_PARAMS: dict[str, Any] = {
    "targets": {
        "type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
        "description": "only these structures, each optionally with a side ('left lung', 'liver')",
    },
    "exclude": {
        "type": "array", "items": {"type": "string", "minLength": 1}, "minItems": 1,
        "description": "leave these structures out (same form as targets)",
    },
}

SIDES = ("left", "right")
_SIDE_CODES = {concept("left").value: "left", concept("right").value: "right"}


@dataclass(frozen=True)
class Target:
    """A requested structure: its words (without side words) and its side, if one was asked."""

    words: tuple[str, ...]
    side: str | None

    @property
    def name(self) -> str:
        return " ".join(self.words)

    def __str__(self) -> str:
        return f"{self.side} {self.name}" if self.side else self.name


def _words(text: str) -> list[str]:
    return text.lower().replace("_", " ").replace("-", " ").split()


def _stem(word: str) -> str:
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def parse_target(text: str) -> Target:
    """"left lung" -> lung, left; "kidney_right" -> kidney, right; "lungs" -> lung."""
    words = _words(text)
    sides = {w for w in words if w in SIDES}
    core = tuple(_stem(w) for w in words if w not in SIDES)
    return Target(core, sides.pop() if len(sides) == 1 else None)


def _names_match(label_core: Sequence[str], target: Target) -> bool:
    a, b = set(label_core), set(target.words)
    return bool(a) and bool(b) and (a <= b or b <= a)


def segment_side(segment: Segment) -> str | None:
    """The segment's side: its laterality code, else a side word in its label."""
    if segment.laterality is not None and segment.laterality.value in _SIDE_CODES:
        return _SIDE_CODES[segment.laterality.value]
    return parse_target(segment.label).side


def matches(segment: Segment, target: Target) -> bool:
    label = parse_target(segment.label)
    if not _names_match(label.words, target):
        return False
    return target.side is None or segment_side(segment) == target.side


S = TypeVar("S", bound="Segment")


def select_segments(
    segments: Sequence[S], targets: Sequence[str] | None, exclude: Sequence[str] | None = None
) -> tuple[list[S], list[str]]:
    """The segments asked for (all when no targets are given) minus the excluded ones, and the
    targets nothing matched (for the tool's summary: "not found")."""
    wanted = [parse_target(t) for t in targets or []]
    unwanted = [parse_target(t) for t in exclude or []]
    kept = [s for s in segments if (not wanted or any(matches(s, t) for t in wanted))
            and not any(matches(s, t) for t in unwanted)]
    missing = [str(t) for t in wanted if not any(matches(s, t) for s in kept)]
    return kept, missing


def column_side(volume: Volume) -> str | None:
    """The patient side that increasing column index points to, or None when unknown."""
    assumed = "geometry" in volume.meta
    if not assumed:
        row_x = float(volume.orientation[0])
        if abs(row_x) >= 0.5:
            return "left" if row_x > 0 else "right"  # +x is patient left (LPS, PS3.3 C.7.6.2.1.1)
        return None
    ds = volume.datasets[0] if volume.datasets else None
    value = ds.get("PatientOrientation") if ds is not None else None
    if not value or len(value) < 1:
        return None
    row = str(value[0]).upper()
    if "L" in row and "R" not in row:
        return "left"
    if "R" in row and "L" not in row:
        return "right"
    return None


def box_side(box: Box, volume: Volume) -> str | None:
    """The patient side of a box's centre (the image's middle column as the midline)."""
    towards = column_side(volume)
    if towards is None:
        return None
    centre = (box.box[0] + box.box[2]) / 2
    if abs(centre - 0.5) < 0.02:
        return None
    other = "right" if towards == "left" else "left"
    return towards if centre > 0.5 else other


B = TypeVar("B", bound="Box")


def select_boxes(boxes: Sequence[B], targets: Sequence[str] | None, volume: Volume) -> tuple[list[B], list[str]]:
    """The boxes on the asked side of each sided target (boxes of other phrases, and all boxes
    when no side is asked, are kept), and notes for the summary when a side cannot be told."""
    sided = [t for t in (parse_target(x) for x in targets or []) if t.side is not None]
    if not sided:
        return list(boxes), []
    notes: list[str] = []
    if column_side(volume) is None:
        notes.append("the image orientation is not known, so boxes were not filtered by side")
        return list(boxes), notes
    kept = []
    for box in boxes:
        phrase = parse_target(box.label)
        asked = [t for t in sided if _names_match(phrase.words, t)]
        if not asked or any(box_side(box, volume) == t.side for t in asked):
            kept.append(box)
    return kept, notes
