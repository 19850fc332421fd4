"""The receive gate: every accepted TCP connection waits here, costing one file descriptor and no
thread, until it has completed its TLS handshake and delivered a whole A-ASSOCIATE-RQ (PS3.8
9.3.2) within ``node.limits.associate_timeout_seconds``; only then does pynetdicom get it.

So a port scanner, a crashed modality's half-open connection or a peer that sends three bytes and
stalls never holds an association slot or a thread, and the TLS handshake runs here too, off the
accept thread, where a silent client delays nobody. One thread runs the gate with a selector.

Checks, in order, each a refusal counted and logged once (refusals.py):

* ``max_pending_connections``: when full, the oldest pending connection is dropped;
* the TLS handshake (when ``node.tls.enabled``), and the deadline for the whole A-ASSOCIATE-RQ;
* the first PDU must be an A-ASSOCIATE-RQ no longer than ``max_associate_rq_bytes``, judged from
  its 6-byte header before the rest is read, and one pynetdicom can decode (else A-ABORT: a
  request pynetdicom aborts itself would hold an association slot for its ACSE timeout);
* the peer address against ``node.allowed_peer_addresses``: an A-ASSOCIATE-RJ (permanent), so a
  misconfigured modality sees why; pynetdicom never sees the request;
* ``max_associations`` in total and ``max_associations_per_peer``: answered with an
  A-ASSOCIATE-RJ (transient, "local limit exceeded", PS3.8 9.3.4). The count is the ledger's
  (ledger.py): this process's associations, or every receiver process's when several share the
  listening socket (processes.py).

:class:`GatedServer` is pynetdicom's :class:`~pynetdicom.transport.AssociationServer` with the
gate in front (``AE.make_server(server_class=GatedServer)``); each admitted connection becomes an
association with a :class:`~dicom_node.receive.guard.GuardedSocket`.
"""

from __future__ import annotations

import logging
import select
import selectors
import socket
import ssl
import struct
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from socketserver import TCPServer
from typing import Any

from pynetdicom.association import Association
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import AssociationServer

from config.schema import NodeConfig
from dicom_node import status
from dicom_node.receive.balance import LoadBoard
from dicom_node.receive.guard import ABORT_PDU, StreamLimits
from dicom_node.receive.handlers import StoreRequest
from dicom_node.receive.ledger import Ledger, LocalLedger, OverLimit
from dicom_node.receive.reactor import Handoff
from dicom_node.receive.refusals import Refusals
from dicom_node.receive.waker import Waker
from dicom_node.tls import handshake_failure

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RQ layout (PS3.8 Table 9-11): header, version, reserved, called AE, calling AE.
RQ_HEADER = 6
RQ_FIXED = 74
CALLING_AE = slice(26, 42)
#: How often the gate wakes without events (deadline checks).
TICK_SECONDS = 0.25
#: Backlog of the listening socket (connections the kernel queues before accept).
LISTEN_BACKLOG = 256


@dataclass
class _Pending:
    sock: socket.socket
    address: tuple[Any, ...]
    deadline: float
    handshaking: bool
    buffer: bytearray = field(default_factory=bytearray)
    #: Bytes still needed: the PDU header first, then the announced body.
    need: int = RQ_HEADER

    @property
    def host(self) -> str:
        return str(self.address[0])

    @property
    def calling_ae(self) -> bytes:
        return bytes(self.buffer[CALLING_AE]) if len(self.buffer) >= CALLING_AE.stop else b""


#: A-ASSOCIATE-RJ PDU for a full node (PS3.8 9.3.4): transient, from the service provider
#: (presentation related function), local limit exceeded.
LOCAL_LIMIT_RJ = struct.pack(
    ">BBLBBBB", 0x03, 0, 4, 0, status.RejectResult.REJECTED_TRANSIENT,
    status.RejectSource.SERVICE_PROVIDER_PRESENTATION, status.PresentationRejectReason.LOCAL_LIMIT_EXCEEDED,
)
#: A-ASSOCIATE-RJ for an address not on the allowlist: permanent, service user, no reason given.
ADDRESS_RJ = struct.pack(
    ">BBLBBBB", 0x03, 0, 4, 0, status.RejectResult.REJECTED_PERMANENT, status.RejectSource.SERVICE_USER,
    status.RejectReason.NO_REASON_GIVEN,
)


