"""C-STORE requests served straight from their P-DATA-TF PDUs, on the association's DUL thread.

pynetdicom turns every P-DATA-TF PDU into objects: the PDU, its P-DATA primitive, an event for
the upper layer state machine, a DIMSE message collecting the fragments, a C-STORE primitive whose
fields are validated one by one, the handler's event, then a response primitive encoded back
through the same layers. For a 512 KB CT slice that is more of the interpreter's time than the
node's own work (policy walk, spool), and with several associations in one process the threads
queue for the interpreter lock behind it. A DIMSE message is a command set followed by a data
set, each carried in presentation data value (PDV) items (PS3.7 E.1, PS3.8 9.3.5 and E.2);
:class:`DirectStore` serves a C-STORE-RQ from the PDUs' bytes:

* a message is taken only if its command set is complete in the first PDV of a PDU (or the first
  after a message taken from the same PDU) and is a plain C-STORE-RQ (every element one this
  module knows, UIDs valid, a data set follows, PS3.7 Table 9.3-1) of a storage SOP class, on an
  accepted presentation context, while nothing else is served, queued or half-received on the
  association; anything else goes to pynetdicom as before;
* the data set's fragments are read from the socket straight into one buffer per association,
  reused from one message to the next;
* the node's store service (``handlers.serve_store``: the same checks, spool and status as
  pynetdicom's EVT_C_STORE handler) answers, and the C-STORE-RSP (PS3.7 9.3.1.2) is encoded here
  and sent in one P-DATA-TF PDU;
* a message broken mid-way (a command fragment among data fragments, a fragment on another
  presentation context: PS3.8 9.3.5.1) aborts the association (A-ABORT as for an invalid PDU,
  PS3.8 Table 9-10 Evt19), counted as a refusal.

The association stays in data transfer (PS3.8 Sta6) throughout: the state machine, which
handles every other PDU, sees none of these. The PDUs are still read through the guarded socket
(guard.py), so every limit is checked on the bytes before they are read, and the network idle
timer restarts on each as on any PDU. pynetdicom's EVT_DATA_RECV, EVT_PDU_RECV/SENT,
EVT_DIMSE_RECV/SENT and EVT_C_STORE do not fire for them: the node binds none of these on its
acceptor but EVT_C_STORE, whose handler is the store service called here (scp.py offers this path
only then).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from dicom_node.receive.guard import COMMAND_BIT, LAST_BIT, P_DATA_TF, PDU_HEADER, PDV_HEADER, GuardedSocket
from dicom_node.receive.handlers import StoreRequest, ae_text, association_key
from dicom_node.uids import is_valid_uid

log = logging.getLogger(__name__)

#: Command Field values (PS3.7 Table E.1-1), Command Data Set Type "no data set" (PS3.7 E.1).
C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
NO_DATA_SET = 0x0101
#: Command elements of a C-STORE-RQ (PS3.7 Table 9.3-1), group 0000: group length, Affected SOP
#: Class UID, Command Field, Message ID, Priority, Command Data Set Type, Affected SOP Instance
#: UID, Move Originator AE Title and Message ID.
(GROUP_LENGTH, AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, MESSAGE_ID_RESPONDED, PRIORITY,
 DATA_SET_TYPE, STATUS, AFFECTED_SOP_INSTANCE, MOVE_ORIGINATOR_AE, MOVE_ORIGINATOR_ID) = (
    0x0000, 0x0002, 0x0100, 0x0110, 0x0120, 0x0700, 0x0800, 0x0900, 0x1000, 0x1030, 0x1031)
_REQUEST_ELEMENTS = frozenset({GROUP_LENGTH, AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, PRIORITY,
                               DATA_SET_TYPE, AFFECTED_SOP_INSTANCE, MOVE_ORIGINATOR_AE, MOVE_ORIGINATOR_ID})
#: Value lengths of the elements of fixed length: UL, US (PS3.5 Table 6.2-1); AE at most 16.
_FIXED_LENGTHS = {GROUP_LENGTH: 4, COMMAND_FIELD: 2, MESSAGE_ID: 2, PRIORITY: 2, DATA_SET_TYPE: 2,
                  MOVE_ORIGINATOR_ID: 2}
_MAX_AE_LENGTH = 16
#: Priority: MEDIUM, HIGH, LOW (PS3.7 9.3.1.1).
_PRIORITIES = frozenset({0, 1, 2})

#: An element of a command set: implicit VR little endian, always (PS3.7 6.3.1).
_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
#: The longest C-STORE-RSP PDU's variable field (what the peer's Maximum Length counts, PS3.8
#: D.1): a PDV item header, seven elements, two 64-character UIDs. A peer that takes less gets
#: its responses from pynetdicom, which fragments them.
MAX_RESPONSE_PDU = 6 + 7 * 8 + 4 + 4 * 2 + 2 * 64
#: How long serving waits for the association's thread to leave the association alone (it only
#: holds it briefly between requests while nothing is queued); past it, the association is aborted.
SERVE_WAIT_SECONDS = 10.0
#: The largest data set buffer an association keeps for its next message (larger: freed).
RETAINED_BUFFER_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class StoreCommand:
    """The fields of a C-STORE-RQ command set the node answers with (PS3.7 Table 9.3-1)."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str


