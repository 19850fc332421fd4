"""The durable spool: every acknowledged instance lives at
``<data_dir>/spool/<StudyUID>/<SeriesUID>/<SOPUID>.dcm`` as the bytes the sender sent (a
C-STORE's data set behind the file meta group the node writes for it, file_meta.py).

Durability (answer SUCCESS only after :meth:`Spool.store` returns): the bytes go to an unnamed
file in the series folder (``O_TMPFILE``; a named ``.rx-*.part`` temp file where the file system
lacks it), written around the page cache where the file system allows it (direct_io.py), are
flushed with ``fdatasync``, then get their final name with ``link`` (atomic, and
refuses to replace an existing file, so a duplicate SOP Instance UID is stored once even when two
associations race), then the folder is fsynced so the name itself is durable. A crash before the
name exists leaves nothing behind (or a ``.rx-`` file that :meth:`Spool.scan` removes); the sender
was not answered and resends.

Parallel associations need no user-space group commit of the folder fsyncs: a journaling file
system (ext4's jbd2, XFS's log) already lets concurrent fsyncs share one journal commit, and
bench/bench_receive.py measured no gain from doing it again here. The dataset is never decoded
and re-encoded: what the PACS sent is what a later job reads, compressed transfer syntaxes
included. Before it is stored, the whole dataset passes the parse policy
(image_model/parse_policy.py: size, deflate inflation, nesting depth, element count, pixel
geometry, structure) in one walk that also picks up the five receive tags; nothing else is parsed.

A file already on disk that the policy refuses (stored by an older version, or changed since) is
moved to ``<data_dir>/quarantine/`` with its reason (:meth:`Spool.quarantine`), leaving a
``<sop>.dcm.quarantined`` note in its series folder, so it never breaks Q/R or a series again.

The spool is the truth for "which instances does the node hold": on restart the series tracker is
rebuilt by :meth:`Spool.scan`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from config.schema import NodeConfig
from dicom_node.atomic import fsync_dir, write_json_atomic
from dicom_node.limits import parse_limits
from dicom_node.logsafe import uid as uid_for_log
from dicom_node.receive.direct_io import O_DIRECT, AlignedBuffers, write_direct
from dicom_node.uids import InvalidUID, validate_uid
from image_model.parse_policy import (
    DICM_PREFIX,
    PREAMBLE_LENGTH,
    ParseLimits,
    ScanResult,
    UnsafeDicom,
    read_checked,
    scan_dataset,
    scan_part10,
)

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
#: Their tags, as the parse policy's scan returns them.
_RECEIVE_TAGS: dict[str, int] = {kw: int(Tag(kw)) for kw in RECEIVE_KEYWORDS}
PART10_PREFIX = bytes(PREAMBLE_LENGTH) + DICM_PREFIX
#: A part of an instance to store: bytes, or a view of a buffer the caller owns.
Chunk = bytes | memoryview
#: The ``.origin.json`` AE titles and parent folders of this many recently used series folders
#: are known durable; older ones are simply synced again on their next instance.
DURABLE_FOLDER_CACHE = 4096
#: Prefix of the named temp files used where ``O_TMPFILE`` is unavailable.
TEMP_PREFIX = ".rx-"
#: Suffix of the note left where a quarantined instance was (its reason, as JSON).
QUARANTINE_NOTE = ".quarantined"
QUARANTINE_FOLDER = "quarantine"
#: ``fdatasync`` flushes the data and the metadata needed to read it back (size, blocks): all a
#: new file needs. Platforms without it use fsync.
_datasync = getattr(os, "fdatasync", os.fsync)


class CorruptInstance(ValueError):
    """The received bytes are not a readable DICOM dataset with the UIDs the spool needs, or the
    parse policy refuses them. The message never quotes a value from the data."""


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


def _instance_info(scan: ScanResult) -> InstanceInfo:
    """The receive tags of a scanned dataset, validated."""
    values = {kw: scan.text(tag) for kw, tag in _RECEIVE_TAGS.items()}
    try:
        return InstanceInfo(
            study_uid=validate_uid(values["StudyInstanceUID"], "StudyInstanceUID"),
            series_uid=validate_uid(values["SeriesInstanceUID"], "SeriesInstanceUID"),
            sop_uid=validate_uid(values["SOPInstanceUID"], "SOPInstanceUID"),
            sop_class_uid=validate_uid(values["SOPClassUID"], "SOPClassUID"),
            modality=str(values["Modality"] or "").strip(),
            transfer_syntax_uid=scan.transfer_syntax,
        )
    except InvalidUID as exc:
        # The message names the attribute; the invalid value itself may be patient data.
        raise CorruptInstance(f"{exc.attribute} missing or not a valid UID (PS3.5 9.1)") from None


def parse_dataset(dataset: bytes | memoryview, transfer_syntax_uid: str, limits: ParseLimits | None = None
                  ) -> InstanceInfo:
    """Check a dataset without file meta, as a C-STORE carries it (PS3.7 9.3.1.1: encoded in the
    presentation context's transfer syntax), against the parse policy and read the receive tags.
    ``limits``: the node's (default: the policy's defaults). Raises :class:`CorruptInstance`."""
    try:
        scan = scan_dataset(dataset, str(transfer_syntax_uid), limits or ParseLimits(), _RECEIVE_TAGS.values())
    except UnsafeDicom as exc:
        raise CorruptInstance(str(exc)) from None
    return _instance_info(scan)


def parse_instance(data: bytes, limits: ParseLimits | None = None) -> InstanceInfo:
    """:func:`parse_dataset` for a Part 10 byte stream (preamble, file meta, dataset)."""
    try:
        scan = scan_part10(data, limits or ParseLimits(), _RECEIVE_TAGS.values())
    except UnsafeDicom as exc:
        raise CorruptInstance(str(exc)) from None
    return _instance_info(scan)


def _write_all(fd: int, parts: Sequence[Chunk]) -> None:
    """Write ``parts`` in order (one ``writev``: the parts are never joined in memory)."""
    views = [memoryview(p) for p in parts if len(p)]
    while views:
        written = os.writev(fd, views)
        while views and written >= len(views[0]):
            written -= len(views[0])
            views.pop(0)
        if views and written:
            views[0] = views[0][written:]


def _unnamed_file(dir_fd: int, flags: int, write: Callable[[int], object]) -> int:
    """An unnamed file (``O_TMPFILE`` plus ``flags``) in the folder ``dir_fd``, filled by
    ``write``; closed again if that fails."""
    fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | flags, 0o600, dir_fd=dir_fd)
    try:
        write(fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


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

    def __init__(
        self,
        root: Path,
        unnamed_temp_files: bool | None = None,
        limits: ParseLimits | None = None,
        direct_writes: bool = True,
    ) -> None:
        """``unnamed_temp_files``: write through ``O_TMPFILE`` (True), through named ``.rx-``
        temp files (False), or whichever the file system supports (None, the default).
        ``limits``: the parse policy's limits (default: its defaults). ``direct_writes``: write
        unnamed files with ``O_DIRECT`` (direct_io.py) until the file system first refuses it.
        Quarantined files go to ``quarantine/`` beside ``root``."""
        self.root = Path(root)
        self.limits = limits or ParseLimits()
        self.quarantine_root = self.root.parent / QUARANTINE_FOLDER
        self.root.mkdir(parents=True, exist_ok=True)
        self._use_tmpfile = (
            _tmpfile_supported(self.root)
            if unnamed_temp_files is None
            else unnamed_temp_files
        )
        self._direct = direct_writes and self._use_tmpfile and O_DIRECT is not None
        self._buffers = AlignedBuffers()
        self._lock = threading.Lock()
        #: Series folders whose own names (and ``.origin.json``) are known durable (an LRU).
        self._durable_folders: OrderedDict[Path, None] = OrderedDict()
        #: Series folders being made durable, each by one store (the others wait on its lock).
        self._making: dict[Path, threading.Lock] = {}

    @classmethod
    def for_node(cls, data_dir: Path, node: NodeConfig) -> Spool:
        """The spool under ``data_dir`` as ``node`` configures it (limits, direct writes)."""
        return cls(data_dir / "spool", limits=parse_limits(node), direct_writes=node.spool_direct_writes)

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
        data: bytes | Sequence[Chunk],
        info: InstanceInfo | None = None,
        calling_ae: str = "",
        called_ae: str = "",
    ) -> StoreResult:
        """Durably store one instance (Part 10 bytes, or its parts in order: they are written
        with one ``writev``, never joined); idempotent per SOP Instance UID.

        ``info`` may be passed when the caller already parsed ``data`` (with the policy). The AE titles are kept
        once per series (``.origin.json``) so routing on CallingAETitle survives a restart.
        A duplicate returns only once the copy already held is durable too (its name may have
        been linked a moment ago by another association still waiting for the folder fsync).
        """
        parts: list[Chunk] = [bytes(data)] if isinstance(data, (bytearray, memoryview)) else (
            [data] if isinstance(data, bytes) else list(data))
        if info is None:
            info = parse_instance(b"".join(parts), self.limits)
        final = self.instance_path(info.study_uid, info.series_uid, info.sop_uid)
        folder = final.parent
        self._ensure_folder(folder, calling_ae, called_ae)
        try:
            duplicate = final.exists() or not self._write_new(folder, final.name, parts)
        except FileNotFoundError:
            # The folder was removed since it was cached as durable: create it again.
            with self._lock:
                self._durable_folders.pop(folder, None)
            self._ensure_folder(folder, calling_ae, called_ae)
            duplicate = final.exists() or not self._write_new(folder, final.name, parts)
        if duplicate:
            fsync_dir(folder)  # the copy held may have been linked a moment ago, not yet synced
        return StoreResult(info, final, duplicate=duplicate)

    def _write_new(self, folder: Path, name: str, data: Sequence[Chunk]) -> bool:
        """Write ``data`` durably under ``folder/name`` unless that name exists (then False).

        The name is linked only after the data is flushed, so a name never points at bytes
        that are not durable, and the folder is synced after the link (through the same
        descriptor) so that the name is durable too. A name that existed is not synced here.
        """
        if not self._use_tmpfile:
            return self._write_new_named_temp(folder, name, data)
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fd = self._write_unnamed(dir_fd, data)
            try:
                _datasync(fd)
                try:
                    # Atomic create-if-absent: a racing duplicate loses here.
                    os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd)
                except FileExistsError:
                    return False
            finally:
                os.close(fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return True

    def _write_unnamed(self, dir_fd: int, data: Sequence[Chunk]) -> int:
        """An unnamed file in the folder ``dir_fd`` holding ``data``, not yet flushed; written
        direct while the file system allows it (the first refusal turns direct writes off)."""
        if self._direct:
            assert O_DIRECT is not None
            try:
                return _unnamed_file(dir_fd, O_DIRECT, lambda fd: write_direct(fd, data, self._buffers))
            except OSError as exc:  # DirectWriteRefused, or the open refusing O_DIRECT
                if exc.errno != errno.EINVAL:
                    raise
                self._stop_direct()
        return _unnamed_file(dir_fd, 0, lambda fd: _write_all(fd, data))

    def _stop_direct(self) -> None:
        if self._direct:
            self._direct = False
            log.info("spool %s: the file system refuses direct writes; writing through the page cache",
                     self.root)

    @property
    def direct_writes(self) -> bool:
        """Whether the next new instance will be written around the page cache."""
        return self._direct

    def _write_new_named_temp(self, folder: Path, name: str, data: Sequence[Chunk]) -> bool:
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
        fsync_dir(folder)
        return True

    def _ensure_folder(self, folder: Path, calling_ae: str, called_ae: str) -> None:
        """Create the series folder if needed and make it (and its origin file) durable.

        Every store checks this, not only the one that created the folder: a store on another
        association may find the folder before its creator has synced the parents. Stores of one
        new series that arrive together (a sender's parallel associations) wait for one of them
        to do it rather than each writing the origin file and syncing the same folders again.
        """
        with self._lock:
            if self._known_durable(folder):
                return
            making = self._making.setdefault(folder, threading.Lock())
        try:
            with making:
                with self._lock:
                    if self._known_durable(folder):
                        return
                self._make_durable(folder, calling_ae, called_ae)
        finally:
            with self._lock:
                if self._making.get(folder) is making:
                    del self._making[folder]

    def _known_durable(self, folder: Path) -> bool:
        """Whether ``folder`` is known durable (marked most recently used); ``_lock`` held."""
        if folder in self._durable_folders:
            self._durable_folders.move_to_end(folder)
            return True
        return False

    def _make_durable(self, folder: Path, calling_ae: str, called_ae: str) -> None:
        study = folder.parent
        _mkdir(study)
        created = _mkdir(folder)
        if created or not (folder / ORIGIN_FILE).exists():
            # Once per series; the folder fsync that follows the instance makes its name durable.
            write_json_atomic(
                folder / ORIGIN_FILE, {"calling_ae": calling_ae, "called_ae": called_ae}
            )
        # Synced even when another association created them: it may not have synced them yet.
        fsync_dir(self.root)
        fsync_dir(study)
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

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move a spooled (or produced) file the parse policy refuses out of the node's way:
        to ``<data_dir>/quarantine/`` under its path relative to the data folder, with a note
        holding ``reason`` where it was. Returns the new path (None if it was already gone)."""
        path = Path(path)
        try:
            relative = path.resolve().relative_to(self.root.parent.resolve())
        except ValueError:
            relative = Path(path.name)
        target = self.quarantine_root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None
        write_json_atomic(path.with_name(path.name + QUARANTINE_NOTE),
                          {"reason": reason, "moved_to": str(target)})
        write_json_atomic(target.with_name(target.name + ".reason.json"), {"reason": reason, "from": str(path)})
        log.warning("quarantined %s: %s", relative, reason)
        return target

    def read_header(self, path: Path, specific_tags: list[str] | None = None) -> Dataset | None:
        """The header of a file the node holds, read under the parse policy; a file the policy
        refuses is quarantined and None returned (so is a file that vanished)."""
        try:
            return read_checked(path, self.limits, stop_before_pixels=True, specific_tags=specific_tags)
        except UnsafeDicom as exc:
            self.quarantine(path, str(exc))
        except FileNotFoundError:
            pass
        return None

    def first_header(self, study_uid: str, series_uid: str, sop_uids: Iterable[str]) -> Dataset:
        """The header of the series' first readable instance (by SOP Instance UID); raises
        :class:`CorruptInstance` when the parse policy refused every one, FileNotFoundError when
        none is there (the folder went away: maybe for a moment, the caller may try again)."""
        folder = self.series_dir(study_uid, series_uid)
        refused = False
        for sop in sorted(sop_uids):
            path = folder / f"{validate_uid(sop)}{INSTANCE_SUFFIX}"
            header = self.read_header(path)
            if header is not None:
                return header
            refused = refused or path.with_name(path.name + QUARANTINE_NOTE).is_file()
        if refused:
            raise CorruptInstance(f"no readable instance in series {uid_for_log(series_uid)}")
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(folder))

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
                    calling, called = read_origin(series)
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


def read_origin(series_dir: Path) -> tuple[str, str]:
    """(calling, called) AE titles that delivered the series in ``series_dir`` (its
    ``.origin.json``); empty strings when unknown or unreadable."""
    try:
        data = json.loads((series_dir / ORIGIN_FILE).read_text(encoding="utf-8"))
        return str(data.get("calling_ae", "")), str(data.get("called_ae", ""))
    except (OSError, ValueError, AttributeError):
        return "", ""
