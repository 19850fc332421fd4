"""The one C-STORE SCU: send result files to a destination over one association.

Files are sent as stored (PS3.4 Annex B): each file's SOP class is proposed with the file's own
transfer syntax, and uncompressed files are also offered Explicit and Implicit VR Little Endian
(PS3.5 Section 10.1 / A.1-A.2) so any storage SCP can take them. Compressed files are never
transcoded here: a peer that does not accept their syntax gets a clear, permanent error.

No patient data goes to the log: only AE titles, addresses, SOP Class/Instance UIDs and statuses.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.status import STATUS_SUCCESS, STATUS_WARNING, code_to_category

from config.schema import DestinationConfig
from dicom_node.deliver.association import (
    DEFAULT_TIMEOUT_SECONDS,
    AssociationFailed,
    open_association,
    peer_name,
)
from dicom_node.status import Status

log = logging.getLogger(__name__)

#: PS3.8 9.3.2.2: presentation context IDs are odd numbers 1-255, so at most 128 per association.
MAX_PRESENTATION_CONTEXTS = 128
#: Offered for every uncompressed file besides its own syntax (PS3.5 A.1, A.2).
UNCOMPRESSED_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
#: Status categories meaning the instance was stored (PS3.7 C.1, C.3; PS3.4 B.2.3 warnings).
DELIVERED_CATEGORIES = frozenset({STATUS_SUCCESS, STATUS_WARNING})


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file of a send."""

    path: Path
    sop_class_uid: str | None
    sop_instance_uid: str | None
    #: The peer's DIMSE Status (0000,0900); None when no response was received.
    status: int | None
    #: Why the file was not delivered; None when it was.
    error: str | None = None
    #: True when retrying cannot help (unreadable file, SOP class or syntax refused by the peer).
    permanent: bool = False

    @property
    def delivered(self) -> bool:
        """Success or warning status (PS3.4 B.2.3: warnings mean the instance was stored)."""
        return self.status is not None and is_stored(self.status)


@dataclass(frozen=True)
class SendReport:
    """The result of one :func:`send_files` call (one association)."""

    #: ``AE@host:port`` of the destination.
    peer: str
    #: Why no association was established (connection refused, rejected, TLS...); None if it was.
    association_error: str | None
    files: tuple[FileOutcome, ...]

    @property
    def ok(self) -> bool:
        return self.association_error is None and all(f.delivered for f in self.files)


@dataclass(frozen=True)
class _FileMeta:
    path: Path
    sop_class: UID
    sop_instance: UID
    syntax: UID


def is_stored(code: int) -> bool:
    """True when a C-STORE status means the peer holds the instance: success, a warning, or
    Duplicate SOP Instance (PS3.7 C.4.3), which some PACS answer when an instance is re-sent
    (the outbox re-sends after a crash or a partial failure)."""
    return code == Status.DUPLICATE_SOP_INSTANCE or code_to_category(code) in DELIVERED_CATEGORIES


def status_name(code: int) -> str:
    """``0xA700 (OUT_OF_RESOURCES)``; unknown codes keep their number only."""
    try:
        return f"0x{code:04X} ({Status(code).name})"
    except ValueError:
        return f"0x{code:04X}"


