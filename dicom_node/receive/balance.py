"""Which receiver process accepts a new connection: a board of their loads.

Several receiver processes share one listening socket (processes.py); the kernel wakes every one
of them for a new connection and the first to ``accept`` takes it. To spread associations, a
receiver that holds more connections than another lets that one go first: it waits before
``accept`` (:meth:`LoadBoard.wait_turn`, called by the gate's accept loop), until that one has
taken it. The wait is set by the *difference* to the least busy other receiver, read from this
board, never by a receiver's own load alone: otherwise a peer that opens a few hundred idle
connections, spread over every receiver, would make each of them wait at every ``accept`` and
hold a legitimate peer in the listen queue for seconds (the idle connections cost the gate
nothing else).

The board is a small file under the data_dir, mapped by the node and every receiver: one signed
32-bit load per receiver index, written only by that receiver (a whole aligned word: readers see
the old value or the new one). :data:`ABSENT` marks a receiver that does not accept (not started
yet, or dead: the node marks it); it is never waited for. A value may be a moment old; the
receivers publish theirs each time they are woken for a connection, so the balance is as fresh
as the competition for that connection.
"""

from __future__ import annotations

import mmap
import os
import struct
import time
from collections.abc import Callable
from pathlib import Path

from dicom_node.atomic import write_bytes_atomic

_LOAD = struct.Struct("<i")
#: A receiver that is not accepting connections.
ABSENT = -1
#: A receiver waits this long per connection it holds beyond the least busy other receiver
#: before it accepts (the steps well above the few milliseconds a busy machine's scheduler may
#: delay a thread) ...
ACCEPT_DELAY_PER_CONNECTION = 0.02
#: ... and never longer than this.
ACCEPT_DELAY_MAX = 0.1


def create_board(path: Path, receivers: int) -> None:
    """A fresh board for ``receivers`` receivers, every one :data:`ABSENT` (the node, before it
    starts them)."""
    write_bytes_atomic(path, _LOAD.pack(ABSENT) * receivers)


class LoadBoard:
    """The board at ``path``, as seen by receiver ``index`` (or by the node: ``index`` None)."""

    def __init__(self, path: Path, index: int | None = None) -> None:
        self.index = index
        with open(path, "r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size == 0 or size % _LOAD.size:
                raise ValueError(f"receiver load board {path} is malformed ({size} bytes)")
            self._map = mmap.mmap(fh.fileno(), size)
        self.receivers = size // _LOAD.size
        if index is not None and not 0 <= index < self.receivers:
            self._map.close()
            raise ValueError(f"receiver index {index} not on a board of {self.receivers}")

    def close(self) -> None:
        self._map.close()

    def publish(self, load: int) -> None:
        """This receiver's load (connections it holds)."""
        assert self.index is not None
        _LOAD.pack_into(self._map, self.index * _LOAD.size, max(0, load))

    def mark_absent(self, index: int) -> None:
        """Receiver ``index`` does not accept (the node, when it died)."""
        _LOAD.pack_into(self._map, index * _LOAD.size, ABSENT)

    def loads(self) -> list[int]:
        """Every receiver's last published load (:data:`ABSENT`: not accepting)."""
        return [value for (value,) in _LOAD.iter_unpack(self._map)]

    def before_accept(self, load: int) -> float:
        """Publish ``load``; the seconds to wait before ``accept``: none unless another
        receiver holds fewer connections, then by the difference (module docstring)."""
        self.publish(load)
        least = self.least_other()
        if least is None or load <= least:
            return 0.0
        return min(ACCEPT_DELAY_MAX, ACCEPT_DELAY_PER_CONNECTION * (load - least))

    def wait_turn(self, load: Callable[[], int], waiting: Callable[[], bool]) -> float:
        """Wait while another accepting receiver holds fewer connections than ``load()`` and
        the connection that woke this one is still ``waiting()`` (not taken by another), in steps
        of :meth:`before_accept`'s wait and at most :data:`ACCEPT_DELAY_MAX` in all: a less busy
        receiver that a loaded machine schedules late still gets the connection. The seconds
        waited."""
        waited = 0.0
        while waited < ACCEPT_DELAY_MAX:
            wait = self.before_accept(load())
            if not wait or not waiting():
                break
            step = min(wait, ACCEPT_DELAY_MAX - waited)
            time.sleep(step)
            waited += step
        return waited

    def least_other(self) -> int | None:
        """The least load of the other accepting receivers (None: there is none)."""
        others = [load for i, load in enumerate(self.loads()) if i != self.index and load != ABSENT]
        return min(others) if others else None
