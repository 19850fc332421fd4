"""The association ledger: which associations are open, so the gate (gate.py) can hold
``node.limits.max_associations`` in total and ``max_associations_per_peer`` per peer address.

One receiver process keeps its ledger in memory (:class:`LocalLedger`). Several receiver
processes on one listening socket (processes.py) share one :class:`SharedLedger`: a table of
``max_associations`` slots in a small file under the data_dir, mapped into every receiver, each
slot the owner's pid, a ticket and the peer address. A claim counts the slots in use and takes a
free one under an exclusive ``flock`` of that file, which the kernel releases when its holder
dies (a receiver killed mid-claim cannot wedge the others). So the limits hold across processes:
the table has no room for an association beyond ``max_associations``.

A slot is given back when its association's connection closes (pynetdicom's EVT_CONN_CLOSE), on
the gate's next tick for an association whose thread ended some other way, and by the node for
every slot of a receiver that died (:meth:`SharedLedger.release_owner`).
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pynetdicom import evt
from pynetdicom.association import Association

from config.schema import LimitsConfig
from dicom_node.atomic import write_bytes_atomic

#: One slot: owner pid (0: free), ticket, peer address (UTF-8, NUL padded; IPv6 fits in 46).
_SLOT = struct.Struct("<qq48s")


@dataclass(frozen=True)
class OverLimit:
    """An association the limits refuse: the refusal reason key and its log text."""

    reason: str
    why: str


def over_limit(total: int, from_peer: int, limits: LimitsConfig) -> OverLimit | None:
    """Whether one more association (``total`` open, ``from_peer`` of them from its address) is
    over ``limits`` (answered A-ASSOCIATE-RJ, local limit exceeded, PS3.8 9.3.4)."""
    if total >= limits.max_associations:
        return OverLimit("too_many_associations", f"{total} associations open (node.limits.max_associations)")
    if from_peer >= limits.max_associations_per_peer:
        return OverLimit("too_many_per_peer",
                         f"{from_peer} associations open from this address (node.limits.max_associations_per_peer)")
    return None


class Ledger(Protocol):
    """What the gate asks: may one more association from ``host`` start (a ticket), and which."""

    def claim(self, host: str) -> int | OverLimit:
        """A ticket for one more association from ``host``, or why it is over the limits."""

    def bind(self, ticket: int, assoc: Association) -> None:
        """The association that ``ticket`` was claimed for (it holds the ticket until it ends)."""

    def cancel(self, ticket: int) -> None:
        """Give ``ticket`` back (its association never started, or ended)."""

    def sweep(self) -> None:
        """Give back the tickets of associations that ended."""

    def held(self) -> int:
        """Tickets this process holds (its open associations)."""


class LocalLedger:
    """The open associations of this process (one receiver). Used from the gate's thread."""

    def __init__(self, limits: LimitsConfig) -> None:
        self.limits = limits
        self._tickets = itertools.count(1)
        #: ticket -> (association, None until bound; peer address)
        self._open: dict[int, tuple[Association | None, str]] = {}
        self._lock = threading.Lock()

    def claim(self, host: str) -> int | OverLimit:
        with self._lock:
            self._sweep_locked()
            from_peer = sum(1 for _, address in self._open.values() if address == host)
            over = over_limit(len(self._open), from_peer, self.limits)
            if over is not None:
                return over
            ticket = next(self._tickets)
            self._open[ticket] = (None, host)
            return ticket

    def bind(self, ticket: int, assoc: Association) -> None:
        with self._lock:
            if ticket not in self._open:
                return
            self._open[ticket] = (assoc, self._open[ticket][1])
        # Given back as soon as the connection closes, as SharedLedger does (the sweep is the backstop).
        assoc.bind(evt.EVT_CONN_CLOSE, lambda event: self.cancel(ticket))

    def cancel(self, ticket: int) -> None:
        with self._lock:
            self._open.pop(ticket, None)

    def sweep(self) -> None:
        with self._lock:
            self._sweep_locked()

    def held(self) -> int:
        return len(self._open)

    def _sweep_locked(self) -> None:
        ended = [t for t, (assoc, _) in self._open.items() if assoc is not None and not assoc.is_alive()]
        for ticket in ended:
            del self._open[ticket]


