"""The socket of an accepted association, with the node's limits checked on every byte pynetdicom
reads: PDU lengths (PS3.8 9.3.1: a 4-byte length precedes every PDU), the size of each DIMSE
message's command set and data set as P-DATA-TF fragments arrive (PS3.8 9.3.5, E.2), and a read
timeout so a peer that stops in the middle of a PDU does not hold a thread.

A breach is found from the PDU or fragment header, before the bytes it announces are read or
allocated. The peer then gets an A-ABORT and the connection is closed; the read returns short, which
pynetdicom treats as a closed connection (its state machine ends the association as usual).

:class:`GuardedSocket` is a :class:`pynetdicom.transport.AssociationSocket`; the request handler
of the gated server (reactor.py) gives it to each association it creates, with the A-ASSOCIATE-RQ
the gate already read (gate.py).
"""

from __future__ import annotations

import logging
import queue
import socket
import ssl
import struct
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.fsm import ACTIONS, TRANSITION_TABLE, StateMachine
from pynetdicom.transport import AssociationSocket

from config.schema import LimitsConfig
from dicom_node.receive.refusals import Refusals

log = logging.getLogger(__name__)

#: PDU types (PS3.8 Table 9-11).
A_ASSOCIATE_RQ, P_DATA_TF, A_ABORT = 0x01, 0x04, 0x07
#: Largest PDU of a type other than P-DATA-TF and A-ASSOCIATE-RQ (release, abort: 4 bytes).
MAX_OTHER_PDU_BYTES = 4096
#: Largest command set of one DIMSE message (a few elements of group 0000, PS3.7 E.1).
MAX_COMMAND_BYTES = 64 * 1024
#: A-ABORT PDU, source "DICOM UL service-provider", reason "not specified" (PS3.8 9.3.8).
ABORT_PDU = struct.pack(">BBLBBBB", 0x07, 0, 4, 0, 0, 2, 0)
#: PDUs that answer an A-ASSOCIATE-RQ: A-ASSOCIATE-AC, -RJ, A-ABORT.
ANSWER_PDU_TYPES = frozenset({0x02, 0x03, 0x07})
#: PDUs after which the node holds no association on the connection: A-ASSOCIATE-RJ, A-ABORT.
ENDING_PDU_TYPES = frozenset({0x03, 0x07})
#: Events of the local service user (PS3.8 Table 9-10: the node's own requests and responses).
LOCAL_EVENTS = frozenset({"Evt1", "Evt7", "Evt8", "Evt9", "Evt11", "Evt14", "Evt15"})
#: PDU header: type, reserved, length of what follows (PS3.8 9.3.1).
PDU_HEADER = struct.Struct(">BBL")
#: Reads shorter than this (PDU and PDV headers, small command sets) take up to this many bytes
#: of what the network holds, so the next read usually needs no system call.
READ_AHEAD_BYTES = 64 * 1024
#: The most :meth:`GuardedSocket.read_ahead_now` takes at once (in the middle of a data set,
#: where the next PDU, often 128 KB, has usually arrived whole).
READ_AHEAD_NOW_BYTES = 256 * 1024
#: ``recv`` without waiting (0 where the platform has no such flag: then nothing is read ahead).
_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
#: Presentation data value item header: item length, context ID, message control header (PS3.8 9.3.5.1, E.2).
PDV_HEADER = struct.Struct(">LBB")
#: PDV message control header: command (bit 0, else data set), last fragment (bit 1) (PS3.8 E.2).
COMMAND_BIT, LAST_BIT = 0x01, 0x02


class LimitBreached(Exception):
    """The peer broke a limit; ``reason`` is the refusal key, the message the log text.
    ``in_body``: found inside a PDU whose bytes are already read (see GuardedSocket.recv)."""

    def __init__(self, reason: str, why: str, in_body: bool = False) -> None:
        super().__init__(why)
        self.reason = reason
        self.in_body = in_body


@dataclass(frozen=True)
class StreamLimits:
    """What one association's byte stream may hold: the node's maximum PDU and ``node.limits``."""

    max_pdu: int
    limits: LimitsConfig

    @property
    def largest_read(self) -> int:
        return max(self.max_pdu, self.limits.max_associate_rq_bytes) + 6


def _fill(head: bytearray, size: int, view: memoryview, pos: int) -> int:
    """Append to ``head`` from ``view[pos:]`` until it holds ``size`` bytes; the new position."""
    take = min(size - len(head), len(view) - pos)
    head += view[pos : pos + take]
    return pos + take


