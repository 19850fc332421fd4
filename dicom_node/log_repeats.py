"""Quiet failure paths: an error that repeats is logged in full once, then counted.

A loop that fails the same way on every pass (job records that cannot be written while the disk
is full, a broker that is down) would otherwise log a traceback every half second. With
:class:`RepeatedLog` the first occurrence is logged with its traceback, identical ones (same
message, exception type and text) are counted and summarised at most once per ``interval``, and
the end of the streak is logged with the final count.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

#: Seconds between two summaries of the same repeating error.
DEFAULT_INTERVAL_SECONDS = 60.0


class RepeatedLog:
    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._key: tuple[str, str, str] | None = None
        #: Repeats not yet reported, and when the streak was last reported.
        self._repeats = 0
        self._total = 0
        self._reported = 0.0

    def error(self, message: str, exc: BaseException | None = None) -> None:
        """Log ``message`` (with ``exc``'s traceback) unless it repeats the current streak."""
        key = (message, type(exc).__name__ if exc else "", str(exc) if exc else "")
        now = self._clock()
        with self._lock:
            if key != self._key:
                self._end_streak()
                self._key, self._repeats, self._total, self._reported = key, 0, 1, now
                self._log.error("%s", message, exc_info=exc)
                return
            self._repeats += 1
            self._total += 1
            if now - self._reported < self._interval:
                return
            self._log.error("%s (again %d time(s) in the last %.0f s; %d in all)%s", message,
                            self._repeats, now - self._reported, self._total,
                            f": {key[1]}: {key[2]}" if exc else "")
            self._repeats, self._reported = 0, now

    def clear(self, message: str) -> None:
        """The failing operation succeeded: close the streak (logged with its count, if any)."""
        with self._lock:
            if self._key is None:
                return
            self._end_streak()
            self._log.info("%s", message)

    def _end_streak(self) -> None:
        if self._key is not None and self._repeats:
            self._log.error("%s (again %d time(s) since the last report; %d in all)",
                            self._key[0], self._repeats, self._total)
        self._key, self._repeats, self._total = None, 0, 0
