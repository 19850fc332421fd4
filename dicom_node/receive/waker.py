"""A wake-up file descriptor: one thread waits in ``select``/``poll`` on it beside its sockets,
others write to it to make that wait return (a socket pair)."""

from __future__ import annotations

import socket


class Waker:
    """Wakes a thread waiting in ``select`` on :meth:`fileno` (a socket pair)."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        try:
            self._w.send(b"\0")
        except OSError:
            pass  # closed, or a wake-up already waiting fills the buffer: the waiter wakes anyway

    def drain(self) -> None:
        try:
            while self._r.recv(4096):
                pass
        except OSError:
            pass

    def close(self) -> None:
        self._r.close()
        self._w.close()
