"""What the node holds, for Query/Retrieve: every instance in the spool and every SEG/SR it
produced under ``<data_dir>/results/<job_id>/``.

Design (the simplest that stays right): the files on disk are the truth, as they are for the rest
of the node. :meth:`QRIndex.refresh` walks both trees (directory entries and ``stat`` only) and
reads the header of a file it has not seen, or whose size/mtime changed, under the parse policy
(image_model/parse_policy.py) and then with pydicom ``stop_before_pixels``; vanished files drop
out. A file the policy refuses is quarantined (moved out of the spool with its reason) and one
pydicom cannot read is skipped, logged once in one line: one bad file never breaks Q/R for
anyone else. Every C-FIND/C-MOVE/C-GET refreshes first, so an
instance acknowledged a moment ago, or a result written by a worker, is found without any hook in
the receive or job path, and a restart simply rebuilds the cache. Files are written under
temporary dot-names and renamed (spool, pipeline), so a half-written file is never indexed.

Matching follows PS3.4 C.2.2.2: universal (empty key), single value, wildcard ``*``/``?``, UID list,
range (DA, TM, DT) and multiple-value keys; PN matching is case-insensitive (allowed by C.2.2.2.1).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR

from dicom_node.jobs.store import JobState, JobStore
from dicom_node.receive.spool import read_origin
from image_model.parse_policy import ParseLimits, UnsafeDicom, read_checked

log = logging.getLogger(__name__)

INSTANCE_SUFFIX = ".dcm"


class Level(str, Enum):
    """Query/Retrieve Level (0008,0052) values (PS3.4 C.6)."""

    PATIENT = "PATIENT"
    STUDY = "STUDY"
    SERIES = "SERIES"
    IMAGE = "IMAGE"


class InformationModel(str, Enum):
    """The two hierarchical information models the node supports (PS3.4 C.6.1, C.6.2)."""

    PATIENT_ROOT = "patient"
    STUDY_ROOT = "study"


#: Attributes kept per level (PS3.4 C.6.1.1 / C.6.2.1 required and common optional keys).
LEVEL_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    ),
    Level.STUDY: (
        "StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID",
        "StudyDescription", "ReferringPhysicianName",
    ),
    Level.SERIES: (
        "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "SeriesDate",
        "SeriesTime", "BodyPartExamined", "ProtocolName",
    ),
    Level.IMAGE: (
        "SOPInstanceUID", "SOPClassUID", "InstanceNumber", "ContentDate", "ContentTime",
        "NumberOfFrames",
    ),
}
#: The unique key of each level (PS3.4 C.6.1.1.1 / C.6.2.1.1).
UNIQUE_KEY: dict[Level, str] = {
    Level.PATIENT: "PatientID",
    Level.STUDY: "StudyInstanceUID",
    Level.SERIES: "SeriesInstanceUID",
    Level.IMAGE: "SOPInstanceUID",
}
#: Levels from the top, per information model (Study Root has no PATIENT level; its study level
#: carries the patient attributes, PS3.4 C.6.2.1.2).
MODEL_LEVELS: dict[InformationModel, tuple[Level, ...]] = {
    InformationModel.PATIENT_ROOT: (Level.PATIENT, Level.STUDY, Level.SERIES, Level.IMAGE),
    InformationModel.STUDY_ROOT: (Level.STUDY, Level.SERIES, Level.IMAGE),
}
#: Attributes the index computes from the instances below an entity (PS3.4 C.3.4 optional keys).
COMPUTED_KEYS: dict[Level, tuple[str, ...]] = {
    Level.PATIENT: (
        "NumberOfPatientRelatedStudies", "NumberOfPatientRelatedSeries",
        "NumberOfPatientRelatedInstances",
    ),
    Level.STUDY: (
        "ModalitiesInStudy", "SOPClassesInStudy", "NumberOfStudyRelatedSeries",
        "NumberOfStudyRelatedInstances",
    ),
    Level.SERIES: ("NumberOfSeriesRelatedInstances",),
    Level.IMAGE: (),
}
HEADER_KEYWORDS: tuple[str, ...] = (
    "SpecificCharacterSet", *(k for keys in LEVEL_KEYS.values() for k in keys),
)

#: Value representations matched as dates/times with ranges (PS3.4 C.2.2.2.5).
RANGE_VRS = frozenset({"DA", "TM", "DT"})


@dataclass(frozen=True)
class IndexedInstance:
    """One DICOM file the node holds, with the header values Q/R needs (as text)."""

    path: Path
    #: keyword -> values (a multi-valued attribute has several; absent/empty: no entry).
    values: Mapping[str, tuple[str, ...]]
    transfer_syntax_uid: str
    #: True for files the node produced (results), False for received ones (spool).
    produced: bool
    #: Calling AE title that delivered the series (for results: that delivered their source).
    origin_ae: str = ""

    def get(self, keyword: str) -> tuple[str, ...]:
        return self.values.get(keyword, ())

    @property
    def sop_uid(self) -> str:
        return self.get("SOPInstanceUID")[0]


@dataclass(frozen=True)
class Entity:
    """One match at a query level: its own and its parents' attributes, plus computed ones."""

    level: Level
    values: Mapping[str, tuple[str, ...]]
    instances: tuple[IndexedInstance, ...]


