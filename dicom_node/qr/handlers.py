"""Query/Retrieve SCP: C-FIND, C-MOVE and C-GET over what the node holds (PS3.4 Annex C).

Handlers are plain generator functions ``(event, deps)`` yielding what pynetdicom expects:
C-FIND ``(status, identifier)`` pairs; C-GET the number of sub-operations, then
``(status, dataset)``; C-MOVE the destination ``(host, port, kwargs)`` first. :func:`bind` is the
one place where an exception becomes a failure status for the peer. Patient Root and Study Root
information models, all four levels. Move destinations are the ``destinations`` of the config,
looked up by AE title; any other Move Destination is answered with
:data:`~dicom_node.status.QRStatus.MOVE_DESTINATION_UNKNOWN`.

Who may call, and what each caller sees, is :mod:`dicom_node.qr.access` (``query_retrieve`` in
the config): a caller it refuses is answered NOT_AUTHORIZED (0124, PS3.7 C.5.20). A C-MOVE/C-GET
identifier names entities by their unique keys (PS3.4 C.4.2.2.1, C.4.3.2.1): a wildcard in one
is refused, so ``StudyInstanceUID=*`` or ``PatientID=*`` cannot pull everything.

Logs carry levels, counts, AE titles (escaped) and UIDs, never the identifier's patient
attributes; an expected refusal is one line, only an unexpected exception logs its traceback.
"""

from __future__ import annotations

import logging
import ssl
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_context, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext

from config.schema import AppConfig, DestinationConfig
from dicom_node import logsafe
from dicom_node.deliver.sender import MAX_PRESENTATION_CONTEXTS
from dicom_node.qr.access import QRAccess
from dicom_node.qr.index import (
    COMPUTED_KEYS,
    LEVEL_KEYS,
    MODEL_LEVELS,
    UNIQUE_KEY,
    Entity,
    IndexedInstance,
    InformationModel,
    Level,
    QRIndex,
    visible_keys,
)
from dicom_node.status import QRStatus
from dicom_node.tls import tls_context
from image_model.parse_policy import UnsafeDicom, scan_dataset

log = logging.getLogger(__name__)

#: Q/R SOP classes (PS3.4 C.6.1.1 / C.6.2.1) -> (information model, operation).
FIND_MODELS: dict[str, InformationModel] = {
    "1.2.840.10008.5.1.4.1.2.1.1": InformationModel.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.1": InformationModel.STUDY_ROOT,
}
MOVE_MODELS: dict[str, InformationModel] = {
    "1.2.840.10008.5.1.4.1.2.1.2": InformationModel.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.2": InformationModel.STUDY_ROOT,
}
GET_MODELS: dict[str, InformationModel] = {
    "1.2.840.10008.5.1.4.1.2.1.3": InformationModel.PATIENT_ROOT,
    "1.2.840.10008.5.1.4.1.2.2.3": InformationModel.STUDY_ROOT,
}
#: Request keys answered without being matched (PS3.4 C.4.1.1.3.2, C.6.1.1.x).
INFORMATIONAL_KEYS = frozenset({
    "QueryRetrieveLevel", "SpecificCharacterSet", "RetrieveAETitle", "InstanceAvailability",
    "TimezoneOffsetFromUTC",
})
KNOWN_KEYS = frozenset(
    {k for keys in LEVEL_KEYS.values() for k in keys}
    | {k for keys in COMPUTED_KEYS.values() for k in keys}
    | INFORMATIONAL_KEYS
)
UTF8_CHARSET = "ISO_IR 192"
UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


