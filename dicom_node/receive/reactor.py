"""The node's acceptor associations, with threads that wait for work instead of polling for it.

pynetdicom runs two threads per association, and both poll: the upper layer (DUL) thread sleeps
1 ms whenever a turn of its loop found nothing to do, and the association thread sleeps 1 ms at
the top of every turn. So each C-STORE waits about a millisecond to be noticed and another for
its response to be sent, and every open association takes the interpreter's lock a thousand times
a second per thread, which slows the others. Here:

* :class:`ReactorDUL` waits in ``poll`` on the association's socket and a wake-up descriptor
  (waker.py), with a timeout no later than the ARTIM timer's expiry (PS3.8 9.1.5). Every other
  thread that gives it work (a primitive to send, an event for its state machine, the order to
  stop) writes to the wake-up descriptor. Its loop (:meth:`ReactorDUL.run_reactor`) takes
  pynetdicom's steps in pynetdicom's order, waiting where pynetdicom sleeps and without
  pynetdicom's zero-length sleep after each wait (a system call and a turn of the interpreter
  lock per PDU). In data transfer a P-DATA-TF PDU may be served without the state machine:
  C-STORE requests straight from their bytes (direct_store.py).
* :class:`ReactorAssociation` waits on an event that the DUL thread sets when it hands the
  association something (a DIMSE message, an A-RELEASE or A-ABORT indication), when it ends, and
  that :meth:`~ReactorAssociation.kill` sets; with a timeout at the network idle timer's expiry
  (``node.limits.idle_timeout_seconds``). A C-STORE or C-ECHO does not even go to it: the DUL
  thread serves it as it completes when this thread is idle (:meth:`~ReactorAssociation.serve_inline`).

Both waits are also bounded by :data:`MAX_WAIT_SECONDS`, so a wake-up this module failed to
foresee costs that much latency, not a hung association.

:class:`Handoff` is the gated server's request handler (gate.py): it builds these associations,
each with a :class:`~dicom_node.receive.guard.GuardedSocket` serving the A-ASSOCIATE-RQ the gate
already read, and the DUL taking the PDU the gate already decoded from it.
"""

from __future__ import annotations

import logging
import queue
import select
import struct
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from pynetdicom import evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.transport import AssociationSocket, RequestHandler

from dicom_node.receive.direct_store import ConnectionClosed, DirectStore
from dicom_node.receive.guard import (
    A_ABORT,
    A_ASSOCIATE_RQ,
    ABORT_PDU,
    P_DATA_TF,
    PDU_HEADER,
    GuardedSocket,
    PduStream,
    TolerantStateMachine,
)
from dicom_node.receive.waker import Waker

if TYPE_CHECKING:  # gate.py imports this module
    from dicom_node.receive.gate import CheckedRQ

log = logging.getLogger(__name__)

#: The longest either thread waits without checking its state anyway (seconds).
MAX_WAIT_SECONDS = 0.5
#: pynetdicom's pause between turns when the DUL thread is asked to stop from another thread.
_STOP_POLL_SECONDS = 0.001

_T = TypeVar("_T")


