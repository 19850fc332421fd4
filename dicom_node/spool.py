"""The durable spool: every acknowledged instance lives at
``<data_dir>/spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` as the bytes the sender sent.

Durability (answer SUCCESS only after this returns): write to a temp name in the series folder,
fsync the file, hard-link it to its final name (atomic, and refuses to replace an existing file,
so a duplicate SOP Instance UID is stored once even when two associations race), remove the temp
name, fsync the folder. The dataset is never decoded and re-encoded: what the PACS sent is what a
later job reads, compressed transfer syntaxes included.

The spool is the truth for "which instances does the node hold": on restart the series tracker is
rebuilt by :meth:`Spool.scan`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_node.pipeline import write_json_atomic
from dicom_node.uids import InvalidUID, validate_uid

log = logging.getLogger(__name__)

INSTANCE_SUFFIX = ".dcm"
#: Per-series sidecar with the delivering association's AE titles.
ORIGIN_FILE = ".origin.json"

#: The only tags the receive path parses (everything else stays in the bytes on disk).
RECEIVE_KEYWORDS: tuple[str, ...] = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
)


class CorruptInstance(ValueError):
    """The received bytes are not a readable DICOM dataset with the UIDs the spool needs."""


@dataclass(frozen=True)
class InstanceInfo:
    """The few header values the node needs from one received instance."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class StoreResult:
    info: InstanceInfo
    path: Path
    #: True when this SOP instance was already in the spool (nothing was written).
    duplicate: bool


@dataclass(frozen=True)
class SpooledSeries:
    """One series folder found on disk."""

    study_uid: str
    series_uid: str
    sop_uids: frozenset[str]
    folder: Path
    #: Modification time of the newest instance file (seconds since the epoch).
    newest_mtime: float
    #: AE titles of the association that delivered the series' first instance ("" if unknown).
    calling_ae: str = ""
    called_ae: str = ""


def parse_instance(data: bytes) -> InstanceInfo:
    """Read the receive-path tags from a Part 10 byte stream (preamble + file meta + dataset).

    Only :data:`RECEIVE_KEYWORDS` are decoded and parsing stops before Pixel Data; pydicom handles
    the deflated transfer syntax (PS3.5 A.5) itself. Raises :class:`CorruptInstance`.
    """
    try:
        ds = pydicom.dcmread(
            BytesIO(data), specific_tags=list(RECEIVE_KEYWORDS), stop_before_pixels=True
        )
        values = {kw: ds.get(kw) for kw in RECEIVE_KEYWORDS}
        tsyntax = str(ds.file_meta.get("TransferSyntaxUID", ""))
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        OSError,
        AttributeError,
    ) as exc:
        raise CorruptInstance(
            f"unreadable dataset: {type(exc).__name__}: {exc}"
        ) from exc
    try:
        return InstanceInfo(
            study_uid=validate_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
            series_uid=validate_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
            sop_uid=validate_uid(values["SOPInstanceUID"], "SOPInstanceUID"),
            sop_class_uid=validate_uid(values["SOPClassUID"], "SOPClassUID"),
            modality=str(values["Modality"] or "").strip(),
            transfer_syntax_uid=tsyntax,
        )
    except InvalidUID as exc:
        raise CorruptInstance(str(exc)) from exc


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """Durable per-instance storage under ``root`` (normally ``<data_dir>/spool``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def series_dir(self, study_uid: str, series_uid: str) -> Path:
        return (
            self.root
            / validate_uid(study_uid, "StudyInstanceUID")
            / validate_uid(series_uid, "SeriesInstanceUID")
        )

    def instance_path(self, study_uid: str, series_uid: str, sop_uid: str) -> Path:
        return self.series_dir(study_uid, series_uid) / (
            validate_uid(sop_uid, "SOPInstanceUID") + INSTANCE_SUFFIX
        )

    def store(
        self,
        data: bytes,
        info: InstanceInfo | None = None,
        calling_ae: str = "",
        called_ae: str = "",
    ) -> StoreResult:
        """Durably store one instance (Part 10 bytes); idempotent per SOP Instance UID.

        ``info`` may be passed when the caller already parsed ``data``. The AE titles are kept
        once per series (``.origin.json``) so routing on CallingAETitle survives a restart.
        """
        if info is None:
            info = parse_instance(data)
        final = self.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        if final.exists():
            return StoreResult(info, final, duplicate=True)
        folder = final.parent
        new_folder = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=".rx-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                # Atomic create-if-absent: a racing duplicate loses here.
                os.link(tmp, final)
                duplicate = False
            except FileExistsError:
                duplicate = True
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(folder)
        if new_folder:
            write_json_atomic(
                folder / ORIGIN_FILE, {"calling_ae": calling_ae, "called_ae": called_ae}
            )
            _fsync_dir(folder.parent)
            _fsync_dir(folder.parent.parent)
        return StoreResult(info, final, duplicate=duplicate)

    def instance_paths(self, study_uid: str, series_uid: str) -> list[Path]:
        folder = self.series_dir(study_uid, series_uid)
        if not folder.is_dir():
            return []
        return sorted(
            p
            for p in folder.iterdir()
            if p.suffix == INSTANCE_SUFFIX and not p.name.startswith(".")
        )

    def scan(self) -> Iterator[SpooledSeries]:
        """Every series folder with at least one instance; leftover temp files are removed."""
        for study in sorted(self.root.iterdir()):
            if not study.is_dir():
                continue
            for series in sorted(study.iterdir()):
                if not series.is_dir():
                    continue
                sops: set[str] = set()
                newest = 0.0
                for entry in series.iterdir():
                    if entry.name.startswith(".rx-"):
                        # Never acknowledged: the sender resends it.
                        entry.unlink(missing_ok=True)
                        continue
                    if entry.suffix != INSTANCE_SUFFIX:
                        continue
                    sops.add(entry.name[: -len(INSTANCE_SUFFIX)])
                    newest = max(newest, entry.stat().st_mtime)
                if sops:
                    calling, called = _read_origin(series / ORIGIN_FILE)
                    yield SpooledSeries(
                        study.name,
                        series.name,
                        frozenset(sops),
                        series,
                        newest,
                        calling,
                        called,
                    )


def _read_origin(path: Path) -> tuple[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data.get("calling_ae", "")), str(data.get("called_ae", ""))
    except (OSError, ValueError, AttributeError):
        return "", ""