class QRFailure(Exception):
    """A request the node answers with a failure status (the message is logged)."""

    def __init__(self, status: QRStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class QRDeps:
    index: QRIndex
    config: AppConfig
    #: Who may query/retrieve what (default: from ``config.query_retrieve``).
    access: QRAccess | None = None

    def __post_init__(self) -> None:
        if self.access is None:
            self.access = QRAccess.from_config(self.config)


@dataclass(frozen=True)
class Request:
    """A decoded C-FIND/C-MOVE/C-GET identifier."""

    model: InformationModel
    level: Level
    #: keyword -> raw request value (multiple values joined with backslash)
    keys: dict[str, str]
    #: Request keywords in request order (what a C-FIND response returns).
    requested: tuple[str, ...]
    unsupported: tuple[str, ...]


def _raw(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return "\\".join(_raw(v) for v in value)
    return str(value)


def parse_identifier(identifier: Dataset | None, model: InformationModel) -> Request:
    """Check the level against the model and collect the matching keys (PS3.4 C.4.1.2)."""
    if identifier is None:
        raise QRFailure(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no identifier")
    raw_level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    try:
        level = Level(raw_level)
    except ValueError:
        raise QRFailure(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                        "Query/Retrieve Level is not PATIENT/STUDY/SERIES/IMAGE") from None
    if level not in MODEL_LEVELS[model]:
        raise QRFailure(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                        f"level {level.value} does not exist in the {model.value} root model")
    keys: dict[str, str] = {}
    requested: list[str] = []
    unsupported: list[str] = []
    for elem in identifier:
        keyword = keyword_for_tag(elem.tag)
        if not keyword or elem.tag.is_private or elem.tag.group == 0x0002:
            continue
        if tag_for_keyword(keyword) != elem.tag:
            # A repeating-group keyword ((60xx,...), (7Fxx,...)): it names no one element, so it
            # cannot be answered (PS3.4 C.4.1.1.3.2: an unsupported key).
            unsupported.append(keyword)
            continue
        requested.append(keyword)
        if keyword not in KNOWN_KEYS or elem.VR == "SQ":
            unsupported.append(keyword)
        elif keyword not in INFORMATIONAL_KEYS:
            keys[keyword] = _raw(elem.value)
    return Request(model, level, keys, tuple(requested), tuple(unsupported))


def _response(entity: Entity, request: Request, retrieve_ae: str) -> Dataset:
    """One C-FIND match: the requested keys (empty when the node has no value), plus the
    unique keys of the level and the levels above (PS3.4 C.4.1.2.3)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = request.level.value
    levels = MODEL_LEVELS[request.model]
    uniques = [UNIQUE_KEY[lv] for lv in levels[: levels.index(request.level) + 1]]
    visible = set(visible_keys(request.model, request.level))
    needs_utf8 = False
    for keyword in dict.fromkeys([*uniques, *request.requested]):
        if keyword in ("QueryRetrieveLevel", "SpecificCharacterSet"):
            continue
        vr = dictionary_VR(keyword).split(" or ")[0]  # e.g. "US or SS": either encodes empty
        if keyword == "RetrieveAETitle":
            value: Any = retrieve_ae
        elif keyword == "InstanceAvailability":
            value = "ONLINE"
        elif keyword in visible and entity.values.get(keyword) and vr != "SQ":
            found = entity.values[keyword]
            value = list(found) if len(found) > 1 else found[0]
            needs_utf8 = needs_utf8 or any(not v.isascii() for v in found)
        else:
            value = [] if vr == "SQ" else None
        ds.add_new(keyword, vr, value)
    if needs_utf8:
        ds.SpecificCharacterSet = UTF8_CHARSET
    return ds


def _model(event: Event, table: dict[str, InformationModel]) -> InformationModel:
    sop_class = str(event.request.AffectedSOPClassUID)
    if sop_class not in table:
        raise QRFailure(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"unknown SOP class {sop_class}")
    return table[sop_class]


def _calling(event: Event) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _caller(event: Event) -> str:
    """The caller for a log line: address and AE title (escaped)."""
    return f"{event.assoc.requestor.address} (AE {logsafe.ae_title(_calling(event))})"


def _identifier(event: Event, deps: QRDeps) -> Dataset | None:
    """The request's identifier, decoded only once the parse policy accepts its encoding (a
    peer's identifier is a dataset like any other: nesting, size, structure)."""
    raw = getattr(event.request, "Identifier", None)
    if raw is not None:
        try:
            scan_dataset(raw.getvalue(), str(event.context.transfer_syntax), deps.index.limits)
        except UnsafeDicom as exc:
            raise QRFailure(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"identifier refused: {exc}") from None
    return event.identifier


def _authorize(event: Event, deps: QRDeps, operation: str) -> frozenset[str] | None:
    """The origins the caller may see (None: everything); raises :class:`QRFailure`
    NOT_AUTHORIZED for a caller ``query_retrieve`` does not admit."""
    access = deps.access
    assert access is not None
    calling = _calling(event)
    why = access.refusal(calling, str(event.assoc.requestor.address))
    if why is not None:
        raise QRFailure(QRStatus.NOT_AUTHORIZED, f"{operation} not authorized: {why}")
    return access.origins(calling)


def handle_find(event: Event, deps: QRDeps) -> Iterator[tuple[int, Dataset | None]]:
    """C-FIND (PS3.4 C.4.1): one pending response per match, then success."""
    try:
        origins = _authorize(event, deps, "C-FIND")
        request = parse_identifier(_identifier(event, deps), _model(event, FIND_MODELS))
        entities = deps.index.find(request.model, request.level, request.keys, origins)
    except QRFailure as exc:
        log.warning("C-FIND from %s refused (%s): %s", _caller(event), exc.status.name, exc)
        yield int(exc.status), None
        return
    pending = QRStatus.PENDING_WARNING if request.unsupported else QRStatus.PENDING
    log.info("C-FIND from %s, %s root, level %s: %d match(es)", _caller(event),
             request.model.value, request.level.value, len(entities))
    for entity in entities:
        if event.is_cancelled:
            yield int(QRStatus.CANCEL), None
            return
        yield int(pending), _response(entity, request, deps.config.node.ae_title)
    yield int(QRStatus.SUCCESS), None


#: Characters with a matching meaning (PS3.4 C.2.2.2.4): not allowed in a retrieve's unique keys.
WILDCARDS = frozenset("*?")


def select_instances(event: Event, deps: QRDeps, table: dict[str, InformationModel]) -> list[IndexedInstance]:
    """The instances a C-MOVE/C-GET identifier names. It must carry the level's unique key, and
    no unique key may hold a wildcard (PS3.4 C.4.2.2.1, C.4.3.2.1: a retrieve names entities by
    their unique keys: single values, or lists of UIDs)."""
    origins = _authorize(event, deps, "retrieve")
    request = parse_identifier(_identifier(event, deps), _model(event, table))
    unique = UNIQUE_KEY[request.level]
    if not request.keys.get(unique, "").strip():
        raise QRFailure(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                        f"retrieve at level {request.level.value} without {unique}")
    for key in UNIQUE_KEY.values():
        if WILDCARDS & set(request.keys.get(key, "")):
            raise QRFailure(QRStatus.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                            f"wildcard in unique key {key} of a retrieve (PS3.4 C.4.2.2.1)")
    return deps.index.select(request.model, request.level, request.keys, origins)


def _failed_list(instances: list[IndexedInstance]) -> Dataset:
    ds = Dataset()
    ds.FailedSOPInstanceUIDList = [i.sop_uid for i in instances]
    return ds


def _send_items(
    event: Event, instances: list[IndexedInstance]
) -> Iterator[tuple[int, Dataset | None]]:
    for position, inst in enumerate(instances):
        if event.is_cancelled:
            yield int(QRStatus.CANCEL), _failed_list(instances[position:])
            return
        yield int(QRStatus.PENDING), pydicom.dcmread(inst.path)


def store_contexts(instances: list[IndexedInstance]) -> list[PresentationContext]:
    """Storage contexts for a C-MOVE's sub-association: each SOP class with its files' own
    transfer syntaxes plus both little endians for uncompressed ones (as dicom_node.deliver.sender)."""
    syntaxes: dict[str, list[str]] = defaultdict(list)
    for inst in instances:
        sop_class = inst.get("SOPClassUID")[0] if inst.get("SOPClassUID") else ""
        offered = [inst.transfer_syntax_uid] if inst.transfer_syntax_uid else []
        if not inst.transfer_syntax_uid or not UID(inst.transfer_syntax_uid).is_compressed:
            offered += list(UNCOMPRESSED)
        for ts in offered:
            if ts not in syntaxes[sop_class]:
                syntaxes[sop_class].append(ts)
    contexts = []
    for sop_class, offered in syntaxes.items():
        plain = [t for t in offered if not UID(t).is_compressed]
        if plain:
            contexts.append(build_context(sop_class, plain))
        contexts.extend(build_context(sop_class, t) for t in offered if UID(t).is_compressed)
    return contexts[:MAX_PRESENTATION_CONTEXTS]


def move_destination(config: AppConfig, ae_title: str) -> DestinationConfig | None:
    """The configured destination whose AE title is the Move Destination (PS3.4 C.4.2.1.4)."""
    wanted = ae_title.strip()
    return next((d for d in config.destinations.values() if d.ae_title == wanted), None)


def handle_move(event: Event, deps: QRDeps) -> Iterator[Any]:
    """C-MOVE (PS3.4 C.4.2): C-STORE the selected instances to a configured destination."""
    wanted = str(event.move_destination).strip()
    dest = move_destination(deps.config, wanted)
    if dest is None:
        # pynetdicom answers (None, None) with Move Destination Unknown
        # (QRStatus.MOVE_DESTINATION_UNKNOWN, PS3.4 C.4.2.1.5).
        log.warning("C-MOVE from %s refused (%s): the Move Destination is not a configured destination",
                    _caller(event), QRStatus.MOVE_DESTINATION_UNKNOWN.name)
        yield None, None
        return
    try:
        instances = select_instances(event, deps, MOVE_MODELS)
        failure: QRFailure | None = None
    except QRFailure as exc:
        instances, failure = [], exc
    kwargs: dict[str, Any] = {"contexts": store_contexts(instances) or [build_context(UID("1.2.840.10008.1.1"))]}
    if dest.tls.enabled:
        try:
            kwargs["tls_args"] = (tls_context(dest.tls), dest.host)
        except (OSError, ssl.SSLError) as exc:
            failure = QRFailure(QRStatus.UNABLE_TO_PROCESS, f"TLS setup for {dest.ae_title} failed: {exc}")
    yield dest.host, dest.port, kwargs
    if failure is not None:
        # A failure status needs one announced sub-operation to be sent (pynetdicom).
        log.warning("C-MOVE from %s refused (%s): %s", _caller(event), failure.status.name, failure)
        yield 1
        yield int(failure.status), _failed_list(instances)
        return
    log.info("C-MOVE from %s to %s: %d instance(s)", _caller(event), dest.ae_title, len(instances))
    yield len(instances)
    yield from _send_items(event, instances)


def handle_get(event: Event, deps: QRDeps) -> Iterator[Any]:
    """C-GET (PS3.4 C.4.3): C-STORE the selected instances back over the same association."""
    try:
        instances = select_instances(event, deps, GET_MODELS)
    except QRFailure as exc:
        log.warning("C-GET from %s refused (%s): %s", _caller(event), exc.status.name, exc)
        yield 1
        yield int(exc.status), _failed_list([])
        return
    log.info("C-GET from %s: %d instance(s)", _caller(event), len(instances))
    yield len(instances)
    yield from _send_items(event, instances)


QRHandler = Callable[[Event, QRDeps], Iterator[Any]]


def bind(handler: QRHandler, deps: QRDeps, preamble: int) -> Callable[[Event], Iterator[Any]]:
    """Bind ``deps``; the one place a Q/R handler's exception becomes a failure status.

    ``preamble`` is how many leading yields are not statuses (C-FIND 0, C-GET 1: the count,
    C-MOVE 2: destination and count). An exception there is left to pynetdicom, which answers
    with its own Cxxx failure; afterwards it becomes ``UNABLE_TO_PROCESS``.
    """

    def bound(event: Event) -> Iterator[Any]:
        produced = 0
        try:
            for item in handler(event, deps):
                produced += 1
                yield item
        except Exception as exc:  # every failure is answered with a status
            log.warning("%s from %s failed: %s", handler.__name__, _caller(event), type(exc).__name__,
                        exc_info=True)
            if produced < preamble:
                raise
            yield int(QRStatus.UNABLE_TO_PROCESS), None

    return bound


def add_qr_contexts(ae: AE, storage_sop_classes: tuple[str, ...]) -> None:
    """Accept the Q/R SOP classes, and the storage classes in both roles so a C-GET requestor
    (the Storage SCP of the sub-operations, PS3.4 C.4.3.2) can propose the SCP role."""
    for sop_class in (*FIND_MODELS, *MOVE_MODELS, *GET_MODELS):
        ae.add_supported_context(sop_class, list(UNCOMPRESSED))
    for sop_class in storage_sop_classes:
        ae.add_supported_context(sop_class, list(UNCOMPRESSED), scu_role=True, scp_role=True)


def qr_event_handlers(deps: QRDeps) -> list[tuple[Any, Callable[[Event], Iterator[Any]]]]:
    return [
        (evt.EVT_C_FIND, bind(handle_find, deps, 0)),
        (evt.EVT_C_GET, bind(handle_get, deps, 1)),
        (evt.EVT_C_MOVE, bind(handle_move, deps, 2)),
    ]
