"""Header values in a valid form: what a source instance holds, normalised so that everything
copied from it into an output (SEG, SR, overlays copy the Patient and Study modules) is valid
DICOM and never fails a job.

Real PACS traffic carries invalid but common values: ``PatientBirthDate 1901-02-03`` (DA is
``YYYYMMDD``, PS3.5 6.2), ``StudyTime 12:30:45``, an age ``45 years``, ``PatientSex male``, names
and descriptions longer than their VR allows, control characters, a decimal string of 20 digits.
:func:`normalise_header` rewrites each such value in place into the valid form it plainly means
(``19010203``, ``123045``, ``045Y``, ``M``, truncated to the VR's length, control characters
removed, the number re-formatted) or, when there is none, empties it (an empty Type 2 value is
valid; a wrong one is not). It returns the keywords it changed, never the values (they are patient
data). The loader applies it to every source header it keeps; the encoders may call it on anything
else they copy from. :func:`unreadable_value` names a value the loader itself needs that cannot be
read at all (the loader then leaves that instance out of its series).
"""

from __future__ import annotations

import datetime
import math
import re
import struct
from collections.abc import Callable
from typing import Any

from pydicom.datadict import dictionary_VM
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException
from pydicom.multival import MultiValue
from pydicom.valuerep import format_number_as_ds

#: What reading one element's value raises when a peer wrote it malformed: a length that is not a
#: multiple of its VR's size, text that is not a number where one is needed, an unknown VR or
#: character set. Code that reads a value it can do without catches these and leaves it out;
#: the message is never echoed (it quotes the value).
DECODE_ERRORS: tuple[type[Exception], ...] = (
    BytesLengthException, ValueError, TypeError, OverflowError, LookupError, NotImplementedError, struct.error,
)

#: Longest value per VR (PS3.5 Table 6.2-1), in characters.
MAX_CHARS = {"AE": 16, "CS": 16, "DS": 16, "IS": 12, "LO": 64, "SH": 16, "ST": 1024, "LT": 10240, "UC": 0x7FFF}
#: Characters PS3.5 allows in the "text" VRs besides printable ones (LF, FF, CR, TAB).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The same less the controls text VRs allow (PS3.5 6.2: TAB, LF, FF, CR).
_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_TM = re.compile(r"(\d{2})(\d{2})?(\d{2})?(\.\d{1,6})?")
_DT = re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?")
_AS = re.compile(r"\d{3}[DWMY]")
_AGE_WORDS = {"d": "D", "day": "D", "days": "D", "w": "W", "week": "W", "weeks": "W", "m": "M", "month": "M",
              "months": "M", "y": "Y", "year": "Y", "years": "Y", "": "Y"}
_DS = re.compile(r"[ ]*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?[ ]*")
_CS_BAD = re.compile(r"[^A-Z0-9 _]")
#: Enumerated values of Patient's Sex (PS3.3 C.7.1.1) and the words that plainly mean them.
_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}
#: Nesting followed into sequence items (the parse policy bounds real nesting far below this).
MAX_DEPTH = 32


def _date(text: str) -> str:
    digits = re.sub(r"[-./ ]", "", text.strip())
    if not re.fullmatch(r"\d{8}", digits):
        return ""
    try:
        datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return ""
    return digits


def _time(text: str) -> str:
    value = text.strip().replace(":", "")
    match = _TM.fullmatch(value)
    if not match:
        return ""
    hh, mm, ss = int(match.group(1)), int(match.group(2) or 0), int(match.group(3) or 0)
    return value if hh < 24 and mm < 60 and ss < 61 else ""


def _datetime(text: str) -> str:
    value = text.strip()
    if _DT.fullmatch(value):
        return value
    value = re.sub(r"[-:T ]", "", value[:19]) + value[19:]
    return value if _DT.fullmatch(value) else ""


def _age(text: str) -> str:
    value = text.strip()
    if _AS.fullmatch(value):
        return value
    match = re.fullmatch(r"(\d{1,3})\s*([A-Za-z]*)", value)
    if not match or match.group(2).lower() not in _AGE_WORDS:
        return ""
    return f"{int(match.group(1)):03d}{_AGE_WORDS[match.group(2).lower()]}"