def decode_store_command(data: bytes | memoryview) -> StoreCommand | None:
    """The C-STORE-RQ in an encoded command set, or None when it is not a plain one: another
    command, no data set, an element this module does not know, a value of the wrong length, a
    UID that is not valid (PS3.5 9.1), a priority out of range. None means "let pynetdicom decide"
    (it validates, answers or aborts as it always has), never "refuse"."""
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if end - pos < _ELEMENT.size:
            return None
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += _ELEMENT.size
        if group != 0 or element not in _REQUEST_ELEMENTS or element in values or length > end - pos:
            return None
        if _FIXED_LENGTHS.get(element, length) != length:
            return None
        values[element] = bytes(data[pos : pos + length])
        pos += length
    try:
        command = _US.unpack(values[COMMAND_FIELD])[0]
        data_set_type = _US.unpack(values[DATA_SET_TYPE])[0]
        priority = _US.unpack(values[PRIORITY])[0]
        message_id = _US.unpack(values[MESSAGE_ID])[0]
        sop_class = values[AFFECTED_SOP_CLASS].decode("ascii").rstrip("\0 ")
        sop_instance = values[AFFECTED_SOP_INSTANCE].decode("ascii").rstrip("\0 ")
    except (KeyError, UnicodeDecodeError):
        return None
    if command != C_STORE_RQ or data_set_type == NO_DATA_SET or priority not in _PRIORITIES:
        return None
    if len(values.get(MOVE_ORIGINATOR_AE, b"")) > _MAX_AE_LENGTH:
        return None
    if not (is_valid_uid(sop_class) and is_valid_uid(sop_instance)):
        return None
    return StoreCommand(message_id, sop_class, sop_instance)


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0, element, len(value)) + value


def _ui(uid: str) -> bytes:
    """A UI value padded with NUL to an even length (PS3.5 6.2)."""
    raw = uid.encode("ascii")
    return raw + b"\0" if len(raw) % 2 else raw


