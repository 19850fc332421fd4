"""De-identification of what leaves the node for a remote endpoint (PS3.15 Annex E).

A planner or language model that runs on another host (an OpenAI-compatible server, a cloud API)
must not receive identifying information. This module holds the rules, as pure functions:

* :func:`deidentify_dataset` applies the Basic Application Level Confidentiality Profile
  (PS3.15 E.1, E.2) to a copy of a header: the per-attribute actions of Table E.1-1 (kept as data in
  ``deidentify_profile.json``), removal of private attributes (E.1.1), removal of any other
  person-name or date attribute (a conservative reading: PN, DA and DT values identify), and the
  Patient Identity Removed / De-identification Method attributes that say it was done (PS3.3 C.7.1.1).
* :func:`identifying_values` lists the values that copy removed or replaced, and :func:`scrub_text`
  takes them (and any date or UID written in free text) out of text built from the header, the
  user's question or tool outputs, so a name quoted in a question is removed as well.
* :func:`image_verdict` decides whether a rendered image may leave: not when the header says
  BurnedInAnnotation YES or RecognizableVisualFeatures YES (PS3.3 C.7.6.1.1.x), nor when it does
  not say NO for an object kind that usually carries burned-in text (ultrasound, secondary
  capture, photographs: PS3.15 E.3.1 asks for those to be checked before release).
* :func:`is_remote_endpoint` says when the rules apply: any host but loopback, unless configured.

What was done is reported as a :class:`Disclosure` on the logger :data:`DISCLOSURE_LOGGER` (one
structured line without PHI; an audit trail subscribes with a logging handler and reads
``record.disclosure``).

Nothing here imports the rest of the project.
"""
from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import logging
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag

