"""What a viewer should show for our objects, read from the objects themselves with pydicom.

The viewer tests compare each viewer's reading with these: the segments a SEG declares (label,
type, laterality modifier, recommended colour) and the measurements a TID 1500 SR holds (tracking
identifier, numeric values with units). Whether those declarations are right for the phantom is
the encoders' tests' concern; here the question is whether each viewer shows what we wrote.

One finding may span several groups sharing a Tracking Unique Identifier (a segment's TID 1411
with its volume, and the drawn TID 1501 of its outline): :func:`sr_findings` merges them per UID,
as OHIF does.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

from tests.outputs_helpers import CORNERSTONE_PREFIX, finding_label

#: DCM codes of TID 1500 (PS3.16): Imaging Measurements, Measurement Group, Tracking Identifier,
#: Tracking Unique Identifier.
IMAGING_MEASUREMENTS = "126010"
MEASUREMENT_GROUP = "125007"
TRACKING_IDENTIFIER = "112039"
TRACKING_UID = "112040"
#: Colour channels may differ by this much between CIELab -> sRGB conversions (rounding, white point).
RGB_TOLERANCE = 3



@dataclass(frozen=True)
class SegmentDeclared:
    number: int
    label: str
    type: str
    #: CodeMeaning of the laterality modifier nested in SegmentedPropertyTypeCodeSequence (PS3.3
    #: C.8.20.2, Segment Description Macro: the modifier is an attribute of the type code item).
    modifier: str | None
    cielab: tuple[int, int, int] | None

    @property
    def rgb(self) -> tuple[int, int, int] | None:
        if self.cielab is None:
            return None
        red, green, blue = hd.color.CIELabColor.from_dicom_value(self.cielab).to_rgb()
        return (int(red), int(green), int(blue))


@dataclass(frozen=True)
class GroupDeclared:
    tracking_identifier: str
    tracking_uid: str
    #: Concept name CodeMeaning -> (value, unit code value) for each NUM item of the group.
    values: dict[str, tuple[float, str]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The finding's name: the identifier, without the Cornerstone tool prefix."""
        return finding_label(self.tracking_identifier)


@dataclass(frozen=True)
class FindingDeclared:
    """The groups of one finding (one Tracking Unique Identifier)."""

    tracking_uid: str
    groups: list[GroupDeclared]

    @property
    def label(self) -> str:
        return self.groups[0].label

    @property
    def numbers(self) -> list[tuple[str, float, str]]:
        """(meaning, value, unit) of every NUM of every group of the finding."""
        return [(meaning, value, unit) for g in self.groups for meaning, (value, unit) in g.values.items()]

    @property
    def headline_numbers(self) -> list[tuple[str, float, str]]:
        """What a measurement list shows of the finding: the numbers of its standard groups (a
        segment's volume, mean...), and of its drawn group the area only (the statistics of the
        drawn region's pixels are shown on the image)."""
        return [
            (meaning, value, unit) for g in self.groups for meaning, (value, unit) in g.values.items()
            if not g.tracking_identifier.startswith(CORNERSTONE_PREFIX) or meaning == "Area"
        ]


def seg_segments(path: Path) -> dict[str, SegmentDeclared]:
    """The SEG's segments by label."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    out = {}
    for item in ds.SegmentSequence:
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        nested = type_item.get("SegmentedPropertyTypeModifierCodeSequence")
        lab = item.get("RecommendedDisplayCIELabValue")
        out[str(item.SegmentLabel)] = SegmentDeclared(
            number=int(item.SegmentNumber),
            label=str(item.SegmentLabel),
            type=str(type_item.CodeMeaning),
            modifier=str(nested[0].CodeMeaning) if nested else None,
            cielab=tuple(int(v) for v in lab) if lab is not None else None,  # type: ignore[arg-type]
        )
    return out


def _concept(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeValue) if names else ""


def sr_measurement_groups(path: Path) -> list[GroupDeclared]:
    """The TID 1501/1411/1410 groups under Imaging Measurements that hold at least one NUM."""
    ds = pydicom.dcmread(path)
    groups = []
    for container in ds.ContentSequence:
        if _concept(container) != IMAGING_MEASUREMENTS:
            continue
        for group in container.get("ContentSequence", []):
            if _concept(group) != MEASUREMENT_GROUP:
                continue
            identifier, uid, values = "", "", {}
            for item in group.get("ContentSequence", []):
                if _concept(item) == TRACKING_IDENTIFIER:
                    identifier = str(item.TextValue)
                elif _concept(item) == TRACKING_UID:
                    uid = str(item.UID)
                elif item.ValueType == "NUM" and "MeasuredValueSequence" in item:
                    measured = item.MeasuredValueSequence[0]
                    unit = str(measured.MeasurementUnitsCodeSequence[0].CodeValue)
                    values[str(item.ConceptNameCodeSequence[0].CodeMeaning)] = (float(measured.NumericValue), unit)
            if values:
                groups.append(GroupDeclared(identifier, uid, values))
    return groups


def sr_tracking_uids(path: Path) -> list[str]:
    """The Tracking Unique Identifier of every group under Imaging Measurements."""
    ds = pydicom.dcmread(path)
    return [
        str(item.UID)
        for container in ds.ContentSequence if _concept(container) == IMAGING_MEASUREMENTS
        for group in container.get("ContentSequence", []) if _concept(group) == MEASUREMENT_GROUP
        for item in group.get("ContentSequence", []) if _concept(item) == TRACKING_UID
    ]


def sr_findings(path: Path) -> dict[str, FindingDeclared]:
    """The groups with numbers, merged per Tracking Unique Identifier, by UID."""
    findings: dict[str, FindingDeclared] = {}
    for group in sr_measurement_groups(path):
        findings.setdefault(group.tracking_uid, FindingDeclared(group.tracking_uid, [])).groups.append(group)
    return findings


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` (thousands separators allowed)."""
    return [float(n.replace(",", "")) for n in re.findall(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?", text)]


def shown(value: float, numbers: list[float]) -> bool:
    """``value`` is among ``numbers`` as a viewer rounds it: OHIF keeps 2 significant decimals
    below 1, 2 decimals from 1, 1 from 10 and none from 100 (its ``roundNumber``); our labels
    keep 6 significant digits."""
    size = abs(value)
    tolerance = 0.5 if size >= 100 else 0.05 if size >= 10 else 0.005 if size >= 1 else max(size * 0.005, 1e-4)
    return any(abs(n - value) <= tolerance + 1e-9 for n in numbers)


def distinct(colours: list[tuple[int, ...]]) -> bool:
    """No two colours within RGB_TOLERANCE of each other on every channel."""
    for i, a in enumerate(colours):
        for b in colours[i + 1:]:
            if all(abs(x - y) <= RGB_TOLERANCE for x, y in zip(a, b)):
                return False
    return True


def close_rgb(a: tuple[int, ...] | list[int] | None, b: tuple[int, ...] | None) -> bool:
    return a is not None and b is not None and all(abs(int(x) - int(y)) <= RGB_TOLERANCE for x, y in zip(a, b))
