"""Several receiver processes on one listening socket (``node.receivers`` above 1).

One Python process receives at most one core's worth of C-STOREs (the interpreter's lock;
pynetdicom storing nothing is no faster, bench/RESULTS.md). With ``node.receivers: N`` the
node binds the listening socket itself and starts N receiver processes (exec'd interpreters,
never a fork of a process that may hold torch), each given a copy of that socket: each runs the
whole receive side of one process (the gate and guard, pynetdicom, the C-STORE handlers, the
Q/R service the application adds) against the same spool. The kernel queues connections on the
one socket and wakes every receiver; the least busy accepts first (one holding more connections
than another waits before ``accept`` until that one took it, balance.py), a connection waiting
in the queue survives the death of a receiver, and the port stays bound while one is restarted.
(One socket shared, rather than one socket per receiver bound with SO_REUSEPORT: there the
kernel picks the receiver by a hash of the peer's address and port, busy or not, and resets the
connections queued on a receiver that dies.)

What stays as with one process:

* durability: each receiver's spool writes, flushes, links and syncs before SUCCESS (spool.py);
* one copy of a duplicate: the spool's ``link`` refuses an existing name, across processes too;
* one tracker and one scheduler, in the node: a receiver tells the node of each stored instance
  over its channel *before* answering SUCCESS, and of each ended association after; the node
  feeds :class:`~dicom_node.receive.assembly.SeriesTracker` (``arrivals``), its observer
  (``emit``: metrics, audit) and its refusal counts (``refusals``);
* the association limits, in total and per peer address: one slot table (ledger.py);
* the data_dir lock: held by the node; receivers are its children and end with it (a receiver
  whose channel closes stops).

A receiver that dies is started again; the node ends the associations it held (their series no
longer wait for them) and frees its ledger slots. What it acknowledged is on disk and was told
to the node before the acknowledgement; what it had not acknowledged the sender sends again.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from config.schema import AppConfig, NodeConfig
from dicom_node import logsafe
from dicom_node.disk import DiskGuard
from dicom_node.events import Emit, Event
from dicom_node.heap import HeapTrimmer, freeze_start_up
from dicom_node.receive.balance import LoadBoard, create_board
from dicom_node.receive.gate import LISTEN_BACKLOG
from dicom_node.receive.handlers import Arrivals, HandlerDeps
from dicom_node.receive.ledger import SharedLedger, create_table
from dicom_node.receive.refusals import Refusals
from dicom_node.receive.scp import ExtraService, policy_from_config, start_scp
from dicom_node.receive.spool import Spool
from dicom_node.receive.waker import Waker

log = logging.getLogger(__name__)

#: The slot table of the association limits, in the data_dir (ledger.py).
LEDGER_FILE = ".receive-associations"
#: The receivers' loads, which one accepts a new connection first, in the data_dir (balance.py).
BOARD_FILE = ".receive-loads"
#: How long :meth:`ReceiverPool.start` waits for every receiver to listen.
READY_TIMEOUT_SECONDS = 60.0
#: A receiver that died sooner than this after its start is started again only after
#: :data:`RESTART_BACKOFF_SECONDS` (a receiver that cannot start does not spin).
QUICK_DEATH_SECONDS = 10.0
RESTART_BACKOFF_SECONDS = 1.0
#: How long a stopping receiver has to close its associations before it is killed.
STOP_GRACE_SECONDS = 10.0
#: Messages the node takes from one receiver per wake-up at most.
DRAIN_MESSAGES = 64
#: After a wake-up with messages, the node lets the next ones gather this long before it waits
#: again, so that under a stream of C-STOREs it wakes a few hundred times a second at most instead
#: of twice per instance (each wake-up costs the node's process a scheduling, a selector and the
#: interpreter's lock while the receivers want the cores). The receivers never wait for it: their
#: messages are in the channel before they answer SUCCESS, and a series' quiet period is seconds.
GATHER_SECONDS = 0.005
#: How long a receiver whose channel closed may take to exit before it is killed.
EXIT_WAIT_SECONDS = 2.0


#: ``node.receivers: auto`` starts one receiver per core, within these bounds: at least two,
#: so that receiving never shares an interpreter lock with the node's own work (a job's stages
#: run on the node's threads in the embedded queue: while one ran, one receiver in the node's
#: process kept 0.45 of its idle rate on one association, two receiver processes 0.85, on two
#: cores; bench/bench_busy_ingest.py); at most four (each receiver is an interpreter with its own
#: memory, ~76 MB idle, and the node's jobs want cores too).
AUTO_RECEIVERS_MIN, AUTO_RECEIVERS_MAX = 2, 4


def receiver_count(node: NodeConfig) -> int:
    """``node.receivers`` as a number (``auto``: one per core this process may use, within
    :data:`AUTO_RECEIVERS_MIN` and :data:`AUTO_RECEIVERS_MAX`)."""
    if node.receivers != "auto":
        return int(node.receivers)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(AUTO_RECEIVERS_MIN, min(cores, AUTO_RECEIVERS_MAX))


# -- the receiver's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiverSpec:
    """What the node sends a new receiver first, over its channel."""

    config: AppConfig
    index: int
    data_dir: Path
    ledger: Path
    board: Path
    #: The node's log levels: the root logger's and the libraries' (logsafe.LIBRARY_LOGGERS).
    log_level: int
    library_log_levels: dict[str, int]


class Channel:
    """A receiver's end of its channel to the node; its sends are whole messages, in order, from
    any thread, and are written to the socket before they return."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, *message: Any) -> None:
        with self._lock:
            self._conn.send(message)

    # Arrivals (handlers.py): what the C-STORE handler tells the tracker, told to the node.
    def instance_received(self, study_uid: str, series_uid: str, sop_uid: str, association: str,
                          calling_ae: str = "", called_ae: str = "") -> None:
        self.send("stored", study_uid, series_uid, sop_uid, association, calling_ae, called_ae)

    def association_ended(self, association: str) -> None:
        self.send("ended", association)

    def emit(self, event: Event) -> None:
        self.send("event", event)

    def refused(self, reason: str) -> None:
        self.send("refused", reason)


