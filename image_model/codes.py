"""The project's one code table, loaded once from ``codes.json`` (PS3.16 codes as data, never
literals scattered through tools and encoders).

* ``concept(name)`` / ``unit(name)`` / ``procedure_for(modality)`` / ``text_role(role)``: the
  concept names, UCUM units and procedure codes the encoders write;
* ``segment_codes(label)``: what every tool asks for a segment's codes: category (CID 7150), type
  (CID 7151 anatomy or an abnormality), anatomic region and laterality (CID 244);
* ``structure_names()``: the anatomy the table knows, by the planner's target words.

All return :class:`image_model.findings.Code`; ``sr_templates.coded.coded`` turns one into
highdicom's CodedConcept.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from image_model.findings import Code, Measurement, Segment

_TABLE_FILE = "codes.json"
_CODE_SECTIONS = ("concepts", "units", "procedures")
#: Sections of named things a label may mention, each entry {"code": [...], "aliases": [...]}.
_NAMED_SECTIONS = ("structures", "abnormalities")


@dataclass(frozen=True)
class Named:
    """One entry of ``structures`` or ``abnormalities``: its canonical name and code."""

    name: str
    code: Code
    paired: bool = False


@dataclass(frozen=True)
class _Table:
    codes: dict[str, dict[str, Code]]
    #: section -> {word sequence (a name or alias, split in words) -> entry}
    named: dict[str, dict[tuple[str, ...], Named]]
    #: label word -> laterality concept
    lateralities: dict[str, Code]


@lru_cache(maxsize=1)
def _table() -> _Table:
    """Parse ``codes.json`` once per process (read-only afterwards)."""
    raw: dict[str, Any] = json.loads(
        resources.files(__package__).joinpath(_TABLE_FILE).read_text(encoding="utf-8")
    )
    codes = {
        section: {name: Code(*entry) for name, entry in raw[section].items()}
        for section in _CODE_SECTIONS
    }
    codes["text_roles"] = {role: codes["concepts"][key] for role, key in raw["text_roles"].items()}
    named: dict[str, dict[tuple[str, ...], Named]] = {}
    for section in _NAMED_SECTIONS:
        named[section] = {}
        for name, entry in raw[section].items():
            item = Named(name, Code(*entry["code"]), bool(entry.get("paired", False)))
            for spelling in (name, *entry.get("aliases", ())):
                named[section][tuple(words(spelling))] = item
    lateralities = {word: codes["concepts"][key] for word, key in raw["lateralities"].items()}
    return _Table(codes, named, lateralities)


def _lookup(section: str, name: str) -> Code:
    try:
        return _table().codes[section][name]
    except KeyError:
        known = ", ".join(sorted(_table().codes[section]))
        raise KeyError(f"no {section[:-1]} named {name!r} in {_TABLE_FILE} (known: {known})") from None


def concept(name: str) -> Code:
    """A concept code by its table name, e.g. ``concept("volume")``."""
    return _lookup("concepts", name)


def unit(name: str) -> Code:
    """A UCUM unit code by its table name, e.g. ``unit("mL")``, ``unit("HU")``, ``unit("pixels")``."""
    return _lookup("units", name)


def procedure_for(modality: str) -> Code:
    """Procedure reported (TID 1500 row 4; CID 100) for a source Modality."""
    procedures = _table().codes["procedures"]
    return procedures.get(modality.upper(), procedures["default"])


def text_role(role: str) -> Code:
    """Concept name for one kind of report free text (``answer``, ``instruction``, ``label``,
    ``tool_text``, ``box_label``, ``units_note``, ``summary``, ``caveat``), as chosen in codes.json's
    ``text_roles``."""
    return _lookup("text_roles", role)


# --- segments ---------------------------------------------------------------------------------

def words(label: str | None) -> list[str]:
    """A label as lower-case words (``"Left-kidney_mass"`` -> ``["left", "kidney", "mass"]``)."""
    return (label or "").lower().replace("-", " ").replace("_", " ").split()


@dataclass(frozen=True)
class SegmentCodes:
    """A segment's codes (PS3.3 C.8.20.2): what it is, where, and on which side."""

    category: Code
    type: Code
    anatomic_region: Code | None = None
    laterality: Code | None = None

    def segment(self, label: str, mask: np.ndarray, measurements: list[Measurement]) -> Segment:
        """A :class:`Segment` named ``label`` carrying these codes."""
        return Segment(
            label=label, category=self.category, type=self.type, mask=mask, measurements=measurements,
            anatomic_region=self.anatomic_region, laterality=self.laterality,
        )


def _find(section: str, label_words: list[str]) -> Named | None:
    """The entry of ``section`` whose name or alias occurs in ``label_words`` (longest wins)."""
    found = [
        (len(spelling), item)
        for spelling, item in _table().named[section].items()
        if any(tuple(label_words[i : i + len(spelling)]) == spelling for i in range(len(label_words)))
    ]
    return max(found, key=lambda pair: pair[0])[1] if found else None


def laterality_of(label: str | None) -> Code | None:
    """The side a label names (``"left kidney"`` -> SCT Left); None when it names none or both
    ``left`` and ``right`` words."""
    sides = {_table().lateralities[w] for w in words(label) if w in _table().lateralities}
    return sides.pop() if len(sides) == 1 else None


def segment_codes(label: str | None) -> SegmentCodes:
    """The codes of a segment named ``label`` (PS3.16 CID 7150 / 7151 / 244).

    * an abnormality word (``"lesion"``, ``"tumor"``...) gives "Morphologically Abnormal
      Structure" and that abnormality; an anatomy word beside it becomes the anatomic region
      (``"left kidney mass"``: Mass, region Kidney, laterality Left);
    * else an anatomy word gives "Anatomical Structure" and the organ (``"right lung"``: Lung,
      laterality Right; the side is never folded into the type, PS3.3 C.8.20.2);
    * else (no label, or words the table does not know) the generic "Tissue"/"Tissue", so that a
      SEG can still be written without claiming an anatomy.
    """
    label_words = words(label)
    side = laterality_of(label)
    abnormality = _find("abnormalities", label_words)
    structure = _find("structures", label_words)
    if abnormality is not None:
        region = structure.code if structure is not None else None
        return SegmentCodes(
            concept("morphologically_abnormal_structure"), abnormality.code, region,
            side if region is not None else None,
        )
    if structure is not None:
        return SegmentCodes(concept("anatomical_structure"), structure.code, None, side)
    return SegmentCodes(concept("tissue"), concept("tissue"))


def structure_names() -> frozenset[str]:
    """Canonical names of the anatomy the table knows (the planner's target words)."""
    return frozenset(item.name for item in _table().named["structures"].values())