def _decimal(text: str) -> str:
    value = text.strip()
    if _DS.fullmatch(value) and len(value) <= MAX_CHARS["DS"]:
        return value
    try:
        number = float(re.sub(r"[^0-9eE+.-]", "", value))
    except ValueError:
        return ""
    return format_number_as_ds(number) if math.isfinite(number) else ""


def _integer(text: str) -> str:
    value = text.strip()
    try:
        number = int(value)
    except ValueError:
        return ""
    if not -(2**31) <= number < 2**31:
        return ""
    return value if re.fullmatch(r"[+-]?\d{1,12}", value) else str(number)


def _code_string(text: str) -> str:
    return _CS_BAD.sub("_", text.strip().upper())[: MAX_CHARS["CS"]]


def _short_text(vr: str) -> Callable[[str], str]:
    def clean(text: str) -> str:
        return _CONTROL.sub("", text).replace("\\", "/")[: MAX_CHARS[vr]]

    return clean


def _long_text(vr: str) -> Callable[[str], str]:
    def clean(text: str) -> str:
        kept = _TEXT_CONTROL.sub("", text)
        return kept[: MAX_CHARS[vr]] if vr in MAX_CHARS else kept

    return clean


def _person_name(text: str) -> str:
    """PS3.5 6.2.1: up to three component groups (=) of up to five components (^), each group at
    most 64 characters."""
    groups = _CONTROL.sub("", text).replace("\\", " ").split("=")[:3]
    return "=".join("^".join(g.split("^")[:5])[:64] for g in groups)


_NORMALISERS: dict[str, Callable[[str], str]] = {
    "DA": _date, "TM": _time, "DT": _datetime, "AS": _age, "DS": _decimal, "IS": _integer,
    "CS": _code_string, "PN": _person_name,
    "LO": _short_text("LO"), "SH": _short_text("SH"), "AE": _short_text("AE"),
    "ST": _long_text("ST"), "LT": _long_text("LT"), "UT": _long_text("UT"), "UC": _long_text("UC"),
}
#: Attributes with their own enumerated values.
_SPECIAL: dict[str, Callable[[str], str]] = {"PatientSex": lambda t: _SEX.get(t.strip().upper(), "")}


def normalise_header(ds: Dataset, _depth: int = 0) -> list[str]:
    """Rewrite invalid text values of ``ds`` (and its sequence items) in place into a valid form,
    or empty them; returns the keywords changed (sorted, no values)."""
    changed: set[str] = set()
    for elem in ds:
        if elem.VR == "SQ":
            if _depth < MAX_DEPTH:
                for item in elem.value or []:
                    changed.update(normalise_header(item, _depth + 1))
            continue
        clean = _SPECIAL.get(elem.keyword) or _NORMALISERS.get(elem.VR)
        if clean is None or elem.value is None or elem.value == "":
            continue
        values = list(elem.value) if isinstance(elem.value, (list, MultiValue)) else [elem.value]
        texts = [str(v) for v in values]
        fixed = [clean(t) for t in texts]
        if elem.VR in ("DS", "IS"):
            fixed = [f for f in fixed if f] or [""]
        try:
            single = dictionary_VM(elem.tag) == "1"
        except KeyError:
            single = False
        if single and len(fixed) > 1:
            fixed = fixed[:1]
        if fixed != texts:
            elem.value = fixed[0] if len(fixed) == 1 else fixed
            changed.add(elem.keyword or str(elem.tag))
    return sorted(changed)


#: Header values the loader reads from every instance, and the conversion each must survive.
_READ_AS: dict[str, Callable[[Any], object]] = {
    "SOPInstanceUID": str, "SeriesInstanceUID": str, "FrameOfReferenceUID": str, "Modality": str,
    "ImageType": str, "NumberOfFrames": int, "SamplesPerPixel": int, "Rows": int, "Columns": int,
    "BitsAllocated": int, "RescaleSlope": float, "RescaleIntercept": float, "SliceThickness": float,
    "SpacingBetweenSlices": float, "PixelPaddingValue": int, "PhotometricInterpretation": str,
}


def unreadable_value(ds: Dataset) -> str | None:
    """The keyword of the first header value the loader needs that cannot be read as it must be
    (pydicom raises converting it, or it is not a number where one is needed), or None."""
    for keyword, convert in _READ_AS.items():
        try:
            value = ds.get(keyword)
            if value is not None and value != "":
                convert(value)
        except Exception:  # noqa: BLE001 - pydicom's conversion or ours: the value is unusable
            return keyword
    return None
