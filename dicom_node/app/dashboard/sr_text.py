"""An SR's content tree as readable lines (the job page shows the node's own SR this way).

Each content item (PS3.3 C.17.3) becomes one line, indented by depth: its concept name, then its
value by value type (TEXT, CODE, NUM with its unit, UIDREF, DATE/TIME, IMAGE reference, SCOORD /
SCOORD3D graphic type and point count, CONTAINER). Long runs of the same image reference
(``Source Image for Segmentation`` x 200) collapse into one line with a count, and the Image
Library's per-image acquisition context is left out: that is the source series' own header.
Only the content tree is read, never the document's patient/study header.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

#: Lines shown at most (a pathological SR is cut, and says so).
MAX_LINES = 2000
#: Containers shown as one line with the number of items they hold.
SUMMARISED = frozenset({"Image Library"})


@dataclass(frozen=True)
class Line:
    depth: int
    relation: str
    name: str
    value: str


def _meaning(seq: Sequence[Dataset] | None) -> str:
    return str(seq[0].get("CodeMeaning", "")) if seq else ""


def _number(value: object) -> str:
    """A NUM's value as a reader writes it: at most 6 significant digits (a DS holds up to 16)."""
    try:
        return f"{float(str(value)):.6g}"
    except (TypeError, ValueError):
        return str(value or "")


def _unit(units: Sequence[Dataset] | None) -> str:
    """A UCUM unit (PS3.16 CID 82) by its code when that reads as a unit ("mL", "mm2"), else by
    its meaning ("[hnsf'U]" -> "Hounsfield unit"; "{voxels}" -> "voxels"); "1" (no unit): none."""
    if not units:
        return ""
    code = str(units[0].get("CodeValue", ""))
    if code == "1":
        return ""
    if any(c in code for c in "[]{}'"):
        return str(units[0].get("CodeMeaning", "")) or code.strip("{}")
    return code


def _value(item: Dataset) -> str:
    kind = str(item.get("ValueType", ""))
    if kind == "TEXT":
        return str(item.get("TextValue", ""))
    if kind == "CODE":
        return _meaning(item.get("ConceptCodeSequence"))
    if kind == "NUM":
        measured = item.get("MeasuredValueSequence")
        if not measured:
            return "(no value)"
        return f"{_number(measured[0].get('NumericValue'))} " \
               f"{_unit(measured[0].get('MeasurementUnitsCodeSequence'))}".strip()
    if kind == "UIDREF":
        return str(item.get("UID", ""))
    if kind in ("DATE", "TIME", "DATETIME"):
        return str(item.get(kind.title() if kind != "DATETIME" else "DateTime", ""))
    if kind in ("IMAGE", "COMPOSITE"):
        refs = item.get("ReferencedSOPSequence") or []
        segments = refs[0].get("ReferencedSegmentNumber") if refs else None
        return "image" + (f", segment {segments}" if segments is not None else "")
    if kind in ("SCOORD", "SCOORD3D"):
        data = item.get("GraphicData") or []
        dims = 2 if kind == "SCOORD" else 3
        return f"{item.get('GraphicType', '')} of {len(data) // dims} point(s)"
    if kind == "CONTAINER":
        return ""
    return kind.lower()


def _walk(items: Sequence[Dataset], depth: int) -> Iterator[Line]:
    run: tuple[str, int] | None = None  # (name, count) of repeated IMAGE references
    for item in items:
        name = _meaning(item.get("ConceptNameCodeSequence"))
        relation = str(item.get("RelationshipType", "")).lower()
        if item.get("ValueType") == "IMAGE" and "ReferencedSegmentNumber" not in (
                (item.get("ReferencedSOPSequence") or [Dataset()])[0]):
            if run is not None and run[0] == name:
                run = (name, run[1] + 1)
                continue
            if run is not None:
                yield Line(depth, "contains", run[0], f"{run[1]} image(s)")
            run = (name, 1)
            continue
        if run is not None:
            yield Line(depth, "contains", run[0], f"{run[1]} image(s)")
            run = None
        children = item.get("ContentSequence") or []
        if name in SUMMARISED:
            yield Line(depth, relation, name, f"{len(children)} item(s)")
            continue
        yield Line(depth, relation, name, _value(item))
        yield from _walk(children, depth + 1)
    if run is not None:
        yield Line(depth, "contains", run[0], f"{run[1]} image(s)")


def sr_lines(path: Path) -> list[Line]:
    """The SR document's content tree as lines (at most :data:`MAX_LINES`)."""
    ds = pydicom.dcmread(path)
    root = Line(0, "", _meaning(ds.get("ConceptNameCodeSequence")), "")
    lines = [root]
    for line in _walk(ds.get("ContentSequence") or [], 1):
        if len(lines) >= MAX_LINES:
            lines.append(Line(1, "", "(cut)", f"more than {MAX_LINES} lines"))
            break
        lines.append(line)
    return lines
