"""Giving freed heap memory back to the operating system.

The node is one long-lived process with many threads: each association and each job thread may
get its own glibc malloc arena, and memory freed in an arena stays mapped (counted in RSS) until
the allocator trims it, which it does only at the top of the heap. Over days of traffic, peaks in
different arenas add up: the process keeps the high-water mark of every arena though its live
heap is flat (measured with the fuzz campaign: the live heap stayed at ~25 MB while the free
memory held in arenas moved between 6 and 50 MB, raising the peak RSS of later inputs).
``malloc_trim(0)`` returns the free pages of every arena; it costs milliseconds, so the
scheduler calls it about once a second (:class:`HeapTrimmer`).

Other C libraries (musl) have no ``malloc_trim``: there it is a no-op.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable


def _load_trim() -> Callable[[int], int] | None:
    try:
        # The process's own symbols: the C library it runs on, without a library search.
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_TRIM = _load_trim()


def release_free_memory() -> bool:
    """Return free heap pages to the OS; True when the allocator gave some back."""
    return bool(_TRIM(0)) if _TRIM is not None else False


class HeapTrimmer:
    """Calls :func:`release_free_memory` at most every ``interval`` seconds."""

    def __init__(self, interval: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._last = clock()

    def tick(self) -> None:
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            release_free_memory()
