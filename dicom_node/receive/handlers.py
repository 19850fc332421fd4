"""DIMSE and association event handlers as plain functions ``(event, deps) -> status``.

:func:`answer_failure` (through :func:`bind`, or :func:`serve_store` for C-STORE requests served
straight from their PDUs) is the one place where an exception raised while handling a request
becomes a failure status sent to the peer (pynetdicom's ``service_class.attempt`` plays the same role):
handlers raise, :func:`failure_status` maps the exception to a named status, and a log line
records why, with UIDs only (no patient identifiers), every peer-supplied value escaped
(dicom_node/logsafe.py) and an invalid one not echoed at all. Expected bad input is one line;
only an unexpected exception (a bug) logs its traceback.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydicom.uid import UID
from pynetdicom import evt
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.events import Event

from dicom_node import logsafe, status
from dicom_node.disk import DiskGuard
from dicom_node.events import Emit, InstanceStored, ignore
from dicom_node.receive import file_meta
from dicom_node.receive.direct_io import ALIGNMENT
from dicom_node.receive.refusals import Refusals
from dicom_node.receive.spool import PART10_PREFIX, Chunk, CorruptInstance, Spool, parse_dataset
from dicom_node.uids import InvalidUID

log = logging.getLogger(__name__)


class InstanceMismatch(ValueError):
    """The dataset contradicts its C-STORE request (e.g. a different SOP Instance UID)."""


@dataclass(frozen=True)
class AssociationPolicy:
    """Who may associate. Empty lists allow everyone (the documented default)."""

    allowed_calling_aets: frozenset[str] = frozenset()
    allowed_peer_addresses: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Refusal:
    """Why an association request is refused, as A-ASSOCIATE-RJ fields (PS3.8 9.3.4)."""

    result: status.RejectResult
    source: status.RejectSource
    reason: status.RejectReason
    why: str


def refuse_association(
    policy: AssociationPolicy, calling_ae: str, peer_address: str
) -> Refusal | None:
    """Pure check of an association request against the allowlists; None means accept."""
    if (
        policy.allowed_peer_addresses
        and peer_address not in policy.allowed_peer_addresses
    ):
        return Refusal(
            status.RejectResult.REJECTED_PERMANENT,
            status.RejectSource.SERVICE_USER,
            status.RejectReason.NO_REASON_GIVEN,
            f"peer address {peer_address} not in node.allowed_peer_addresses",
        )
    if policy.allowed_calling_aets and calling_ae not in policy.allowed_calling_aets:
        return Refusal(
            status.RejectResult.REJECTED_PERMANENT,
            status.RejectSource.SERVICE_USER,
            status.RejectReason.CALLING_AE_NOT_RECOGNIZED,
            "calling AE not in node.allowed_calling_aets",
        )
    return None


class Arrivals(Protocol):
    """Who is told of stored instances and ended associations: the node's
    :class:`~dicom_node.receive.assembly.SeriesTracker`, or, in a receiver process, the channel
    to it (processes.py)."""

    def instance_received(
        self, study_uid: str, series_uid: str, sop_uid: str, association: str,
        calling_ae: str = "", called_ae: str = "",
    ) -> object: ...

    def association_ended(self, association: str) -> None: ...


@dataclass
class HandlerDeps:
    spool: Spool
    tracker: Arrivals
    policy: AssociationPolicy = field(default_factory=AssociationPolicy)
    #: The data_dir's low-space watermark (dicom_node/disk.py); None: never checked.
    disk: DiskGuard | None = None
    #: Counts every refusal: the gate's and guard's, and instances refused here (refusals.py).
    refusals: Refusals = field(default_factory=Refusals)
    #: Told of every instance stored (the node's metrics; dicom_node/events.py).
    emit: Emit = ignore


def association_key(assoc: Any) -> str:
    """A key for the association, unique while it is alive."""
    return f"assoc-{id(assoc):x}"


def ae_text(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return str(value or "").strip()


def handle_requested(event: Event, deps: HandlerDeps) -> None:
    """EVT_REQUESTED: refuse callers not on the allowlists with an A-ASSOCIATE-RJ.

    pynetdicom documents this hook for sending the reject before negotiation starts.
    """
    assoc = event.assoc
    primitive = assoc.requestor.primitive
    calling = ae_text(primitive.calling_ae_title if primitive is not None else "")
    address = str(assoc.requestor.address)
    refusal = refuse_association(deps.policy, calling, address)
    if refusal is None:
        return
    log.warning(
        "association from %s (AE %s) rejected: %s", address, logsafe.ae_title(calling), refusal.why
    )
    assoc.acse.send_reject(
        int(refusal.result), int(refusal.source), int(refusal.reason)
    )
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()


def handle_echo(event: Event, deps: HandlerDeps) -> int:
    """C-ECHO (PS3.4 A.4): the node is up."""
    return status.SUCCESS


@dataclass(frozen=True)
class StoreRequest:
    """One C-STORE request as the node serves it: the data set as received (PS3.7 9.3.1.1,
    encoded in ``transfer_syntax``) and the request's fields the node uses. Built from
    pynetdicom's event (:func:`handle_store`) or straight from the P-DATA-TF PDUs
    (direct_store.py)."""

    #: Valid while the request is served (straight from the PDUs: a view of a buffer the
    #: association reuses for its next message).
    dataset: bytes | memoryview
    transfer_syntax: str
    #: Affected SOP Class / Instance UID of the request (PS3.7 9.1.1.1); may be empty.
    sop_class_uid: str
    sop_instance_uid: str
    calling_ae: str
    called_ae: str
    #: :func:`association_key` of the association it came on.
    association: str
    #: The peer's address, for log lines.
    address: str


def handle_store(event: Event, deps: HandlerDeps) -> int:
    """C-STORE (PS3.4 B.2) through pynetdicom's event: :func:`store_instance`."""
    return store_instance(store_request(event), deps)


