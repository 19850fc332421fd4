"""Segment display colours, as data (``palette.json``), keyed by the segment's code.

The SEG's Recommended Display CIELab Value (PS3.3 C.8.20.2) and the overlay's fill colour come from
here, so a viewer shows the same organ in the same colour in every study, the two lungs in two
colours, and the SEG and its secondary-capture stand-in agree.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import highdicom as hd

from image_model.findings import Code, Segment

_PALETTE_FILE = "palette.json"


@dataclass(frozen=True)
class Colour:
    """An sRGB display colour and the word the overlay legend uses for it."""

    rgb: tuple[int, int, int]
    name: str

    def cielab(self) -> hd.color.CIELabColor:
        """The colour as DICOM writes it (CIELab, PS3.3 C.10.7.1.1)."""
        return hd.color.CIELabColor.from_rgb(*self.rgb)


@dataclass(frozen=True)
class _Palette:
    by_code: dict[str, Colour]
    fallback: tuple[Colour, ...]


def _colour(entry: dict[str, Any]) -> Colour:
    r, g, b = (int(v) for v in entry["rgb"])
    return Colour((r, g, b), str(entry["name"]))


@lru_cache(maxsize=1)
def _palette() -> _Palette:
    raw = json.loads(resources.files(__package__).joinpath(_PALETTE_FILE).read_text(encoding="utf-8"))
    return _Palette(
        by_code={key: _colour(entry) for key, entry in raw["by_code"].items()},
        fallback=tuple(_colour(entry) for entry in raw["fallback"]),
    )


def _code_key(code: Code) -> str:
    return f"{code.scheme}:{code.value}"


def palette_key(segment: Segment) -> str:
    """``SCHEME:VALUE`` of the segment's type, then its laterality when that modifies the type
    (an anatomical structure; an abnormality's side belongs to its region, not its colour)."""
    key = _code_key(segment.type)
    if segment.laterality is not None and segment.anatomic_region is None:
        key += " " + _code_key(segment.laterality)
    return key


def _fallback_index(key: str) -> int:
    """A stable index into the fallback colours for a key (the same in every process and study)."""
    return hashlib.sha256(key.encode("utf-8")).digest()[0] % len(_palette().fallback)


def colours_for(segments: Sequence[Segment]) -> list[Colour]:
    """One colour per segment of one object: its code's colour, or a fallback chosen from its key;
    a colour already taken in this object moves to the next unused fallback colour."""
    palette = _palette()
    taken: set[tuple[int, int, int]] = set()
    out: list[Colour] = []
    for segment in segments:
        key = palette_key(segment)
        colour = palette.by_code.get(key)
        if colour is None or colour.rgb in taken:
            start = _fallback_index(key)
            ring = palette.fallback[start:] + palette.fallback[:start]
            colour = next((c for c in ring if c.rgb not in taken), colour or ring[0])
        taken.add(colour.rgb)
        out.append(colour)
    return out