PROFILE_FILE = Path(__file__).with_name("deidentify_profile.json")
#: Logger of the disclosure events (see :func:`record_disclosure`).
DISCLOSURE_LOGGER = "mmedagent.disclosure"
#: PS3.16 CID 7050 De-identification Method: "Basic Application Confidentiality Profile".
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
DEIDENTIFICATION_METHOD = "PS3.15 E.1 Basic Profile (mmedagent-node)"
#: Text that replaces a removed value in outgoing text.
REDACTED = "[removed]"
#: Values shorter than this are not searched for in free text (a sex "M" or a study ID "1" would
#: blank every matching letter or digit); the attributes themselves are still removed.
MIN_SCRUB_LENGTH = 3
#: Dummy values for "D" actions, by VR (PS3.5 Table 6.2-1 formats).
DUMMY_BY_VR: Mapping[str, str] = MappingProxyType({
    "PN": "ANONYMOUS", "LO": "ANONYMIZED", "SH": "ANONYMIZED", "LT": "ANONYMIZED", "ST": "ANONYMIZED",
    "UT": "ANONYMIZED", "CS": "ANONYMIZED", "DA": "19000101", "TM": "000000", "DT": "19000101000000",
    "AS": "000D", "IS": "0", "DS": "0",
})
#: Modalities whose images usually carry burned-in text (PS3.3 C.7.3.1.1.1 defined terms):
#: ultrasound, secondary capture, other, external-camera and endoscopic photographs, documents.
BURNED_IN_TEXT_MODALITIES = frozenset({"US", "IVUS", "SC", "OT", "XC", "ES", "GM", "DOC", "OP", "SM"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"

_DATE_PATTERNS = (
    r"(?:19|20)\d{2}[-/.](?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])",
    r"(?:0?[1-9]|[12]\d|3[01])[-/.](?:0?[1-9]|1[0-2])[-/.](?:19|20)\d{2}",
    r"(?:0?[1-9]|1[0-2])[-/.](?:0?[1-9]|[12]\d|3[01])[-/.](?:19|20)\d{2}",
    r"(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])",
)
_DATE = re.compile(r"(?<![\w.])(?:" + "|".join(_DATE_PATTERNS) + r")(?![\w])")
#: A DICOM UID written in text: digits and dots, at least five components.
_UID = re.compile(r"(?<![\w.])[0-2](?:\.\d+){4,}(?![\w.])")


@dataclass(frozen=True)
class ProfileRule:
    """One row of Table E.1-1: the attribute and its Basic Profile action code."""

    tag: BaseTag
    keyword: str
    action: str

    @property
    def effect(self) -> str:
        """What this node does: "remove", "empty", "dummy", "uid" or "keep". Compound codes take
        their strongest reading (X before Z before D): the copy is never stored as an instance, so
        IOD conformance does not require keeping a value."""
        parts = self.action.replace("*", "").split("/")
        if "X" in parts or "C" in parts:
            return "remove"
        if "Z" in parts:
            return "empty"
        if "D" in parts:
            return "dummy"
        if "U" in parts:
            return "uid"
        return "keep"


@lru_cache(maxsize=1)
def basic_profile() -> Mapping[BaseTag, ProfileRule]:
    """Table E.1-1 (the rows in ``deidentify_profile.json``), keyed by tag."""
    data = json.loads(PROFILE_FILE.read_text(encoding="utf-8"))
    rules: dict[BaseTag, ProfileRule] = {}
    for row in data["attributes"]:
        group, element = row["tag"].strip("()").split(",")
        tag = Tag(int(group, 16), int(element, 16))
        rules[tag] = ProfileRule(tag, row["keyword"], row["action"])
    return MappingProxyType(rules)


def _rule_for(elem: DataElement) -> ProfileRule | None:
    rule = basic_profile().get(elem.tag)
    if rule is not None:
        return rule
    if elem.tag.is_private:
        return ProfileRule(elem.tag, "private", "X")
    if elem.VR in ("PN", "DA", "DT"):
        return ProfileRule(elem.tag, elem.keyword or "unknown", "X")
    group = elem.tag.group
    if 0x6000 <= group <= 0x60FF and group % 2 == 0:  # overlay planes may hold burned-in text
        return ProfileRule(elem.tag, elem.keyword or "overlay", "X")
    return None


def derived_uid(uid: str, root: str = "2.25.") -> str:
    """A replacement UID (PS3.5 B.2, the 2.25 UUID-derived root) that is the same for the same
    source UID, so references between de-identified objects stay consistent."""
    digest = hashlib.sha256(uid.encode("ascii", "replace")).digest()[:16]
    return root + str(int.from_bytes(digest, "big"))


def deidentify_dataset(ds: Dataset) -> Dataset:
    """A de-identified copy of ``ds`` (sequences included); ``ds`` is not changed."""
    out = copy.deepcopy(ds)
    _apply(out)
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
    out.DeidentificationMethodCodeSequence = [code]
    return out


def _apply(ds: Dataset) -> None:
    for elem in list(ds):
        rule = _rule_for(elem)
        effect = rule.effect if rule is not None else "keep"
        if effect == "remove":
            del ds[elem.tag]
        elif effect == "empty":
            elem.value = [] if elem.VR == "SQ" else None
        elif effect == "dummy":
            if elem.VR == "SQ" or elem.VR not in DUMMY_BY_VR:
                del ds[elem.tag]
            else:
                elem.value = DUMMY_BY_VR[elem.VR]
        elif effect == "uid":
            if elem.VR == "UI" and elem.value:
                values = elem.value if isinstance(elem.value, MultiValue) else [elem.value]
                replaced = [derived_uid(str(v)) for v in values]
                elem.value = replaced if len(replaced) > 1 else replaced[0]
        elif elem.VR == "SQ":
            for item in elem.value or []:
                _apply(item)


def _walk(ds: Dataset) -> Iterator[DataElement]:
    for elem in ds:
        yield elem
        if elem.VR == "SQ":
            for item in elem.value or []:
                yield from _walk(item)


def _texts(elem: DataElement) -> list[str]:
    """The text forms an element's value may take in free text."""
    if elem.VR == "SQ" or elem.value in (None, ""):
        return []
    values = list(elem.value) if isinstance(elem.value, (MultiValue, list, tuple)) else [elem.value]
    out: list[str] = []
    for value in values:
        if isinstance(value, (bytes, bytearray)):
            continue
        text = str(value).strip()
        if not text:
            continue
        out.append(text)
        if elem.VR == "PN":
            out.extend(_name_forms(text))
        elif elem.VR in ("DA", "DT") and len(text) >= 8 and text[:8].isdigit():
            out.extend(_date_forms(text[:8]))
    return out


def _name_forms(name: str) -> list[str]:
    """A DICOM person name (``Family^Given^Middle^Prefix^Suffix``, PS3.5 6.2) as people write it."""
    alphabetic = name.split("=")[0]
    parts = [p.strip() for p in alphabetic.split("^")]
    forms = [p for p in parts if p]
    family, given = (parts + ["", ""])[:2]
    if family and given:
        forms += [f"{given} {family}", f"{family} {given}", f"{family}, {given}"]
    return forms


def _date_forms(ymd: str) -> list[str]:
    y, m, d = ymd[:4], ymd[4:6], ymd[6:8]
    return [f"{y}-{m}-{d}", f"{y}/{m}/{d}", f"{d}/{m}/{y}", f"{m}/{d}/{y}", f"{d}.{m}.{y}"]


def identifying_values(datasets: Iterable[Dataset]) -> tuple[str, ...]:
    """The values :func:`deidentify_dataset` would remove or replace in ``datasets`` (and the forms
    names and dates take in text), longest first, without ones too short to search for."""
    found: set[str] = set()
    for ds in datasets:
        for elem in _walk(ds):
            rule = _rule_for(elem)
            if rule is None or rule.effect == "keep":
                continue
            found.update(t for t in _texts(elem) if len(t) >= MIN_SCRUB_LENGTH)
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


@dataclass
class ScrubCount:
    """How many values :func:`scrub_text` replaced, by kind (no values: counts carry no PHI)."""

    header_values: int = 0
    dates: int = 0
    uids: int = 0

    def add(self, other: ScrubCount) -> None:
        self.header_values += other.header_values
        self.dates += other.dates
        self.uids += other.uids


@lru_cache(maxsize=64)
def _values_pattern(values: tuple[str, ...]) -> re.Pattern[str] | None:
    if not values:
        return None
    alternatives = "|".join(re.escape(v) for v in values)
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alternatives})(?![A-Za-z0-9])", re.IGNORECASE)