class PduStream:
    """Follows the PDU framing of everything read from one association and raises
    :class:`LimitBreached` as soon as a header announces more than the limits allow."""

    def __init__(self, limits: StreamLimits) -> None:
        self.limits = limits
        #: PDU type -> the most bytes it may announce (others: MAX_OTHER_PDU_BYTES).
        self._pdu_limits = {P_DATA_TF: limits.max_pdu, A_ASSOCIATE_RQ: limits.limits.max_associate_rq_bytes}
        self._head = bytearray()
        self._pdu_type = 0
        self._pdu_left = 0
        self._pdv_head = bytearray()
        self._pdv_left = 0
        self._pdv_control = 0
        self._command_bytes = 0
        self._dataset_bytes = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._pdu_left == 0:
                pos = _fill(self._head, 6, view, pos)
                if len(self._head) == 6:
                    pdu_type, _, length = PDU_HEADER.unpack(self._head)
                    self._head.clear()
                    self._check_pdu(pdu_type, length)
                    self._pdu_type, self._pdu_left = pdu_type, length
                continue
            take = min(self._pdu_left, end - pos)
            if self._pdu_type == P_DATA_TF:
                self._fragments(view[pos : pos + take])
            pos += take
            self._pdu_left -= take
            if self._pdu_left == 0 and self._pdu_type == P_DATA_TF and (self._pdv_left or self._pdv_head):
                raise LimitBreached("malformed_pdu", "a presentation data value runs past its P-DATA-TF PDU", True)

    def _check_pdu(self, pdu_type: int, length: int) -> None:
        if not A_ASSOCIATE_RQ <= pdu_type <= A_ABORT:
            # pynetdicom would not read its body and take the body for the next header.
            raise LimitBreached("malformed_pdu", f"unknown PDU type 0x{pdu_type:02x} (PS3.8 9.3.1)")
        limit = self._pdu_limits.get(pdu_type, MAX_OTHER_PDU_BYTES)
        if length > limit:
            raise LimitBreached("pdu_too_large", f"PDU type 0x{pdu_type:02x} of {length} bytes (limit {limit}: "
                                "node.max_pdu / node.limits.max_associate_rq_bytes)")

    def _fragments(self, view: memoryview) -> None:
        """Walk the presentation data value items of a P-DATA-TF body (PS3.8 9.3.5.1, E.2)."""
        pos, end = 0, len(view)
        while pos < end:
            if self._pdv_left == 0:
                pos = _fill(self._pdv_head, 6, view, pos)
                if len(self._pdv_head) == 6:
                    length, _, control = PDV_HEADER.unpack(self._pdv_head)
                    self._pdv_head.clear()
                    if length < 2:
                        raise LimitBreached("malformed_pdu", "a presentation data value item shorter than its header",
                                            True)
                    self._pdv_left, self._pdv_control = length - 2, control
                    self._count(0)
                continue
            take = min(self._pdv_left, end - pos)
            pos += take
            self._pdv_left -= take
            self._count(take)

    def _count(self, size: int) -> None:
        if self._pdv_control & COMMAND_BIT:
            self._command_bytes += size
            if self._command_bytes > MAX_COMMAND_BYTES:
                raise LimitBreached("command_too_large", f"a DIMSE command set over {MAX_COMMAND_BYTES} bytes", True)
        else:
            self._dataset_bytes += size
            if self._dataset_bytes > self.limits.limits.max_dataset_bytes:
                raise LimitBreached("dataset_too_large", f"a data set over {self.limits.limits.max_dataset_bytes} bytes "
                                    "(node.limits.max_dataset_bytes)", True)
        if self._pdv_left == 0 and self._pdv_control & LAST_BIT:  # last fragment of the command or data set
            if self._pdv_control & COMMAND_BIT:
                self._command_bytes = 0
            else:
                self._dataset_bytes = 0


