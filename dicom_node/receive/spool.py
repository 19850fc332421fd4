"""The durable spool: every acknowledged instance lives at
``<data_dir>/spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` as the bytes the sender sent.

Durability (answer SUCCESS only after :meth:`Spool.store` returns): the bytes go to an unnamed
file in the series folder (``O_TMPFILE``; a named ``.rx-*.part`` temp file where the file system
lacks it), are flushed with ``fdatasync``, then get their final name with ``link`` (atomic, and
refuses to replace an existing file, so a duplicate SOP Instance UID is stored once even when two
associations race), then the folder is fsynced so the name itself is durable. A crash before the
name exists leaves nothing behind (or a ``.rx-`` file that :meth:`Spool.scan` removes); the sender
was not answered and resends.

Parallel associations need no user-space group commit of the folder fsyncs: a journaling file
system (ext4's jbd2, XFS's log) already lets concurrent fsyncs share one journal commit, and
bench/bench_receive.py measured no gain from doing it again here. The dataset is never decoded
and re-encoded: what the PACS sent is what a later job reads, compressed transfer syntaxes
included; only the five receive tags are parsed, reading the header up to Series Instance UID
(0020,000E) and no further.

The spool is the truth for "which instances does the node hold": on restart the series tracker is
rebuilt by :meth:`Spool.scan`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_node.atomic import write_json_atomic
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
#: The tags read: the receive keywords plus Specific Character Set (0008,0005).
_RECEIVE_TAGS: list[BaseTag | int] = [
    Tag(kw) for kw in ("SpecificCharacterSet", *RECEIVE_KEYWORDS)
]
#: Reading stops at the first element after the highest receive tag (Series Instance UID,
#: 0020,000E): all five sit in groups 0008/0020, far before Pixel Data (7FE0,0010).
_LAST_RECEIVE_TAG = int(max(_RECEIVE_TAGS))
#: Part 10 file: 128-byte preamble, then "DICM" (PS3.10 7.1).
PREAMBLE_LENGTH = 128
DICM_PREFIX = b"DICM"
PART10_PREFIX = bytes(PREAMBLE_LENGTH) + DICM_PREFIX
#: Group of the File Meta Information elements (PS3.10 7.1), always explicit VR little endian.
FILE_META_GROUP = 0x0002
#: The ``.origin.json`` AE titles and parent folders of this many recently used series folders
#: are known durable; older ones are simply synced again on their next instance.
DURABLE_FOLDER_CACHE = 4096
#: Prefix of the named temp files used where ``O_TMPFILE`` is unavailable.
TEMP_PREFIX = ".rx-"
#: ``fdatasync`` flushes the data and the metadata needed to read it back (size, blocks): all a
#: new file needs. Platforms without it use fsync.
_datasync = getattr(os, "fdatasync", os.fsync)


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


def _stop_after_receive_tags(tag: BaseTag, vr: str | None, length: int) -> bool:
    # int's own comparison: BaseTag's Python-level __gt__ costs more than the rest of the walk.
    return int.__lt__(_LAST_RECEIVE_TAG, tag)


def _read_receive_tags(fp: BinaryIO, transfer_syntax: str) -> Dataset:
    """The receive tags of a dataset (no file meta) encoded in ``transfer_syntax`` at ``fp``.

    Deflated Explicit VR Little Endian (PS3.5 A.5) is inflated first; an unknown (private)
    transfer syntax is read as explicit VR little endian, the encoding PS3.5 A.4 prescribes for
    every encapsulated syntax.
    """
    tsyntax = UID(transfer_syntax)
    implicit, little, deflated = False, True, False
    if tsyntax.is_transfer_syntax:
        implicit, little = tsyntax.is_implicit_VR, tsyntax.is_little_endian
        deflated = tsyntax.is_deflated
    if deflated:
        fp = BytesIO(zlib.decompress(fp.read(), -zlib.MAX_WBITS))
    return read_dataset(
        fp,
        is_implicit_VR=implicit,
        is_little_endian=little,
        stop_when=_stop_after_receive_tags,
        specific_tags=_RECEIVE_TAGS,
    )


def _instance_info(read: Callable[[], tuple[Dataset, str]]) -> InstanceInfo:
    """Run ``read`` (-> receive-tag dataset, transfer syntax) and validate what it found."""
    try:
        ds, tsyntax = read()
        values = {kw: _text_value(ds, kw) for kw in RECEIVE_KEYWORDS}
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        TypeError,
        KeyError,
        OSError,
        AttributeError,
        zlib.error,
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


def _text_value(ds: Dataset, keyword: str) -> str | None:
    """The value of a UI or CS element as text, read from its raw bytes.

    Skips pydicom's element conversion (the costliest part of parsing five tags): UI and CS
    values are ASCII (PS3.5 6.2), padded at the end with NUL or space to even length.
    """
    elem = ds.get_item(keyword)
    if elem is None:
        return None
    value = elem.value
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").rstrip("\x00 ")
    return None if value is None else str(value)


def parse_dataset(dataset: bytes, transfer_syntax_uid: str) -> InstanceInfo:
    """Read the receive-path tags from a dataset without file meta, as a C-STORE carries it
    (PS3.7 9.3.1.1: the Data Set is encoded in the presentation context's transfer syntax).

    Only the header up to Series Instance UID is walked. Raises :class:`CorruptInstance`.
    """

    def read() -> tuple[Dataset, str]:
        return _read_receive_tags(BytesIO(dataset), transfer_syntax_uid), str(
            transfer_syntax_uid
        )

    return _instance_info(read)


def parse_instance(data: bytes) -> InstanceInfo:
    """Read the receive-path tags from a Part 10 byte stream (preamble + file meta + dataset).

    The file meta group (PS3.10 7.1) gives the transfer syntax; of the dataset only the header up
    to Series Instance UID is walked. Raises :class:`CorruptInstance`.
    """

    def read() -> tuple[Dataset, str]:
        if data[PREAMBLE_LENGTH : PREAMBLE_LENGTH + len(DICM_PREFIX)] != DICM_PREFIX:
            raise InvalidDicomError(
                "no DICM prefix after the 128-byte preamble (PS3.10 7.1)"
            )
        fp = BytesIO(data)
        fp.seek(PREAMBLE_LENGTH + len(DICM_PREFIX))
        meta = read_dataset(
            fp,
            is_implicit_VR=False,
            is_little_endian=True,
            stop_when=lambda tag, vr, length: tag.group != FILE_META_GROUP,
        )
        tsyntax = str(meta.get("TransferSyntaxUID", "") or "").rstrip("\x00 ")
        # Without one, read as explicit VR little endian; read_dataset notices implicit VR.
        return _read_receive_tags(fp, tsyntax or ExplicitVRLittleEndian), tsyntax

    return _instance_info(read)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _tmpfile_supported(folder: Path) -> bool:
    """Whether unnamed files (``O_TMPFILE``) can be created in ``folder`` and linked to a name."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return False
    probe = f".probe-{os.getpid()}-{threading.get_ident()}"
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe, dir_fd=dir_fd)  # left by a process that died mid-probe
        fd = os.open(".", flag | os.O_WRONLY, 0o600, dir_fd=dir_fd)
        try:
            os.link(f"/proc/self/fd/{fd}", probe, dst_dir_fd=dir_fd)
        finally:
            os.close(fd)
        os.unlink(probe, dir_fd=dir_fd)
        return True
    except OSError:
        return False
    finally:
        os.close(dir_fd)