class Gate:
    """The selector loop that holds pending connections (see the module docstring)."""

    def __init__(self, server: GatedServer, node: NodeConfig, refusals: Refusals,
                 tls: ssl.SSLContext | None, ledger: Ledger) -> None:
        self.server = server
        self.limits = node.limits
        self.allowed_addresses = frozenset(node.allowed_peer_addresses)
        self.refusals = refusals
        self.tls = tls
        self.ledger = ledger
        self._selector = selectors.DefaultSelector()
        self._pending: dict[int, _Pending] = {}
        self._inbox: deque[tuple[socket.socket, tuple[Any, ...]]] = deque()
        #: Connections whose whole A-ASSOCIATE-RQ is being checked (no longer pending, no ticket yet).
        self._completing = 0
        self._decoded = DecodedRequests()
        self._waker = Waker()
        self._selector.register(self._waker, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mmed-receive-gate", daemon=True)
        self._thread.start()

    # -- from the accept thread --------------------------------------------------------------

    def admit(self, sock: socket.socket, address: tuple[Any, ...]) -> None:
        with self._lock:
            self._inbox.append((sock, address))
        self._waker.wake()

    def stop(self) -> None:
        self._stop.set()
        self._waker.wake()
        self._thread.join(5)
        for pending in list(self._pending.values()):
            _close(pending.sock)
        self._pending.clear()
        self._selector.close()
        self._waker.close()

    def track(self, assoc: Association, ticket: int) -> None:
        self.ledger.bind(ticket, assoc)

    def load(self) -> int:
        """Connections this gate holds: arriving, pending, being checked (decoding a request
        with a hundred presentation contexts takes milliseconds: a receiver that did not count
        it looked idle and took the next connection too), or open associations."""
        return len(self._inbox) + len(self._pending) + self._completing + self.ledger.held()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                events = self._selector.select(TICK_SECONDS)
            except OSError:
                return
            for key, _ in events:
                if key.data is None:
                    self._waker.drain()
                    continue
                pending = key.data
                try:
                    self._progress(pending)
                except Exception:  # one connection's bug must not stop the gate
                    log.exception("receive gate: connection from %s failed", pending.host)
                    self._forget(pending)
            try:
                self._take_inbox()
                self._expire()
                self.ledger.sweep()
            except Exception:  # a bug here must not stop the node accepting
                log.exception("receive gate: housekeeping failed")

    def _take_inbox(self) -> None:
        with self._lock:
            arrived = list(self._inbox)
            self._inbox.clear()
        for sock, address in arrived:
            while len(self._pending) >= self.limits.max_pending_connections:
                oldest = next(iter(self._pending.values()))
                self._refuse(oldest, "pending_full", f"{self.limits.max_pending_connections} connections waiting "
                             "for their A-ASSOCIATE-RQ (node.limits.max_pending_connections); the oldest dropped")
            try:
                sock.setblocking(False)
                if self.tls is not None:
                    sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            except (OSError, ssl.SSLError):
                _close(sock)
                continue
            pending = _Pending(sock, address, time.monotonic() + self.limits.associate_timeout_seconds,
                               handshaking=self.tls is not None)
            self._pending[sock.fileno()] = pending
            self._selector.register(sock, selectors.EVENT_READ, pending)

    def _expire(self) -> None:
        now = time.monotonic()
        for pending in [p for p in self._pending.values() if p.deadline <= now]:
            what = "TLS handshake" if pending.handshaking else f"A-ASSOCIATE-RQ ({len(pending.buffer)} bytes received)"
            self._refuse(pending, "associate_timeout", f"no complete {what} within the A-ASSOCIATE-RQ deadline of "
                         f"{self.limits.associate_timeout_seconds:g} s (node.limits.associate_timeout_seconds)")

    def _progress(self, pending: _Pending) -> None:
        sock = pending.sock
        if pending.handshaking:
            assert isinstance(sock, ssl.SSLSocket)
            try:
                sock.do_handshake()
            except ssl.SSLWantReadError:
                self._selector.modify(sock, selectors.EVENT_READ, pending)
                return
            except ssl.SSLWantWriteError:
                self._selector.modify(sock, selectors.EVENT_WRITE, pending)
                return
            except (ssl.SSLError, OSError) as exc:
                self.refusals.refuse("tls_handshake", pending.host, "",
                                     f"TLS handshake failed: {handshake_failure(exc)}")
                self._forget(pending)
                return
            pending.handshaking = False
            self._selector.modify(sock, selectors.EVENT_READ, pending)
        while pending.need:
            try:
                data = sock.recv(pending.need)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except OSError:
                self._forget(pending)
                return
            if not data:
                log.debug("connection from %s closed before its A-ASSOCIATE-RQ", pending.host)
                self._forget(pending)
                return
            pending.buffer += data
            pending.need -= len(data)
            if len(pending.buffer) == RQ_HEADER:
                pdu_type, _, length = struct.unpack(">BBL", pending.buffer)
                if pdu_type != 0x01:
                    self._refuse(pending, "not_associate_rq",
                                 f"first PDU of type 0x{pdu_type:02x}, not an A-ASSOCIATE-RQ")
                    return
                if length > self.limits.max_associate_rq_bytes or length < RQ_FIXED - RQ_HEADER:
                    self._peek_titles(pending)
                    self._refuse(pending, "associate_rq_size",
                                 f"A-ASSOCIATE-RQ of {length} bytes (node.limits.max_associate_rq_bytes is "
                                 f"{self.limits.max_associate_rq_bytes}); dropped before reading it")
                    return
                pending.need = length
        self._complete(pending)

    def _peek_titles(self, pending: _Pending) -> None:
        """Read what already arrived of the fixed fields, for the AE title in the log line."""
        try:
            pending.buffer += pending.sock.recv(RQ_FIXED - RQ_HEADER)
        except (OSError, ssl.SSLError):
            pass

    def _complete(self, pending: _Pending) -> None:
        """A whole A-ASSOCIATE-RQ: check it decodes, check the association limits, then hand over
        to pynetdicom."""
        self._completing += 1
        try:
            self._unregister(pending)
            self._check_and_hand_over(pending)
        finally:
            self._completing -= 1

    def _check_and_hand_over(self, pending: _Pending) -> None:
        sock, host = pending.sock, pending.host
        checked = self._decoded.check(bytes(pending.buffer))
        if isinstance(checked, str):
            # pynetdicom would abort it, but hold the association until its ACSE timeout.
            self.refusals.refuse("malformed_associate_rq", host, pending.calling_ae,
                                 f"A-ABORT: malformed A-ASSOCIATE-RQ ({checked})")
            self._answer_and_close(sock, ABORT_PDU)
            return
        if self.allowed_addresses and host not in self.allowed_addresses:
            self.refusals.refuse("peer_address", host, pending.calling_ae,
                                 "A-ASSOCIATE-RJ: address not in node.allowed_peer_addresses")
            self._answer_and_close(sock, ADDRESS_RJ)
            return
        ticket = self.ledger.claim(host)
        if isinstance(ticket, OverLimit):
            self.refusals.refuse(ticket.reason, host, pending.calling_ae,
                                 f"A-ASSOCIATE-RJ (local limit exceeded): {ticket.why}")
            self._answer_and_close(sock, LOCAL_LIMIT_RJ)
            return
        try:
            set_read_timeout(sock, self.limits.read_timeout_seconds)
            self.server.finish_request((sock, checked, ticket), pending.address)  # type: ignore[arg-type]
        except Exception:
            log.exception("receive gate: cannot start the association from %s", host)
            self.ledger.cancel(ticket)
            _close(sock)

    def _answer_and_close(self, sock: socket.socket, pdu: bytes) -> None:
        try:
            sock.setblocking(True)
            sock.settimeout(1.0)
            sock.sendall(pdu)
        except OSError:
            pass
        _close(sock)

    def _refuse(self, pending: _Pending, reason: str, why: str) -> None:
        self.refusals.refuse(reason, pending.host, pending.calling_ae, why)
        self._forget(pending)

    def _unregister(self, pending: _Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        try:
            self._selector.unregister(pending.sock)
        except (KeyError, ValueError, OSError):
            pass

    def _forget(self, pending: _Pending) -> None:
        self._unregister(pending)
        _close(pending.sock)


@dataclass(frozen=True)
class CheckedRQ:
    """An A-ASSOCIATE-RQ the gate decoded and checked (:func:`check_rq`): its bytes, the PDU
    and its primitive. pynetdicom gets this PDU instead of decoding the same bytes again, and
    the primitive instead of converting it again (reactor.py): with the 100+ presentation
    contexts a sender such as dcmtk storescu proposes, each decode and each conversion costs
    milliseconds of the interpreter per association (every UID is validated)."""

    encoded: bytes
    pdu: A_ASSOCIATE_RQ
    primitive: A_ASSOCIATE


def check_rq(rq: bytes) -> CheckedRQ | str:
    """The A-ASSOCIATE-RQ decoded as pynetdicom decodes it, or why pynetdicom could not (the
    exception's type)."""
    try:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(rq)
        primitive = pdu.to_primitive()
        contexts = primitive.presentation_context_definition_list
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raises, the request is refused
        return type(exc).__name__
    # pynetdicom's negotiation assumes every proposed context names its syntaxes (PS3.8 9.3.2.2).
    if any(cx.context_id is None or cx.abstract_syntax is None or not cx.transfer_syntax for cx in contexts):
        return "a presentation context without its abstract or transfer syntax"
    return CheckedRQ(rq, pdu, primitive)


#: Decoded requests kept by :class:`DecodedRequests`: at most this many, of at most this many
#: encoded bytes together (decoded, a request takes about 18 times its encoded size).
DECODED_RQ_ENTRIES = 16
DECODED_RQ_BYTES = 256 * 1024


class DecodedRequests:
    """:func:`check_rq` with the last few requests it decoded kept, keyed by their exact bytes.

    A sender proposes the same presentation contexts on every association (a PACS, a modality,
    dcmtk storescu with its 128), so its A-ASSOCIATE-RQ repeats byte for byte as long as its AE
    titles do; decoding one of dcmtk's takes 3-6 ms of the interpreter, about half of what
    setting up an association costs the node. A repeated request shares the first one's
    :class:`CheckedRQ`: pynetdicom only reads the request's PDU and primitive while it negotiates
    (its results are new objects per association). A request that does not decode is never
    kept; nor is one over :data:`DECODED_RQ_BYTES`. Used by the gate's thread only."""

    def __init__(self, entries: int = DECODED_RQ_ENTRIES, total_bytes: int = DECODED_RQ_BYTES) -> None:
        self._entries = entries
        self._room = total_bytes
        self._held = 0
        self._kept: OrderedDict[bytes, CheckedRQ] = OrderedDict()

    def __len__(self) -> int:
        return len(self._kept)

    def check(self, rq: bytes) -> CheckedRQ | str:
        kept = self._kept.get(rq)
        if kept is not None:
            self._kept.move_to_end(rq)
            return kept
        checked = check_rq(rq)
        if isinstance(checked, CheckedRQ) and len(rq) <= self._room:
            self._kept[rq] = checked
            self._held += len(rq)
            while len(self._kept) > self._entries or self._held > self._room:
                self._held -= len(self._kept.popitem(last=False)[0])
        return checked


def set_read_timeout(sock: socket.socket, seconds: float) -> None:
    """Make reads and writes on an association's socket fail after ``seconds`` without progress.

    A plain TCP socket gets the timeouts from the kernel (SO_RCVTIMEO, SO_SNDTIMEO) and stays
    in blocking mode: each read is then one system call. Python's own timeout would poll before
    every read, and each system call is a pass of the interpreter lock that the other
    associations' threads wait on. A TLS socket keeps Python's timeout (its reads may need
    writes). A read that times out raises BlockingIOError (guard.py counts it as the read timeout)."""
    if isinstance(sock, ssl.SSLSocket):
        sock.setblocking(True)
        sock.settimeout(seconds)
        return
    sock.settimeout(None)
    whole = int(seconds)
    timeval = struct.pack("@ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class GatedServer(AssociationServer):
    """pynetdicom's association server with the gate in front (module docstring)."""

    request_queue_size = LISTEN_BACKLOG

    def __init__(self, *args: Any, node: NodeConfig, refusals: Refusals, tls: ssl.SSLContext | None,
                 listening: socket.socket | None = None, ledger: Ledger | None = None,
                 board: LoadBoard | None = None,
                 direct_store: Callable[[StoreRequest], int] | None = None, **kwargs: Any) -> None:
        """``listening``: a socket already bound and listening, shared with other receiver
        processes (processes.py), instead of binding ``node.host:node.port``; ``ledger``: the
        association count those processes share (default: this process's own); ``board``: their
        loads, to let the least busy accept first (balance.py);
        ``direct_store``: the store service C-STORE requests are served with straight from their
        PDUs (direct_store.py), or None (pynetdicom's EVT_C_STORE handler serves them)."""
        kwargs["request_handler"] = Handoff
        self._listening = listening
        self.direct_store = direct_store
        super().__init__(*args, **kwargs)
        self.stream_limits = StreamLimits(node.max_pdu, node.limits)
        self.refusals = refusals
        self.gate = Gate(self, node, refusals, tls, ledger or LocalLedger(node.limits))
        self.board = board
        if board is not None:
            board.publish(0)  # accepting from now on

    def server_bind(self) -> None:
        if self._listening is None:
            super().server_bind()
            return
        if self.socket is not None:
            self.socket.close()
        self.socket = self._listening
        # Non-blocking: another receiver process may take a connection this one was woken for.
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self._listening is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection. On a shared socket every receiver is woken for it and the first
        to accept takes it: a receiver holding more connections than the least busy other one
        lets that one go first (another may take it meanwhile: ``accept`` then fails with
        EAGAIN, which the accept loop ignores)."""
        if self.board is not None:
            self.board.wait_turn(self.gate.load, self._connection_waiting)
        return super().get_request()

    def _connection_waiting(self) -> bool:
        """Whether a connection is still queued on the listening socket (another receiver may
        have taken the one this one was woken for)."""
        if self.socket is None:
            return False
        poller = select.poll()
        poller.register(self.socket, select.POLLIN)
        return bool(poller.poll(0))

    def process_request(self, request: Any, client_address: Any) -> None:
        """Called by the accept loop for every connection: hand it to the gate, start nothing."""
        self.gate.admit(request, client_address)
        if self.board is not None:
            self.board.publish(self.gate.load())  # seen by the others before their next accept

    def track(self, assoc: Association, ticket: int) -> None:
        self.gate.track(assoc, ticket)

    def shutdown(self) -> None:
        """Stop accepting and close the gate (pynetdicom's own shutdown also unregisters the
        server from its AE, which never registered this one)."""
        TCPServer.shutdown(self)
        self.server_close()
        self.gate.stop()


def start_gated_server(
    ae: Any, node: NodeConfig, evt_handlers: list[Any], refusals: Refusals, tls: ssl.SSLContext | None,
    listening: socket.socket | None = None, ledger: Ledger | None = None, board: LoadBoard | None = None,
    direct_store: Callable[[StoreRequest], int] | None = None,
) -> GatedServer:
    """Make the gated server for ``ae`` on ``node.host:node.port`` (or on ``listening``) and run
    its accept loop in a daemon thread."""
    server = ae.make_server((node.host, node.port), evt_handlers=evt_handlers, server_class=GatedServer,
                            node=node, refusals=refusals, tls=tls, listening=listening, ledger=ledger,
                            board=board, direct_store=direct_store)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="mmed-receive-accept", daemon=True)
    thread.start()
    return server