def serve_receiver(
    argv: list[str], extra: Callable[[AppConfig, Path, Emit, Spool], ExtraService | None]
) -> int:
    """A receiver process's main: ``argv`` is ``LISTEN_FD CHANNEL_FD`` (inherited from the node);
    ``extra`` builds the other service the listener hosts (the application's Q/R SCP)."""
    listen_fd, channel_fd = int(argv[0]), int(argv[1])
    # The node stops its receivers (a terminal's ^C reaches the whole process group).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = Connection(channel_fd)
    spec: ReceiverSpec = conn.recv()
    logging.basicConfig(level=spec.log_level,
                        format=f"%(asctime)s %(levelname)s %(name)s [receiver {spec.index}]: %(message)s")
    # As in the node: peer-supplied text escaped, library tracebacks of bad input on one line.
    logsafe.install_filters()
    for name, level in spec.library_log_levels.items():
        logging.getLogger(name).setLevel(level)
    channel = Channel(conn)
    node = spec.config.node
    deps = HandlerDeps(
        Spool.for_node(spec.data_dir, node), channel, policy_from_config(node),
        disk=DiskGuard(spec.data_dir, spec.config.retention), refusals=Refusals(told=channel.refused),
        emit=channel.emit,
    )
    listening = socket.socket(fileno=listen_fd)
    ledger = SharedLedger(spec.ledger, node.limits)
    board = LoadBoard(spec.board, spec.index)
    service = extra(spec.config, spec.data_dir, channel.emit, deps.spool)
    freeze_start_up()  # before the first association, which would otherwise pay for it (heap.py)
    scp = start_scp(node, deps, service, listening=listening, ledger=ledger, board=board)
    channel.send("ready", os.getpid())
    trimmer = HeapTrimmer()  # a receiver's heap is its own: it gives back freed memory as the node does
    try:
        while not (conn.poll(trimmer.interval) and conn.recv() == ("stop",)):
            trimmer.tick()
    except (EOFError, OSError):
        pass  # the node is gone: stop too
    scp.stop()
    return 0