class WakingQueue(queue.Queue[_T]):
    """A queue that calls ``wake`` after every ``put``, so its reader can wait elsewhere."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: _T, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class ReactorDUL(DULServiceProvider):
    """pynetdicom's upper layer service provider whose thread waits in ``poll`` when idle.

    ``notify_user``: called whenever the association thread may have something to do (a
    primitive or message for it, the end of this thread)."""

    def __init__(self, assoc: Association, notify_user: Callable[[], None]) -> None:
        # Before pynetdicom's constructor, which sets the attributes below through their setters.
        self._waker = Waker()
        self._stop_requested = False
        #: The last wait found the socket readable: the next turn reads without asking again.
        self._readable = False
        #: The A-ASSOCIATE-RQ the gate decoded, until pynetdicom reads its bytes.
        self.checked_rq: CheckedRQ | None = None
        #: Serves C-STORE requests from their P-DATA-TF PDUs (direct_store.py); None: pynetdicom does.
        self.direct_store: DirectStore | None = None
        self._notify_user = notify_user
        self._poller = select.poll()
        self._poller.register(self._waker.fileno(), select.POLLIN)
        super().__init__(assoc)
        self.event_queue = WakingQueue(self._wake_from_elsewhere)
        self.to_provider_queue = WakingQueue(self._wake_from_elsewhere)
        self.to_user_queue = WakingQueue(notify_user)

    def _wake_from_elsewhere(self) -> None:
        """Wake this thread, unless this is it (it looks at its queues before it waits again)."""
        if threading.get_ident() != self.ident:
            self._waker.wake()

    @property
    def _kill_thread(self) -> bool:
        """pynetdicom's order to stop the loop (``kill_dul``, ``stop_dul``): setting it wakes
        the thread so it sees it."""
        return self._stop_requested

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self._stop_requested = value
        if value:
            self._wake_from_elsewhere()

    @property
    def _run_loop_delay(self) -> float:
        """pynetdicom's pause between turns of its loop: this thread's loop has none (it waits,
        :meth:`_wait_for_work`); pynetdicom's ``stop_dul``, waiting for this thread to end from
        another, pauses this long between its checks."""
        return _STOP_POLL_SECONDS

    @_run_loop_delay.setter
    def _run_loop_delay(self, value: float) -> None:
        pass  # pynetdicom's constructor sets its polling delay: there is none here

    def _wait_for_work(self) -> None:
        """Return when the loop may have something to do: an event or a primitive queued, the
        order to stop, data from the peer or the connection closed, or the ARTIM timer expired.

        The loop waits after a turn that queued no event: one that looked at the socket and
        found nothing, or one whose PDU the direct store served. Bytes this thread already read
        from the network (the guarded socket's read-ahead, what TLS decrypted: ``buffered``)
        end the wait before it starts; ``poll`` on the socket sees the rest. In the middle of a
        data set the direct store is receiving, what has arrived is read without waiting first
        (``read_ahead_now``): the next PDU is nearly always there, and one ``recv`` replaces a
        ``poll`` and a ``recv`` (five polls per 512 KB instance in 128 KB PDUs became one)."""
        if self._stop_requested or self.event_queue.qsize() or self.to_provider_queue.qsize():
            return
        sock = self.socket
        if getattr(sock, "buffered", False):
            self._readable = True  # bytes read ahead or decrypted, which poll cannot see
            return
        direct = self.direct_store
        if direct is not None and direct.receiving and isinstance(sock, GuardedSocket) and sock.read_ahead_now():
            self._readable = True  # the rest of a data set: read without asking poll first
            return
        artim = self.artim_timer
        if artim.expired:
            return
        raw = sock.socket if sock is not None and not getattr(sock, "reading_paused", False) else None
        fd = raw.fileno() if raw is not None else -1
        timeout = min(MAX_WAIT_SECONDS, max(0.0, artim.remaining)) if artim.timeout is not None else MAX_WAIT_SECONDS
        if fd >= 0:
            self._poller.register(fd, select.POLLIN)
        try:
            woken = self._poller.poll(timeout * 1000 + 1)
        finally:
            if fd >= 0:
                self._poller.unregister(fd)
        waker = self._waker.fileno()
        for ready_fd, _ in woken:
            if ready_fd == waker:
                # Whatever a wake-up announced was queued before it: the loop's next turn sees it.
                self._waker.drain()
            else:
                self._readable = True

    def _is_transport_event(self) -> bool:
        """pynetdicom's check of the socket, without asking the socket again (``ready``: one
        ``select`` per turn) when this thread's wait just found it readable (or closed)."""
        if self._readable and self.state_machine.current_state != "Sta13":
            self._readable = False
            self._read_pdu_data()
            return True
        self._readable = False
        return bool(super()._is_transport_event())

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """pynetdicom's decode of a PDU read, except for the A-ASSOCIATE-RQ the gate decoded
        (gate.py ``CheckedRQ``): that PDU is given as it is, with the same events, and its
        conversion to a primitive (pynetdicom's AE-6 action) returns the one the gate made."""
        checked, self.checked_rq = self.checked_rq, None
        if checked is None or bytestream != checked.encoded:
            return super()._decode_pdu(bytestream)
        pdu, primitive = checked.pdu, checked.primitive
        pdu.to_primitive = lambda: primitive  # type: ignore[method-assign]
        evt.trigger(self.assoc, evt.EVT_DATA_RECV, {"data": checked.encoded})
        evt.trigger(self.assoc, evt.EVT_PDU_RECV, {"pdu": pdu})
        return pdu, "Evt6"

    def _abort_now(self) -> None:
        """Send an A-ABORT (source: service provider, PS3.8 9.3.8) bypassing the state machine,
        whose state an exception may have left broken, and end the association's threads."""
        sock = self.socket
        if sock is not None:
            sock.send(ABORT_PDU)
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self.assoc._kill = True
        self._stop_requested = True

    def _read_pdu_data(self) -> None:
        """Read one PDU and queue its event for the state machine: pynetdicom's read (the same
        checks and events, in its order), except that in data transfer (PS3.8 Sta6) a P-DATA-TF
        PDU is first offered to :attr:`direct_store`; what it serves never reaches the state
        machine, and PDV items it leaves go on as a P-DATA-TF PDU of their own."""
        sock = self.socket
        assert sock is not None
        head = sock.recv(PDU_HEADER.size)
        try:
            pdu_type, _, length = PDU_HEADER.unpack(head)
        except struct.error:
            self.event_queue.put("Evt17")  # connection closed
            return
        if not A_ASSOCIATE_RQ <= pdu_type <= A_ABORT:
            log.error("unknown PDU type 0x%02x received", pdu_type)
            self.event_queue.put("Evt19")  # unrecognised PDU
            return
        direct = self.direct_store
        try:
            if (pdu_type == P_DATA_TF and direct is not None and isinstance(sock, GuardedSocket)
                    and self.state_machine.current_state == "Sta6"):
                left = direct.receive(sock, length)
                if left is None:
                    return
                head, body = bytearray(PDU_HEADER.pack(P_DATA_TF, 0, len(left))), bytearray(left)
            else:
                body = sock.recv(length)
                if len(body) != length:
                    raise ConnectionClosed
        except (OSError, TimeoutError, ConnectionClosed):
            self.event_queue.put("Evt17")  # connection closed
            return
        try:
            pdu, event = self._decode_pdu(bytearray(head) + body)
        except Exception:  # noqa: BLE001 - the peer's bytes: an invalid PDU (pynetdicom's answer)
            log.error("unable to decode a received PDU")
            self.event_queue.put("Evt19")
            return
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    def run_reactor(self) -> None:
        """pynetdicom's loop (``DULServiceProvider.run_reactor``), step for step: the ARTIM
        timer's event first, then a primitive of the node to send or else a PDU from the peer
        (which restarts the idle timer), then one event for the state machine; when there was
        no event, wait (:meth:`_wait_for_work`) instead of pynetdicom's sleep. An exception
        aborts the association as pynetdicom's does."""
        try:
            self._idle_timer.start()
            self.assoc._dul_ready.set()  # the association's thread waits for this
            events = self.event_queue
            while not self._stop_requested:
                if self.artim_timer.expired:
                    events.put("Evt18")
                try:
                    if not self._process_recv_primitive() and self._is_transport_event():
                        self._idle_timer.restart()
                except Exception:  # pynetdicom's answer: abort, end both threads
                    log.exception("error in the association's upper layer thread: association aborted")
                    self._abort_now()
                    return
                try:
                    event = events.get_nowait()
                except queue.Empty:
                    self._wait_for_work()
                    continue
                self.state_machine.do_action(event)
        finally:
            self._waker.close()
            self._notify_user()  # the association thread checks whether this thread is alive