def store_request(event: Event) -> StoreRequest:
    """The :class:`StoreRequest` of pynetdicom's EVT_C_STORE."""
    request = event.request
    return StoreRequest(
        dataset=event.encoded_dataset(include_meta=False),
        transfer_syntax=str(event.context.transfer_syntax),
        sop_class_uid=_uid(getattr(request, "AffectedSOPClassUID", "")),
        sop_instance_uid=_uid(getattr(request, "AffectedSOPInstanceUID", "")),
        calling_ae=ae_text(event.assoc.requestor.ae_title),
        called_ae=ae_text(event.assoc.acceptor.ae_title),
        association=association_key(event.assoc),
        address=str(event.assoc.requestor.address),
    )


def _uid(value: Any) -> str:
    return str(value or "").rstrip("\x00 ")


def store_instance(request: StoreRequest, deps: HandlerDeps) -> int:
    """Check the dataset against the parse policy, durably spool the bytes as received, then
    tell the tracker.

    SUCCESS is returned only after the instance is on disk (data flushed, name linked, folder
    synced: spool.py). A SOP instance already held is answered SUCCESS and not stored or counted
    again. A dataset the policy refuses (too large, a deflate bomb, nesting too deep, pixel
    geometry over the limit, malformed) is answered CANNOT_UNDERSTAND and not stored.
    """
    # Disk lifecycle: below the low-space watermark nothing is acknowledged (dicom_node/disk.py).
    if deps.disk is not None and deps.disk.low():
        return status.OUT_OF_RESOURCES
    # One walk of the dataset as received (the context's transfer syntax): the policy's checks
    # and the receive tags; nothing is decoded.
    info = parse_dataset(request.dataset, request.transfer_syntax, deps.spool.limits)
    requested = request.sop_instance_uid
    if requested and requested != info.sop_uid:
        raise InstanceMismatch(
            f"dataset SOPInstanceUID {info.sop_uid} differs from the request's "
            f"{logsafe.uid(requested)}"
        )
    parts = spool_parts(request, deps.spool.direct_writes)
    result = deps.spool.store(parts, info, calling_ae=request.calling_ae, called_ae=request.called_ae)
    deps.tracker.instance_received(
        info.study_uid,
        info.series_uid,
        info.sop_uid,
        request.association,
        request.calling_ae,
        request.called_ae,
    )
    deps.emit(InstanceStored(len(request.dataset), result.duplicate))
    if result.duplicate:
        log.info(
            "duplicate instance %s (series %s) acknowledged, stored once",
            info.sop_uid,
            info.series_uid,
        )
    return status.SUCCESS


def spool_parts(request: StoreRequest, whole_blocks: bool) -> tuple[Chunk, ...]:
    """What the spool stores for ``request``, in order: the preamble and ``DICM``, the file meta
    group (padded so that the file is whole direct-write blocks when ``whole_blocks``: the spool
    writes direct, file_meta.py), then the data set as received."""
    return PART10_PREFIX, _file_meta(request, whole_blocks), request.dataset