def _read_meta(path: Path) -> _FileMeta | FileOutcome:
    """The file's SOP class, instance and transfer syntax from its meta header (PS3.10 7.1)."""
    try:
        meta = read_file_meta_info(path)
        return _FileMeta(
            path=path,
            sop_class=UID(meta.MediaStorageSOPClassUID),
            sop_instance=UID(meta.MediaStorageSOPInstanceUID),
            syntax=UID(meta.TransferSyntaxUID),
        )
    except (OSError, InvalidDicomError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return FileOutcome(path, None, None, None, f"cannot read file meta: {reason}", permanent=True)


def _contexts(metas: list[_FileMeta]) -> list[PresentationContext]:
    """One context per SOP class for uncompressed files (own syntax + both little endians), and
    one per (SOP class, compressed syntax) so compressed data goes out as stored."""
    uncompressed: dict[UID, list[UID]] = defaultdict(list)
    compressed: set[tuple[UID, UID]] = set()
    for meta in metas:
        if meta.syntax.is_compressed:
            compressed.add((meta.sop_class, meta.syntax))
        elif meta.syntax not in uncompressed[meta.sop_class]:
            uncompressed[meta.sop_class].append(meta.syntax)
    contexts = []
    for sop_class, syntaxes in uncompressed.items():
        offered: list[str | UID] = list(dict.fromkeys([*syntaxes, *UNCOMPRESSED_SYNTAXES]))
        contexts.append(build_context(sop_class, offered))
    for sop_class, syntax in sorted(compressed):
        contexts.append(build_context(sop_class, syntax))
    return contexts


def _send_one(assoc: Association, meta: _FileMeta, msg_id: int) -> FileOutcome:
    def outcome(status: int | None, error: str | None = None, permanent: bool = False) -> FileOutcome:
        return FileOutcome(meta.path, meta.sop_class, meta.sop_instance, status, error, permanent)

    try:
        rsp = assoc.send_c_store(meta.path, msg_id=msg_id)
    except ValueError as exc:  # no accepted presentation context, or the dataset cannot be encoded
        return outcome(None, f"not sent: {exc}", permanent=True)
    except (OSError, InvalidDicomError) as exc:
        return outcome(None, f"cannot read file: {exc}", permanent=True)
    if "Status" not in rsp:
        return outcome(None, "no C-STORE response (timeout or association aborted)")
    status = int(rsp.Status)
    if not is_stored(status):
        refused = status == Status.SOP_CLASS_NOT_SUPPORTED
        return outcome(status, f"peer answered {status_name(status)}", permanent=refused)
    return outcome(status)


def send_files(
    dest: DestinationConfig,
    files: list[Path],
    calling_ae: str,
    *,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
) -> SendReport:
    """C-STORE ``files`` to ``dest`` over one association; per-file outcomes in the report.

    Never raises for network or peer trouble: the report says what happened. ``calling_ae`` is
    our AE title on the association (the destination's ``calling_ae_title`` or the node's).
    """
    peer = peer_name(dest)
    read = [_read_meta(Path(p)) for p in files]
    metas = [m for m in read if isinstance(m, _FileMeta)]
    unreadable = [m for m in read if isinstance(m, FileOutcome)]
    contexts = _contexts(metas)
    if not metas:
        return SendReport(peer, None, tuple(unreadable))
    if len(contexts) > MAX_PRESENTATION_CONTEXTS:
        error = f"{len(contexts)} presentation contexts needed; one association allows 128"
        failed = [FileOutcome(m.path, m.sop_class, m.sop_instance, None, error, True) for m in metas]
        return SendReport(peer, error, tuple(unreadable + failed))

    ae = AE(ae_title=calling_ae)
    try:
        assoc = open_association(ae, dest, contexts=contexts, timeout=timeout)
    except AssociationFailed as exc:
        log.log(logging.ERROR if exc.local else logging.WARNING, "%s", exc)
        failed = [
            FileOutcome(m.path, m.sop_class, m.sop_instance, None, str(exc), exc.permanent)
            for m in metas
        ]
        return SendReport(peer, str(exc), tuple(unreadable + failed))

    outcomes: list[FileOutcome] = []
    try:
        for index, meta in enumerate(metas):
            msg_id = index % 65535 + 1  # PS3.7 E.1: Message ID is a US value
            if not assoc.is_established:
                outcomes.append(FileOutcome(meta.path, meta.sop_class, meta.sop_instance, None,
                                            "not sent: association ended early"))
                continue
            result = _send_one(assoc, meta, msg_id)
            if result.error:
                log.warning("C-STORE %s to %s: %s", meta.sop_instance, peer, result.error)
            outcomes.append(result)
    finally:
        if assoc.is_established:
            assoc.release()
    sent = sum(o.delivered for o in outcomes)
    log.info("sent %d/%d instance(s) to %s", sent, len(metas), peer)
    return SendReport(peer, None, tuple(unreadable + outcomes))