class ReactorAssociation(Association):
    """pynetdicom's association (acceptor) whose thread waits for its DUL instead of polling."""

    dul: ReactorDUL

    def __init__(self, ae: Any, mode: str) -> None:
        self._work = threading.Event()
        super().__init__(ae, mode)
        self.dul = ReactorDUL(self, self._work.set)
        #: Held while a DIMSE request is served, by this thread or inline by the DUL's.
        self._serving = threading.Lock()
        self.dimse.msg_queue = _Messages(self)
        # pynetdicom gave its own DUL the AE's timeouts through these setters: the new one too.
        self.acse_timeout = self.acse_timeout
        self.network_timeout = self.network_timeout

    def serve_inline(self, context_id: int, msg: Any) -> bool:
        """Serve a C-STORE or C-ECHO request on the DUL's thread, as it completes, when this
        thread is idle and nothing is queued before it; False: queue it for this thread.

        Each instance then costs no hand-over to this thread and back (two thread wake-ups,
        each a wait for a core on a busy machine). Only these two: their handlers answer
        without waiting for the peer (a C-GET handler waits for its sub-operations' responses,
        which the DUL's thread must read), only on an accepted presentation context
        (pynetdicom aborts, blocking until the DUL's thread ends, on any other), and only once
        this thread has marked the association established: a peer may send its first request
        the moment it reads the A-ASSOCIATE-AC, before this thread has handled the accept, and
        pynetdicom's service classes send no response on an association not yet established
        (the request was served, stored even, and the peer waited for the idle timeout)."""
        if (not isinstance(msg, (C_STORE, C_ECHO)) or context_id not in self._accepted_cx
                or not self.is_established):
            return False
        if threading.get_ident() != self.dul.ident or not self._serving.acquire(blocking=False):
            return False
        try:
            if self.dimse.msg_queue.qsize():
                return False  # an earlier message waits for this thread: keep the order
            self._serve_request(msg, context_id)
            return True
        finally:
            self._serving.release()

    def kill(self) -> None:
        self._kill = True
        self._work.set()
        super().kill()

    def _run_reactor(self) -> None:
        """The acceptor's loop (pynetdicom's checks, in its order): serve a DIMSE message, answer
        an A-RELEASE request, end on an abort, on the DUL's end or on the network idle timeout;
        between turns, wait for the DUL to hand over something."""
        self._is_paused = False
        while not self._kill:
            self._work.clear()  # work handed over from here on is seen below, or ends the wait
            # Another thread using this association for its own DIMSE messages pauses the loop.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            with self._serving:
                context_id, msg = self.dimse.get_msg(block=False)
                if msg is not None and context_id is not None:
                    self._serve_request(msg, context_id)
                    continue
            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("association released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return
            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so EVT_ACSE_RECV fires for the abort
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return
            if not self.dul.is_alive():
                self.kill()
                return
            # Not while the DUL's thread serves a request (pynetdicom's loop never looked then).
            if self.dul.idle_timer_expired() and self._serving.acquire(blocking=False):
                try:
                    if self.dul.idle_timer_expired():
                        log.info("association idle past the network timeout: aborted")
                        self.abort()
                        self.kill()
                        return
                finally:
                    self._serving.release()
            self._work.wait(min(MAX_WAIT_SECONDS, max(0.0, self.dul._idle_timer.remaining)) + 0.001)


class _Messages(WakingQueue[Any]):
    """The association's queue of complete DIMSE messages (pynetdicom's ``dimse.msg_queue``):
    the DUL's thread puts each message; a C-STORE or C-ECHO is served there and then when it
    can be (:meth:`ReactorAssociation.serve_inline`), others wake the association's thread."""

    def __init__(self, assoc: ReactorAssociation) -> None:
        super().__init__(assoc._work.set)
        self._assoc = assoc

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if not self._assoc.serve_inline(*item):
            super().put(item, block, timeout)


class Handoff(RequestHandler):
    """Request handler of the gated server: ``request`` is ``(socket, the A-ASSOCIATE-RQ the gate
    read and decoded, ledger ticket)``. The server (gate.py) provides ``stream_limits``, ``refusals``,
    ``track`` (the ledger's ``ticket`` the gate claimed for this association, ledger.py) and
    ``direct_store`` (the store service C-STORE requests are served with from their PDUs,
    direct_store.py; None: through pynetdicom)."""

    def handle(self) -> None:
        raw, checked, ticket = self.request
        self.request = raw
        server: Any = self.server
        assoc = self._create_association()
        assoc.dul.checked_rq = checked
        if server.direct_store is not None:
            assoc.dul.direct_store = DirectStore(assoc, server.direct_store)
        plain = AssociationSocket(assoc, client_socket=raw)
        guarded = GuardedSocket.replacing(
            plain, checked.encoded, PduStream(server.stream_limits), server.refusals, str(self.client_address[0])
        )
        assoc.set_socket(guarded)
        assoc.dul.state_machine = TolerantStateMachine(assoc.dul)
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        server.track(assoc, ticket)
        assoc.start()

    def _create_association(self) -> ReactorAssociation:
        """The acceptor association, set up as pynetdicom's handler does but (1) of the node's
        class and (2) sharing the server's presentation contexts instead of a deep copy per
        association (acceptor negotiation only reads them, PS3.8 9.3.3.2); no socket yet."""
        server: Any = self.server
        ae = self.ae
        assoc = ReactorAssociation(ae, MODE_ACCEPTOR)
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        acceptor = assoc.acceptor
        acceptor.maximum_length = ae.maximum_pdu_size
        acceptor.ae_title = server.ae_title
        acceptor.address_info = self.local
        acceptor.implementation_class_uid = ae.implementation_class_uid
        acceptor.implementation_version_name = ae.implementation_version_name
        acceptor.supported_contexts = server.contexts
        assoc.requestor.address_info = self.remote
        for event, bound in server._handlers.items():
            if event.is_intervention:
                if bound:
                    assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in bound:
                    assoc.bind(event, handler, args)
        return assoc