def _file_meta(request: StoreRequest, whole_blocks: bool) -> bytes:
    """The instance's encoded file meta group (file_meta.py; pydicom's encoder, as before, for
    a request without its UIDs or with UIDs that are not ASCII). ``whole_blocks``: padded so that
    the file is a whole number of direct-write blocks (the spool writes direct: no truncation)."""
    if request.sop_class_uid and request.sop_instance_uid:
        try:
            return file_meta.encode_file_meta(
                request.sop_class_uid, request.sop_instance_uid, request.transfer_syntax,
                block=ALIGNMENT if whole_blocks else 0, before=len(PART10_PREFIX), after=len(request.dataset),
            )
        except UnicodeEncodeError:
            pass
    return encode_file_meta(create_file_meta(
        sop_class_uid=UID(request.sop_class_uid), sop_instance_uid=UID(request.sop_instance_uid),
        transfer_syntax=UID(request.transfer_syntax),
    ))


def handle_association_ended(event: Event, deps: HandlerDeps) -> None:
    """EVT_RELEASED / EVT_ABORTED / EVT_CONN_CLOSE: the association stops holding series open."""
    deps.tracker.association_ended(association_key(event.assoc))


#: What an instance that cannot be stored as sent raises: answered 0xC000 (cannot understand),
#: counted as a refusal, logged on one line (their messages name the check, never the value).
REFUSED_INSTANCE: tuple[type[Exception], ...] = (CorruptInstance, InvalidUID, InstanceMismatch)


def failure_status(exc: BaseException) -> tuple[int, str]:
    """Map an exception raised by a handler to the DIMSE failure status and a log reason."""
    if isinstance(exc, REFUSED_INSTANCE):
        return status.CANNOT_UNDERSTAND, str(exc)
    if isinstance(exc, OSError):
        code = (
            status.OUT_OF_RESOURCES
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EMFILE)
            else status.PROCESSING_FAILURE
        )
        return code, f"storage error: {exc.strerror or exc}"
    return status.PROCESSING_FAILURE, f"{type(exc).__name__}: {exc}"


StatusHandler = Callable[[Event, HandlerDeps], int]


def bind(handler: StatusHandler, deps: HandlerDeps) -> Callable[[Event], int]:
    """Bind ``deps`` to a DIMSE handler; exceptions become failure statuses (:func:`answer_failure`)."""

    def bound(event: Event) -> int:
        try:
            return int(handler(event, deps))
        except Exception as exc:  # noqa: BLE001 - every failure is answered with a status (answer_failure logs it)
            return answer_failure(
                exc, deps, handler.__name__, str(event.assoc.requestor.address),
                ae_text(event.assoc.requestor.ae_title), getattr(event.request, "AffectedSOPInstanceUID", ""),
            )

    return bound


def serve_store(deps: HandlerDeps) -> Callable[[StoreRequest], int]:
    """:func:`store_instance` with ``deps`` bound, for requests served without pynetdicom's
    event (direct_store.py); exceptions become failure statuses as in :func:`bind`."""

    def serve(request: StoreRequest) -> int:
        try:
            return store_instance(request, deps)
        except Exception as exc:  # noqa: BLE001 - every failure is answered with a status (answer_failure logs it)
            return answer_failure(
                exc, deps, handle_store.__name__, request.address, request.calling_ae, request.sop_instance_uid
            )

    return serve


def answer_failure(exc: Exception, deps: HandlerDeps, handler_name: str, address: str, calling: str,
                   sop: Any) -> int:
    """The one place an exception raised while serving a request becomes the failure status
    sent to the peer (:func:`failure_status`), counted when the instance is refused, and logged."""
    code, reason = failure_status(exc)
    if isinstance(exc, REFUSED_INSTANCE):
        deps.refusals.count("refused_instance")
    log.warning(
        "%s from %s (AE %s, SOP instance %s) failed with status %s: %s",
        handler_name,
        address,
        logsafe.ae_title(calling),
        logsafe.uid(sop),
        status.Status(code).name,
        reason,
        exc_info=not isinstance(exc, (*REFUSED_INSTANCE, OSError)),
    )
    return int(code)


def bind_notification(
    handler: Callable[[Event, HandlerDeps], None], deps: HandlerDeps
) -> Callable[[Event], None]:
    """Bind ``deps`` to a notification handler (its errors are logged, never raised into pynetdicom)."""

    def bound(event: Event) -> None:
        try:
            handler(event, deps)
        except Exception:  # no status to send: log, keep the association
            log.exception("%s failed", handler.__name__)

    return bound