def encode_store_response(command: StoreCommand, status: int) -> bytes:
    """The C-STORE-RSP command set answering ``command`` (PS3.7 Table 9.3-2), as pynetdicom
    encodes it: group length, Affected SOP Class UID, Command Field, Message ID Being Responded
    To, Command Data Set Type (none), Status, Affected SOP Instance UID."""
    body = b"".join((
        _element(AFFECTED_SOP_CLASS, _ui(command.sop_class_uid)),
        _element(COMMAND_FIELD, _US.pack(C_STORE_RSP)),
        _element(MESSAGE_ID_RESPONDED, _US.pack(command.message_id)),
        _element(DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
        _element(STATUS, _US.pack(status)),
        _element(AFFECTED_SOP_INSTANCE, _ui(command.sop_instance_uid)),
    ))
    return _element(GROUP_LENGTH, _UL.pack(len(body))) + body


def p_data_tf(context_id: int, control: int, value: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV item (PS3.8 9.3.5)."""
    return PDU_HEADER.pack(P_DATA_TF, 0, len(value) + 6) + PDV_HEADER.pack(len(value) + 2, context_id, control) + value


@dataclass(frozen=True)
class _Message:
    """A C-STORE-RQ being received: its command and presentation context."""

    command: StoreCommand
    context_id: int
    transfer_syntax: str


class ConnectionClosed(Exception):
    """The connection closed (or the guard dropped the peer) in the middle of a PDU."""


class DirectStore:
    """Serves C-STORE requests of one acceptor association from its P-DATA-TF PDUs (module
    docstring). Used by the association's DUL thread only (reactor.py ``ReactorDUL``).

    ``assoc``: the node's association (reactor.py ``ReactorAssociation``: its ``_serving`` lock
    is held while a request is served); ``serve``: the node's store service."""

    def __init__(self, assoc: Any, serve: Callable[[StoreRequest], int]) -> None:
        self._assoc = assoc
        self._serve = serve
        self._message: _Message | None = None
        #: The data set of the message being received, read into it fragment by fragment: the
        #: first ``_size`` bytes. Kept for the next message (no new memory per instance) unless
        #: over :data:`RETAINED_BUFFER_BYTES`.
        self._buffer = bytearray()
        self._size = 0
        #: (calling AE, called AE, address, association key), read once the association is established.
        self._peer: tuple[str, str, str, str] | None = None

    @property
    def receiving(self) -> bool:
        """A message's data set is being received (its next fragment is due from the peer)."""
        return self._message is not None

    def receive(self, sock: GuardedSocket, length: int) -> bytes | None:
        """Read the body of a P-DATA-TF PDU (``length`` bytes, PDV items) from ``sock`` item by
        item, the values of the data set straight into the message's buffer, and serve what
        completes. Returns the items pynetdicom is to handle instead (from the first one this
        path does not take to the end of the PDU), or None. Raises :class:`ConnectionClosed`."""
        left = length
        while left:
            if left < PDV_HEADER.size:
                return self._left(self._read(sock, left))
            head = self._read(sock, PDV_HEADER.size)
            left -= PDV_HEADER.size
            item_length, context_id, control = PDV_HEADER.unpack(head)
            value_length = item_length - 2
            if item_length < 2 or value_length > left:
                return self._left(head + self._read(sock, left))
            message = self._message
            if message is None:
                value = self._read(sock, value_length)
                left -= value_length
                message = self._start(context_id, control, memoryview(value))
                if message is None:
                    return head + value + self._read(sock, left)
                self._message, self._size = message, 0
                continue
            if control & COMMAND_BIT or context_id != message.context_id:
                self._broken("a command fragment or another presentation context in the middle of a data set "
                             "(PS3.8 9.3.5.1)")
                return None
            self._read_data(sock, value_length)
            left -= value_length
            if control & LAST_BIT:
                self._message = None
                if not self._complete(message):
                    return None
        return None

    @staticmethod
    def _read(sock: GuardedSocket, size: int) -> bytes:
        data = sock.recv(size)
        if len(data) != size:
            raise ConnectionClosed
        return bytes(data)

    def _read_data(self, sock: GuardedSocket, size: int) -> None:
        """Append ``size`` bytes from ``sock`` to the data set being received."""
        end = self._size + size
        if len(self._buffer) < end:
            # A new buffer rather than a resize: a view of the old one may still be alive. Twice
            # the old size, but never more than a data set the guard lets through can need.
            grown = bytearray(max(end, min(2 * len(self._buffer), sock.dataset_room)))
            grown[: self._size] = memoryview(self._buffer)[: self._size]
            self._buffer = grown
        with memoryview(self._buffer) as view:
            got = sock.recv_into(view[self._size : end])
        if got != size:
            raise ConnectionClosed
        self._size = end

    def _left(self, items: bytes) -> bytes | None:
        """Items this path cannot walk (the guard drops such a peer after this PDU): pynetdicom's
        if no message is under way here, else the association is aborted."""
        if self._message is None:
            return items
        self._broken("a presentation data value item that does not fit its PDU (PS3.8 9.3.5.1)")
        return None

    def _start(self, context_id: int, control: int, value: memoryview) -> _Message | None:
        """A message for this path if ``value`` is a whole plain C-STORE-RQ command set and the
        association is free for it; else None."""
        if control != COMMAND_BIT | LAST_BIT:
            return None
        assoc = self._assoc
        dul = assoc.dul
        context = assoc._accepted_cx.get(context_id)
        if (
            context is None
            or not assoc.is_established
            or assoc._sent_release
            or assoc.dimse.message is not None
            or assoc.dimse.msg_queue.qsize()
            or assoc._serving.locked()
            or dul.to_provider_queue.qsize()
            or dul.event_queue.qsize()
            or 0 < assoc.requestor.maximum_length < MAX_RESPONSE_PDU
        ):
            return None
        command = decode_store_command(value)
        if command is None or uid_to_service_class(command.sop_class_uid) is not StorageServiceClass:
            return None
        if assoc.acceptor.accepted_common_extended:
            return None  # SOP Class Common Extended Negotiation may map the class elsewhere
        return _Message(command, context_id, str(context.transfer_syntax[0]))

    def _complete(self, message: _Message) -> bool:
        """Serve a received request and send its response; False when the association ends."""
        assoc = self._assoc
        if self._peer is None:
            self._peer = (ae_text(assoc.requestor.ae_title), ae_text(assoc.acceptor.ae_title),
                          str(assoc.requestor.address), association_key(assoc))
        calling, called, address, key = self._peer
        command = message.command
        serving: threading.Lock = assoc._serving
        if not serving.acquire(timeout=SERVE_WAIT_SECONDS):
            self._broken("the association stayed busy while a C-STORE request waited")
            return False
        with memoryview(self._buffer)[: self._size] as dataset:
            try:
                status = self._serve(StoreRequest(
                    dataset=dataset,
                    transfer_syntax=message.transfer_syntax,
                    sop_class_uid=command.sop_class_uid,
                    sop_instance_uid=command.sop_instance_uid,
                    calling_ae=calling,
                    called_ae=called,
                    association=key,
                    address=address,
                ))
            finally:
                serving.release()
        self._size = 0
        if len(self._buffer) > RETAINED_BUFFER_BYTES:
            self._buffer = bytearray()
        if not assoc.is_established:
            return False  # ended while served (aborted by the node): no response, as pynetdicom
        assoc.dul.socket.send(p_data_tf(message.context_id, COMMAND_BIT | LAST_BIT,
                                        encode_store_response(command, status)))
        return True

    def _broken(self, why: str) -> None:
        """The peer broke a message this path was receiving: abort the association."""
        self._message = None
        sock = self._assoc.dul.socket
        if isinstance(sock, GuardedSocket):
            sock.refused("malformed_message", f"{why}; association aborted")
        else:
            log.warning("%s; association aborted", why)
        self._assoc.dul.event_queue.put("Evt19")