class Spool:
    """Durable per-instance storage under ``root`` (normally ``<data_dir>/spool``).

    Thread-safe: the DIMSE handlers of parallel associations store concurrently.
    """

    def __init__(self, root: Path, unnamed_temp_files: bool | None = None) -> None:
        """``unnamed_temp_files``: write through ``O_TMPFILE`` (True), through named ``.rx-``
        temp files (False), or whichever the file system supports (None, the default)."""
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._use_tmpfile = (
            _tmpfile_supported(self.root)
            if unnamed_temp_files is None
            else unnamed_temp_files
        )
        self._lock = threading.Lock()
        #: Series folders whose own names (and ``.origin.json``) are known durable (an LRU).
        self._durable_folders: OrderedDict[Path, None] = OrderedDict()

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
        A duplicate returns only once the copy already held is durable too (its name may have
        been linked a moment ago by another association still waiting for the folder fsync).
        """
        if info is None:
            info = parse_instance(data)
        final = self.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        folder = final.parent
        self._ensure_folder(folder, calling_ae, called_ae)
        try:
            duplicate = final.exists() or not self._write_new(folder, final.name, data)
        except FileNotFoundError:
            # The folder was removed since it was cached as durable: create it again.
            with self._lock:
                self._durable_folders.pop(folder, None)
            self._ensure_folder(folder, calling_ae, called_ae)
            duplicate = final.exists() or not self._write_new(folder, final.name, data)
        _fsync_dir(folder)
        return StoreResult(info, final, duplicate=duplicate)

    def _write_new(self, folder: Path, name: str, data: bytes) -> bool:
        """Write ``data`` durably under ``folder/name`` unless that name exists (then False).

        The name is linked only after the data is flushed, so a name never points at bytes
        that are not durable; the caller still syncs the folder to make the name durable.
        """
        if not self._use_tmpfile:
            return self._write_new_named_temp(folder, name, data)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o600, dir_fd=dir_fd)
            try:
                _write_all(fd, data)
                _datasync(fd)
                try:
                    # Atomic create-if-absent: a racing duplicate loses here.
                    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd)
                except FileExistsError:
                    return False
            finally:
                os.close(fd)
        finally:
            os.close(dir_fd)
        return True

    def _write_new_named_temp(self, folder: Path, name: str, data: bytes) -> bool:
        """:meth:`_write_new` through a named temp file (file systems without ``O_TMPFILE``)."""
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX, suffix=".part")
        try:
            try:
                _write_all(fd, data)
                _datasync(fd)
            finally:
                os.close(fd)
            try:
                os.link(tmp_name, folder / name)
            except FileExistsError:
                return False
        finally:
            os.unlink(tmp_name)
        return True

    def _ensure_folder(self, folder: Path, calling_ae: str, called_ae: str) -> None:
        """Create the series folder if needed and make it (and its origin file) durable.

        Every store checks this, not only the one that created the folder: a store on another
        association may find the folder before its creator has synced the parents.
        """
        with self._lock:
            if folder in self._durable_folders:
                self._durable_folders.move_to_end(folder)
                return
        study = folder.parent
        _mkdir(study)
        created = _mkdir(folder)
        if created or not (folder / ORIGIN_FILE).exists():
            # Once per series; the folder fsync that follows the instance makes its name durable.
            write_json_atomic(
                folder / ORIGIN_FILE, {"calling_ae": calling_ae, "called_ae": called_ae}
            )
        # Synced even when another association created them: it may not have synced them yet.
        _fsync_dir(self.root)
        _fsync_dir(study)
        with self._lock:
            self._durable_folders[folder] = None
            if len(self._durable_folders) > DURABLE_FOLDER_CACHE:
                self._durable_folders.popitem(last=False)

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
                    if entry.name.startswith(TEMP_PREFIX):
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


def _mkdir(folder: Path) -> bool:
    """Create ``folder`` (its parent exists); True when this call created it."""
    try:
        folder.mkdir()
    except FileExistsError:
        return False
    return True


def _read_origin(path: Path) -> tuple[str, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return str(data.get("calling_ae", "")), str(data.get("called_ae", ""))
    except (OSError, ValueError, AttributeError):
        return "", ""