# -- the node's side ----------------------------------------------------------------------------


@dataclass
class _Receiver:
    index: int
    proc: subprocess.Popen[bytes]
    conn: Connection
    started: float
    ready: threading.Event = field(default_factory=threading.Event)
    #: Associations (node-side keys) that delivered instances and have not ended.
    open: set[str] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.proc.pid


class ReceiverPool:
    """The node's receiver processes (module docstring): started, fed from, restarted, stopped.

    Has what the node uses of a :class:`~dicom_node.receive.scp.RunningSCP`: ``port``,
    ``refusals`` (every receiver's counts) and ``stop()``."""

    def __init__(self, config: AppConfig, count: int, entry: str, arrivals: Arrivals, emit: Emit,
                 data_dir: Path) -> None:
        """``entry``: the module a receiver runs (``python -m entry LISTEN_FD CHANNEL_FD``, which
        calls :func:`serve_receiver`)."""
        self.config = config
        self.count = count
        self.entry = entry
        self.arrivals = arrivals
        self.emit = emit
        self.data_dir = data_dir
        self.refusals = Refusals()
        self.restarts = 0
        self._ledger_path = data_dir / LEDGER_FILE
        self._ledger: SharedLedger | None = None
        self._board_path = data_dir / BOARD_FILE
        self._board: LoadBoard | None = None
        self._listening: socket.socket | None = None
        self._receivers: dict[int, _Receiver] = {}
        #: index -> monotonic time a dead receiver is started again
        self._due: dict[int, float] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._waker = Waker()
        self._monitor: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._listening is None:
            raise RuntimeError("receivers not started")
        return int(self._listening.getsockname()[1])

    def pids(self) -> list[int]:
        """The receivers' process ids, by index (for status and tests)."""
        with self._lock:
            return [self._receivers[i].pid for i in sorted(self._receivers)]

    def open_associations(self) -> dict[int, int]:
        """Open associations per receiver pid (the ledger's count)."""
        return self._ledger.open_by_owner() if self._ledger is not None else {}

    def start(self) -> ReceiverPool:
        node = self.config.node
        family = socket.AF_INET6 if ":" in node.host else socket.AF_INET
        self._listening = socket.create_server((node.host, node.port), family=family, backlog=LISTEN_BACKLOG)
        create_table(self._ledger_path, node.limits)
        self._ledger = SharedLedger(self._ledger_path, node.limits)
        create_board(self._board_path, self.count)
        self._board = LoadBoard(self._board_path)
        try:
            for index in range(self.count):
                self._spawn(index)
            self._monitor = threading.Thread(target=self._run, name="mmed-receivers", daemon=True)
            self._monitor.start()
            self._wait_ready(list(self._receivers.values()))
        except BaseException:
            self.stop()
            raise
        log.info("DICOM SCP %s listening on %s:%d with %d receiver processes", node.ae_title, node.host,
                 self.port, self.count)
        return self

    def _wait_ready(self, receivers: list[_Receiver]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        for receiver in receivers:
            while not receiver.ready.wait(0.1):
                code = receiver.proc.poll()
                if code is not None:
                    raise RuntimeError(f"receiver {receiver.index} exited with status {code} at start")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"receiver {receiver.index} did not start listening "
                                       f"within {READY_TIMEOUT_SECONDS:g} s")

    def _spawn(self, index: int) -> None:
        assert self._listening is not None
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", self.entry, str(self._listening.fileno()), str(theirs.fileno())],
                pass_fds=(self._listening.fileno(), theirs.fileno()), stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        conn = Connection(mine.detach())
        conn.send(ReceiverSpec(self.config, index, self.data_dir, self._ledger_path, self._board_path,
                               logging.getLogger().getEffectiveLevel(), logsafe.library_levels()))
        with self._lock:
            self._receivers[index] = _Receiver(index, proc, conn, time.monotonic())
        self._waker.wake()

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                by_conn = {id(r.conn): r for r in self._receivers.values()}
                conns: list[Any] = [r.conn for r in self._receivers.values()]
            took = False
            for ready in wait([*conns, self._waker.fileno()], timeout=0.5):
                if ready == self._waker.fileno():
                    self._waker.drain()
                    continue
                receiver = by_conn[id(ready)]
                took = True
                try:
                    self._take(receiver, receiver.conn.recv())
                    # What else arrived, without another wait (bounded: the others' turn comes).
                    for _ in range(DRAIN_MESSAGES):
                        if not receiver.conn.poll(0):
                            break
                        self._take(receiver, receiver.conn.recv())
                except (EOFError, OSError):
                    self._ended(receiver)
                except Exception:  # one bad message must not stop the node's intake
                    log.exception("receiver %d: message not handled", receiver.index)
            self._restart_due()
            if took:
                self._stopping.wait(GATHER_SECONDS)

    def _take(self, receiver: _Receiver, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "stored":
            _, study, series, sop, association, calling, called = message
            key = f"r{receiver.index}.{receiver.pid}:{association}"
            receiver.open.add(key)
            self.arrivals.instance_received(study, series, sop, key, calling, called)
        elif kind == "ended":
            key = f"r{receiver.index}.{receiver.pid}:{message[1]}"
            receiver.open.discard(key)
            self.arrivals.association_ended(key)
        elif kind == "event":
            self.emit(message[1])
        elif kind == "refused":
            self.refusals.count(message[1])
        elif kind == "ready":
            receiver.ready.set()
        else:
            log.warning("receiver %d: unknown message %r", receiver.index, kind)

    def _ended(self, receiver: _Receiver) -> None:
        """The receiver's channel closed: it exited (or is about to). Clean up after it."""
        with self._lock:
            if self._receivers.get(receiver.index) is not receiver:
                return
            del self._receivers[receiver.index]
        receiver.conn.close()
        try:
            # Its channel closes as it exits: no wait here holds up the other receivers' messages.
            code = receiver.proc.wait(EXIT_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            receiver.proc.kill()
            code = receiver.proc.wait()
        if self._ledger is not None:
            self._ledger.release_owner(receiver.pid)
        if self._board is not None:
            self._board.mark_absent(receiver.index)  # nobody waits for it to accept
        for key in receiver.open:
            self.arrivals.association_ended(key)
        if self._stopping.is_set():
            return
        quick = time.monotonic() - receiver.started < QUICK_DEATH_SECONDS
        log.warning("receiver %d (pid %d) exited with status %s; %d association(s) ended with it; starting "
                    "it again%s", receiver.index, receiver.pid, code, len(receiver.open),
                    f" in {RESTART_BACKOFF_SECONDS:g} s" if quick else "")
        self._due[receiver.index] = time.monotonic() + (RESTART_BACKOFF_SECONDS if quick else 0.0)

    def _restart_due(self) -> None:
        now = time.monotonic()
        for index, at in list(self._due.items()):
            if at <= now and not self._stopping.is_set():
                del self._due[index]
                try:
                    self._spawn(index)
                    self.restarts += 1
                except OSError as exc:
                    log.error("receiver %d cannot be started: %s", index, exc)
                    self._due[index] = now + RESTART_BACKOFF_SECONDS

    def stop(self) -> None:
        """Stop accepting; each receiver closes its associations (senders retry later) and exits."""
        self._stopping.set()
        with self._lock:
            receivers = list(self._receivers.values())
        for receiver in receivers:
            try:
                receiver.conn.send(("stop",))
            except OSError:
                pass
        if self._listening is not None:
            self._listening.close()
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for receiver in receivers:
            try:
                receiver.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                receiver.proc.kill()
                receiver.proc.wait()
        self._waker.wake()
        if self._monitor is not None:
            self._monitor.join(5)
            self._monitor = None
        for receiver in receivers:
            receiver.conn.close()
            for key in receiver.open:
                self.arrivals.association_ended(key)
        with self._lock:
            self._receivers.clear()
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None
        if self._board is not None:
            self._board.close()
            self._board = None
        self._waker.close()