def create_table(path: Path, limits: LimitsConfig) -> None:
    """A fresh, empty slot table for :class:`SharedLedger` (the node, before its receivers)."""
    write_bytes_atomic(path, bytes(_SLOT.size * limits.max_associations))


class SharedLedger:
    """The open associations of every receiver process, in the slot table at ``path`` (module
    docstring). ``owner``: this process's pid (the node passes a dead receiver's to
    :meth:`release_owner`)."""

    def __init__(self, path: Path, limits: LimitsConfig, owner: int | None = None) -> None:
        self.limits = limits
        self.owner = os.getpid() if owner is None else owner
        self._fd = os.open(path, os.O_RDWR)
        self._size = _SLOT.size * limits.max_associations
        if os.fstat(self._fd).st_size != self._size:
            os.close(self._fd)
            raise ValueError(f"association table {path} does not match node.limits.max_associations")
        self._map = mmap.mmap(self._fd, self._size)
        self._lock = threading.Lock()  # flock excludes processes, not threads sharing the fd
        self._tickets = itertools.count(1)
        #: ticket -> (slot index, association once bound)
        self._mine: dict[int, tuple[int, Association | None]] = {}

    def close(self) -> None:
        with self._lock:
            self._map.close()
            os.close(self._fd)

    def _locked(self) -> _TableLock:
        return _TableLock(self._lock, self._fd)

    def _slots(self) -> list[tuple[int, int, str]]:
        return [
            (pid, ticket, raw.rstrip(b"\0").decode("utf-8", "replace"))
            for pid, ticket, raw in _SLOT.iter_unpack(self._map)
        ]

    def claim(self, host: str) -> int | OverLimit:
        with self._locked():
            self._sweep_locked()
            slots = self._slots()
            used = [address for pid, _, address in slots if pid]
            over = over_limit(len(used), used.count(host), self.limits)
            if over is not None:
                return over
            index = next(i for i, (pid, _, _) in enumerate(slots) if not pid)
            ticket = next(self._tickets)
            _SLOT.pack_into(self._map, index * _SLOT.size, self.owner, ticket, host.encode("utf-8")[:48])
            self._mine[ticket] = (index, None)
            return ticket

    def bind(self, ticket: int, assoc: Association) -> None:
        with self._lock:
            if ticket not in self._mine:
                return
            self._mine[ticket] = (self._mine[ticket][0], assoc)
        # Given back as soon as the connection closes (the gate's sweep is the backstop).
        assoc.bind(evt.EVT_CONN_CLOSE, lambda event: self.cancel(ticket))

    def cancel(self, ticket: int) -> None:
        with self._locked():
            self._release_locked(ticket)

    def sweep(self) -> None:
        with self._lock:
            if not any(a is not None and not a.is_alive() for _, a in self._mine.values()):
                return
        with self._locked():
            self._sweep_locked()

    def held(self) -> int:
        return len(self._mine)

    def _sweep_locked(self) -> None:
        for ticket in [t for t, (_, a) in self._mine.items() if a is not None and not a.is_alive()]:
            self._release_locked(ticket)

    def _release_locked(self, ticket: int) -> None:
        mine = self._mine.pop(ticket, None)
        if mine is None:
            return
        offset = mine[0] * _SLOT.size
        pid, held, _ = _SLOT.unpack_from(self._map, offset)
        if (pid, held) == (self.owner, ticket):
            _SLOT.pack_into(self._map, offset, 0, 0, b"")

    def release_owner(self, pid: int) -> int:
        """Free every slot ``pid`` held (a receiver that died); returns how many."""
        freed = 0
        with self._locked():
            for index, (owner, _, _) in enumerate(self._slots()):
                if owner == pid:
                    _SLOT.pack_into(self._map, index * _SLOT.size, 0, 0, b"")
                    freed += 1
        return freed

    def open_by_owner(self) -> dict[int, int]:
        """Open associations per owner pid (for status and tests)."""
        counts: dict[int, int] = {}
        with self._locked():
            for pid, _, _ in self._slots():
                if pid:
                    counts[pid] = counts.get(pid, 0) + 1
        return counts


class _TableLock:
    """The thread lock, then the file lock (``flock``: released by the kernel if the holder dies)."""

    def __init__(self, lock: threading.Lock, fd: int) -> None:
        self._lock, self._fd = lock, fd

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._lock.release()
