"""What a viewer should show for our objects, read from the objects themselves with pydicom.

The viewer tests compare each viewer's reading with these: the segments a SEG declares (label,
type, laterality modifier, recommended colour) and the measurements a TID 1500 SR holds (tracking
identifier, numeric values with units). Whether those declarations are right for the phantom is
the encoders' tests' concern; here the question is whether each viewer shows what we wrote.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset

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


def distinct(colours: list[tuple[int, ...]]) -> bool:
    """No two colours within RGB_TOLERANCE of each other on every channel."""
    for i, a in enumerate(colours):
        for b in colours[i + 1:]:
            if all(abs(x - y) <= RGB_TOLERANCE for x, y in zip(a, b)):
                return False
    return True


def close_rgb(a: tuple[int, ...] | list[int] | None, b: tuple[int, ...] | None) -> bool:
    return a is not None and b is not None and all(abs(int(x) - int(y)) <= RGB_TOLERANCE for x, y in zip(a, b))