def scrub_text(text: str, values: tuple[str, ...]) -> tuple[str, ScrubCount]:
    """``text`` with every value of ``values``, every date and every UID replaced by
    :data:`REDACTED`; and what was replaced."""
    count = ScrubCount()
    pattern = _values_pattern(values)
    if pattern is not None:
        text, count.header_values = pattern.subn(REDACTED, text)
    text, count.dates = _DATE.subn(REDACTED, text)
    text, count.uids = _UID.subn(REDACTED, text)
    return text, count


@dataclass(frozen=True)
class ImageVerdict:
    allowed: bool
    reason: str


def image_verdict(ds: Dataset | None) -> ImageVerdict:
    """Whether an image rendered from the pixel data of ``ds``'s series may leave the node."""
    if ds is None:
        return ImageVerdict(False, "no header to check for burned-in annotation")
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper()
    if burned == "YES":
        return ImageVerdict(False, "BurnedInAnnotation is YES")
    if str(ds.get("RecognizableVisualFeatures", "") or "").strip().upper() == "YES":
        return ImageVerdict(False, "RecognizableVisualFeatures is YES")
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop_class = str(ds.get("SOPClassUID", "") or "")
    usually_text = modality in BURNED_IN_TEXT_MODALITIES or sop_class.startswith(SECONDARY_CAPTURE_PREFIX)
    if usually_text and burned != "NO":
        kind = modality or "secondary capture"
        return ImageVerdict(False, f"{kind} images usually carry burned-in text and BurnedInAnnotation is not NO")
    return ImageVerdict(True, "no burned-in annotation flagged")


def is_remote_endpoint(url: str, treat_as_remote: bool = False) -> bool:
    """True unless ``url``'s host is loopback (``localhost``, 127.0.0.0/8, ::1) and the
    configuration does not say to treat it as remote. Names are not resolved: any other name counts
    as remote, so a DNS answer can never turn de-identification off."""
    if treat_as_remote:
        return True
    return not is_loopback_host(urllib.parse.urlsplit(url).hostname or "")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or address without port; IPv6 with or without brackets) names only
    this machine: ``localhost`` or a loopback address (127.0.0.0/8, ::1). Names are not resolved,
    so any other name, ``*.localhost`` included, is not loopback. The node's one loopback test
    (remote endpoints here, the HTTP API's bind address and the dashboard's Host check)."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def endpoint_host(url: str) -> str:
    """``host:port`` of ``url`` (what a disclosure line names; never the path or credentials)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    return f"{host}:{parts.port}" if parts.port else host


@dataclass
class Disclosure:
    """What was sent to a remote endpoint, and what was taken out first. Carries no PHI."""

    #: "planner", "report generation", "retrieval"...
    purpose: str
    endpoint: str
    profile: str = "PS3.15 E.1 Basic Application Level Confidentiality Profile"
    messages: int = 0
    removed: ScrubCount = field(default_factory=ScrubCount)
    #: "sent", "none" (no image in this request) or "withheld: <reason>".
    image: str = "none"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def deidentify_texts(texts: list[str], header: Dataset | None, disclosure: Disclosure) -> list[str]:
    """``texts`` scrubbed (:func:`scrub_text`) of what the profile removes from ``header``, dates
    and UIDs; counted into ``disclosure``."""
    values = identifying_values([header]) if header is not None else ()
    out: list[str] = []
    for text in texts:
        scrubbed, count = scrub_text(text, values)
        disclosure.removed.add(count)
        out.append(scrubbed)
    disclosure.messages += len(texts)
    return out


def record_disclosure(disclosure: Disclosure) -> None:
    """Log ``disclosure`` as one structured line on :data:`DISCLOSURE_LOGGER`; a handler attached
    there receives it as ``record.disclosure``."""
    logging.getLogger(DISCLOSURE_LOGGER).info(
        "deidentified for remote endpoint: %s", json.dumps(disclosure.to_json(), sort_keys=True),
        extra={"disclosure": disclosure},
    )