class GuardedSocket(AssociationSocket):
    """An accepted association's socket: serves the A-ASSOCIATE-RQ the gate read, then reads
    from the network with a timeout, every byte checked by a :class:`PduStream`."""

    #: Bytes read from the network and not yet by pynetdicom: first the A-ASSOCIATE-RQ the gate
    #: read, later what a short read took ahead (:meth:`_read_into`).
    _ahead: bytes | memoryview
    _stream: PduStream
    _refusals: Refusals
    _address: str
    _dropped: bool
    _breach: LimitBreached | None
    _answered: bool

    @classmethod
    def replacing(
        cls, plain: AssociationSocket, prefetched: bytes, stream: PduStream, refusals: Refusals, address: str
    ) -> GuardedSocket:
        """Take over ``plain`` (the socket pynetdicom's request handler made, connection event
        already queued) without queueing that event twice."""
        guarded = cls.__new__(cls)
        guarded.__dict__.update(vars(plain))
        guarded._ahead = prefetched
        guarded._stream = stream
        guarded._refusals = refusals
        guarded._address = address
        guarded._dropped = False
        guarded._breach = None
        guarded._answered = False
        return guarded

    @property
    def ready(self) -> bool:
        """Data for pynetdicom to read: the request the gate read, then nothing more until the
        node has answered it (a requestor waits for the A-ASSOCIATE-AC, PS3.8 9.2 Sta5; reading
        on would race pynetdicom's own answer); after that, bytes read ahead or what the network
        holds."""
        if self._ahead:
            return True
        if not self._answered:
            return False
        return bool(AssociationSocket.ready.fget(self))  # type: ignore[attr-defined]

    @property
    def buffered(self) -> bool:
        """Whether bytes already read from the network wait here (read ahead, or decrypted by
        TLS): ``poll`` on the socket does not see them (reactor.py waits only when there are none)."""
        if not self._answered:
            return False  # nothing is read before the A-ASSOCIATE-RQ is answered (see ready)
        sock = self.socket
        return bool(self._ahead) or (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0)

    @property
    def dataset_room(self) -> int:
        """The most bytes of one data set a reader may have to hold: ``max_dataset_bytes`` (a
        larger one is refused) plus the read that crosses it."""
        limits = self._stream.limits
        return limits.limits.max_dataset_bytes + limits.largest_read

    def read_ahead_now(self) -> bool:
        """Read what the network already holds (up to :data:`READ_AHEAD_NOW_BYTES`) without waiting,
        for the next read to take: True when there is something to read now (bytes, or the
        connection closed or failed, which that read then finds), False when the network holds
        nothing yet. Plain TCP in blocking mode only (the kernel's timeouts, gate.py
        ``set_read_timeout``), after the answer to the A-ASSOCIATE-RQ, with nothing read ahead
        already. The bytes are checked when they are read, as any read ahead.

        In the middle of a data set the next PDU has nearly always arrived: one ``recv`` then
        replaces a ``poll`` and the ``recv`` after it (reactor.py)."""
        if self._ahead:
            return True
        sock = self.socket
        if (not self._answered or self._dropped or sock is None or isinstance(sock, ssl.SSLSocket)
                or sock.gettimeout() is not None  # Python's timeout would wait in poll first
                or not _DONTWAIT):
            return False
        try:
            data = sock.recv(READ_AHEAD_NOW_BYTES, _DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return True  # the read finds the error again
        self._ahead = memoryview(data)
        return True

    @property
    def reading_paused(self) -> bool:
        """Whether :attr:`ready` is False whatever the network holds (the A-ASSOCIATE-RQ is
        being answered): the DUL's thread then waits without watching the socket (reactor.py)."""
        return not self._ahead and not self._answered

    def send(self, bytestream: bytes) -> None:
        """Send a PDU. After an A-ABORT or A-ASSOCIATE-RJ the association is over: the
        connection is shut down at once rather than held (PS3.8 Sta13) until the peer closes it
        or the ARTIM timer runs out."""
        pdu_type = bytestream[0] if bytestream else 0
        if not self._answered and pdu_type in ANSWER_PDU_TYPES:
            self._answered = True
        super().send(bytestream)
        if pdu_type in ENDING_PDU_TYPES and self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` (pynetdicom asks for a PDU header, then its body): fewer only when
        the connection closed or the peer was dropped (:meth:`recv_into`)."""
        out = bytearray(nr_bytes)
        got = self.recv_into(memoryview(out))
        del out[got:]
        return out

    def recv_into(self, view: memoryview) -> int:
        """Fill ``view`` from the network; the bytes read, fewer only when the connection closed
        or the peer was dropped. A breach found in a header drops the peer before the body is
        read; one found in a body already read (a fragment over the data set limit) returns that
        read, at most ``max_pdu`` bytes, and drops the peer at the next read: the DIMSE message
        never completes, or, if that read completed it, the C-STORE handler refuses the
        oversized data set."""
        if self._dropped:
            return 0
        if self._breach is not None:
            self._drop(self._breach.reason, str(self._breach))
            return 0
        got = 0
        try:
            if self._ahead:  # the A-ASSOCIATE-RQ the gate read, or a read ahead
                got = min(len(self._ahead), len(view))
                view[:got] = self._ahead[:got]
                self._ahead = self._ahead[got:]
            if got < len(view):
                got += self._read_into(view[got:])
            self._stream.feed(view[:got])
        except LimitBreached as exc:
            if exc.in_body:
                self._breach = exc
                return got
            self._drop(exc.reason, str(exc))
            return 0
        except (TimeoutError, BlockingIOError):  # Python's timeout, or the kernel's (gate.py set_read_timeout)
            self._drop("read_timeout", f"no data for {self._stream.limits.limits.read_timeout_seconds:g} s "
                       "in the middle of a PDU (node.limits.read_timeout_seconds)")
            return 0
        except OSError:
            return 0  # connection broken: pynetdicom sees it closed
        return got

    def _read_into(self, view: memoryview) -> int:
        size = len(view)
        limit = self._stream.limits.largest_read
        if size > limit:
            raise LimitBreached("pdu_too_large", f"a read of {size} bytes (limit {limit})")
        sock = self.socket
        assert sock is not None
        got = 0
        if size < READ_AHEAD_BYTES:
            # A header: read what the network already holds, at most READ_AHEAD_BYTES, and keep
            # the rest for the next read (checked by the stream only when it is read).
            while got < size:
                data = sock.recv(READ_AHEAD_BYTES)
                if not data:
                    return got
                take = min(len(data), size - got)
                view[got : got + take] = data[:take]
                got += take
                self._ahead = memoryview(data)[take:]
            return got
        while got < size:
            n = sock.recv_into(view[got:], size - got)
            if n == 0:
                break
            got += n
        return got

    def refused(self, reason: str, why: str) -> None:
        """Count and log one refusal of this peer (address and AE title)."""
        self._refusals.refuse(reason, self._address, self.assoc.requestor.ae_title, why)

    def _drop(self, reason: str, why: str) -> bytearray:
        self._dropped = True
        self.refused(reason, why)
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(ABORT_PDU)
            except OSError:
                pass
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        return bytearray()


class TolerantStateMachine(StateMachine):
    """pynetdicom's upper layer state machine (PS3.8 9.2), made to survive what a peer sends.

    pynetdicom raises in its DUL thread, which then dies and leaves the association (and its
    slot) held for ever, in two cases a hostile or broken peer can cause:

    * a primitive of the node itself (a response being sent) arrives after the peer broke the
      protocol and the connection is closing (Sta13) or closed (Sta1), a case PS3.8 leaves
      undefined: here the primitive is dropped and the association ends with its connection;
    * the action for a peer's PDU fails on its content (a DIMSE command set without a Command
      Field, say): here that PDU is handled as an unrecognised one (Evt19: A-ABORT, PS3.8 AA-8),
      counted and logged once as a refusal.
    """

    def do_action(self, event: str) -> None:
        key = (event, self.current_state)
        if event in LOCAL_EVENTS:
            if key in TRANSITION_TABLE:
                super().do_action(event)
                return
            try:
                self.dul.to_provider_queue.get(False)
            except queue.Empty:
                pass
            log.debug("dropped the node's %s in %s: the peer's connection is closing", event, self.current_state)
            return
        if key not in TRANSITION_TABLE:
            super().do_action(event)  # pynetdicom's answer to an undefined transition
            return
        name = TRANSITION_TABLE[key]
        try:
            next_state = ACTIONS[name][1](self.dul)
        except Exception as exc:  # noqa: BLE001 - the peer's data broke the action: an invalid PDU
            sock = self.dul.socket
            if isinstance(sock, GuardedSocket):
                sock.refused("malformed_message", f"{type(exc).__name__} handling its PDU; association aborted")
            self.dul.event_queue.put("Evt19")
            return
        evt.trigger(self.dul.assoc, evt.EVT_FSM_TRANSITION, {
            "action": name, "current_state": self.current_state, "fsm_event": event, "next_state": next_state,
        })
        self.transition(next_state)