def _text_values(value: object, vr: str) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    items = list(value) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    out = []
    for item in items:
        if vr == "PN":
            text = str(item)
        elif isinstance(item, float) and item.is_integer():
            text = str(int(item))
        else:
            text = str(item)
        text = text.strip().rstrip("\x00")
        if text:
            out.append(text)
    return tuple(out)


Quarantine = Callable[[Path, str], object]


def read_header(
    path: Path, produced: bool, limits: ParseLimits | None = None, quarantine: Quarantine | None = None,
    origin_ae: str = "",
) -> IndexedInstance | None:
    """Index one file; None when it is not a DICOM instance with the three UIDs (logged), or
    the parse policy refuses it (then passed to ``quarantine`` when given)."""
    try:
        ds = read_checked(path, limits or ParseLimits(), stop_before_pixels=True,
                          specific_tags=list(HEADER_KEYWORDS))
        values: dict[str, tuple[str, ...]] = {}
        for keyword in HEADER_KEYWORDS[1:]:
            if keyword in ds:
                elem = ds[keyword]
                found = _text_values(elem.value, elem.VR)
                if found:
                    values[keyword] = found
        syntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    except UnsafeDicom as exc:
        if quarantine is not None:
            quarantine(path, str(exc))
        else:
            log.warning("Q/R index: skipping %s: %s", path.name, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - one unreadable file must not break every query
        log.warning("Q/R index: skipping unreadable file %s (%s)", path.name, type(exc).__name__)
        return None
    for required in ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
        if required not in values:
            log.warning("Q/R index: skipping %s (no %s)", path.name, required)
            return None
    return IndexedInstance(path, values, syntax, produced, origin_ae)


# ---- matching (PS3.4 C.2.2.2) -------------------------------------------------------------


def _wildcard(pattern: str, ignore_case: bool) -> re.Pattern[str]:
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


def _normal_time(text: str) -> str:
    """TM ``HH[MM[SS[.F]]]`` (or legacy ``HH:MM:SS``) padded so strings compare in time order."""
    text = text.replace(":", "")
    whole, _, frac = text.partition(".")
    return whole.ljust(6, "0") + "." + frac.ljust(6, "0")


def _in_range(value: str, key: str, vr: str) -> bool:
    low, _, high = key.partition("-")
    norm = _normal_time if vr == "TM" else (lambda s: s.strip())
    v = norm(value)
    if low and v < norm(low):
        return False
    if high:
        # An upper DT/DA bound is inclusive of everything it names (e.g. a date covers its day).
        upper = norm(high)
        if vr == "DT":
            return v[: len(upper)] <= upper
        return v <= upper
    return True


def value_matches(keyword: str, key: str, values: tuple[str, ...]) -> bool:
    """Does an entity with ``values`` match the request's key value ``key``?

    ``key`` is the raw request value (components separated by backslash). Empty key: universal
    match (C.2.2.2.3). A multi-valued key matches when any of its values matches (C.2.2.2.1 and
    UID list matching C.2.2.2.2). A multi-valued attribute matches when any of its values does.
    """
    key = key.strip()
    if key == "" or key == "*":
        return True
    vr = dictionary_VR(keyword) if keyword else ""
    ignore_case = vr == "PN"
    for part in (p.strip() for p in key.split("\\")):
        if not part:
            continue
        for value in values:
            if vr in RANGE_VRS and "-" in part:
                if _in_range(value, part, vr):
                    return True
            elif vr != "UI" and ("*" in part or "?" in part):
                if _wildcard(part, ignore_case).fullmatch(value):
                    return True
            elif vr == "TM":
                if _normal_time(value) == _normal_time(part):
                    return True
            elif (value.casefold() == part.casefold()) if ignore_case else value == part:
                return True
    return False


# ---- the index ---------------------------------------------------------------------------


def _walk(root: Path, depth: int) -> Iterator[os.DirEntry[str]]:
    """``*.dcm`` entries exactly ``depth`` folders below ``root``, skipping dot-names."""
    if not root.is_dir():
        return
    stack: list[tuple[Path, int]] = [(root, 0)]
    while stack:
        folder, level = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue  # removed while walking
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if level < depth and entry.is_dir(follow_symlinks=False):
                stack.append((Path(entry.path), level + 1))
            elif level == depth and entry.name.endswith(INSTANCE_SUFFIX) and entry.is_file():
                yield entry


class QRIndex:
    """The node's holdings for Query/Retrieve; thread-safe, refreshed from disk on each query.

    ``spool_root`` holds ``<study>/<series>/<sop>.dcm``; ``results_root`` holds
    ``<job_id>/*.dcm`` (SEG, SR). When the same SOP Instance UID is found twice (a received copy
    of our own result, a re-run writing the same derived UID), the newest file wins. With
    ``jobs_root`` (the job records), results of a job that a finished re-run superseded (late
    instances, see node.py) are left out: a workstation fetches the current results only.
    """

    def __init__(
        self, spool_root: Path, results_root: Path, jobs_root: Path | None = None,
        limits: ParseLimits | None = None, quarantine: Quarantine | None = None,
    ) -> None:
        """``limits``: the parse policy's (default: its defaults); ``quarantine(path, reason)``
        moves a file the policy refuses out of the way (the node passes Spool.quarantine)."""
        self.spool_root = Path(spool_root)
        self.results_root = Path(results_root)
        self.jobs_root = Path(jobs_root) if jobs_root is not None else None
        self.limits = limits or ParseLimits()
        self._quarantine = quarantine
        self._origins: dict[Path, str] = {}
        self._lock = threading.Lock()
        #: path -> ((mtime_ns, size), instance or None when unreadable)
        self._cache: dict[Path, tuple[tuple[int, int], IndexedInstance | None]] = {}
        #: (jobs folder mtime_ns, superseded job ids)
        self._superseded: tuple[int, frozenset[str]] = (-1, frozenset())

    def superseded_jobs(self) -> frozenset[str]:
        """Job ids whose results a finished later job replaces (re-read when the folder changes)."""
        if self.jobs_root is None or not self.jobs_root.is_dir():
            return frozenset()
        stamp = self.jobs_root.stat().st_mtime_ns
        if stamp != self._superseded[0]:
            done = [r for r in JobStore(self.jobs_root).all() if r.state is JobState.DONE]
            self._superseded = (stamp, frozenset(j for r in done for j in r.supersedes))
        return self._superseded[1]

    def refresh(self) -> list[IndexedInstance]:
        """Bring the cache up to date with the disk; every instance held, one per SOP UID."""
        with self._lock:
            seen: set[Path] = set()
            for root, depth, produced in (
                (self.spool_root, 2, False), (self.results_root, 1, True),
            ):
                for entry in _walk(root, depth):
                    path = Path(entry.path)
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    stamp = (st.st_mtime_ns, st.st_size)
                    seen.add(path)
                    cached = self._cache.get(path)
                    if cached is None or cached[0] != stamp:
                        self._cache[path] = (stamp, read_header(
                            path, produced, self.limits, self._quarantine, self._origin(path, produced)))
            for gone in set(self._cache) - seen:
                del self._cache[gone]
            superseded = self.superseded_jobs()
            newest: dict[str, tuple[int, IndexedInstance]] = {}
            for (mtime, _), inst in self._cache.values():
                if inst is None or (inst.produced and inst.path.parent.name in superseded):
                    continue
                held = newest.get(inst.sop_uid)
                if held is None or mtime > held[0]:
                    newest[inst.sop_uid] = (mtime, inst)
            return sorted((i for _, i in newest.values()), key=lambda i: str(i.path))

    def _origin(self, path: Path, produced: bool) -> str:
        """The calling AE title that delivered the file's series: the spool folder's
        ``.origin.json``, or for a result the job record's (cached per folder)."""
        folder = path.parent
        if folder not in self._origins:
            origin = ""
            if not produced:
                origin = read_origin(folder)[0]
            elif self.jobs_root is not None:
                try:
                    record = JobStore(self.jobs_root).get(folder.name)
                    origin = record.calling_ae if record is not None else ""
                except (OSError, ValueError, AttributeError):
                    origin = ""
            self._origins[folder] = origin
        return self._origins[folder]

    # -- queries ------------------------------------------------------------------------------

    def find(
        self,
        model: InformationModel,
        level: Level,
        keys: Mapping[str, str],
        origins: frozenset[str] | None = None,
    ) -> list[Entity]:
        """Entities at ``level`` matching every key in ``keys`` (keyword -> raw request value).

        Keys of the requested level and the levels above it are matched (hierarchical search,
        PS3.4 C.4.1.3.1); computed keys such as NumberOfStudyRelatedInstances match too. With
        ``origins``, only instances delivered by those calling AE titles (and results made from
        them) exist for this query (qr/access.py).
        """
        levels = MODEL_LEVELS[model]
        if level not in levels:
            raise ValueError(f"level {level.value} is not part of the {model.value} root model")
        held = self.refresh()
        if origins is not None:
            held = [i for i in held if i.origin_ae in origins]
        entities = group(held, level, model)
        matchable = set(visible_keys(model, level))
        return [
            e for e in entities
            if all(value_matches(k, v, e.values.get(k, ())) for k, v in keys.items() if k in matchable)
        ]

    def select(
        self, model: InformationModel, level: Level, keys: Mapping[str, str], origins: frozenset[str] | None = None
    ) -> list[IndexedInstance]:
        """The instances below the entities a C-MOVE/C-GET identifier names."""
        return [i for e in self.find(model, level, keys, origins) for i in e.instances]


def visible_keys(model: InformationModel, level: Level) -> list[str]:
    """Keywords an entity at ``level`` carries: its level's and the levels above (in Study Root,
    the study level includes the patient attributes), plus computed keys of its own level."""
    levels = MODEL_LEVELS[model]
    upto = list(levels[: levels.index(level) + 1])
    if model is InformationModel.STUDY_ROOT:
        upto.insert(0, Level.PATIENT)
    keys = [k for lv in upto for k in LEVEL_KEYS[lv]]
    return keys + list(COMPUTED_KEYS[level])


def group(instances: Iterable[IndexedInstance], level: Level, model: InformationModel) -> list[Entity]:
    """Group instances into entities of ``level``; attributes come from the first instance,
    preferring received ones over produced ones (results copy the source's patient/study data)."""
    buckets: dict[str, list[IndexedInstance]] = {}
    key = UNIQUE_KEY[level]
    for inst in instances:
        ident = inst.get(key)
        buckets.setdefault(ident[0] if ident else "", []).append(inst)
    own = visible_keys(model, level)
    entities = []
    for members in buckets.values():
        members.sort(key=lambda i: (i.produced, str(i.path)))
        first = members[0]
        values = {k: first.get(k) for k in own if first.get(k)}
        values.update(_computed(level, members))
        entities.append(Entity(level, values, tuple(members)))
    return entities


def _computed(level: Level, members: list[IndexedInstance]) -> dict[str, tuple[str, ...]]:
    series = {i.get("SeriesInstanceUID")[0] for i in members}
    studies = {i.get("StudyInstanceUID")[0] for i in members}
    count = str(len(members))
    if level is Level.PATIENT:
        return {
            "NumberOfPatientRelatedStudies": (str(len(studies)),),
            "NumberOfPatientRelatedSeries": (str(len(series)),),
            "NumberOfPatientRelatedInstances": (count,),
        }
    if level is Level.STUDY:
        modalities = sorted({m for i in members for m in i.get("Modality")})
        classes = sorted({c for i in members for c in i.get("SOPClassUID")})
        return {
            "ModalitiesInStudy": tuple(modalities),
            "SOPClassesInStudy": tuple(classes),
            "NumberOfStudyRelatedSeries": (str(len(series)),),
            "NumberOfStudyRelatedInstances": (count,),
        }
    if level is Level.SERIES:
        return {"NumberOfSeriesRelatedInstances": (count,)}
    return {}
