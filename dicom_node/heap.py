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

The cyclic garbage collector is the other cost of a heap that starts large
(:func:`freeze_start_up`).
"""

from __future__ import annotations

import ctypes
import gc
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


def freeze_start_up() -> int:
    """Exempt every object alive now from the cyclic garbage collector's later passes; returns
    how many were frozen. Called once by a serving process at the end of its start-up.

    A process that has imported its libraries (pydicom, pynetdicom, pydantic, highdicom, numpy)
    holds ~150 000 objects the collector tracks: modules, classes, functions, tables, the
    configuration, all alive until the process ends. Its first full collection (the oldest
    generation, due once enough objects have survived the younger ones) walks every one of them
    while holding the interpreter lock: on Python 3.12, 98-129 ms in each fresh receiver process,
    during its first association, stalling that association and every other one in the process
    (bench/bench_receive.py: a just-started node's first series cost its receivers twice the CPU
    of the next ones). Frozen (``gc.freeze``), they are never walked again; objects made later
    are collected as before. A collection runs first so that start-up's own garbage is freed
    rather than frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


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
