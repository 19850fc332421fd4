"""Refusals: every peer the node drops for breaking a limit is counted and logged once, with its
address and AE title (never patient data), and a flood does not become a flood of log lines.

A reason's lines are rate-limited per reason: the first :data:`LINES_PER_WINDOW` of each
:data:`WINDOW_SECONDS` are logged, the rest only counted, and one line then says how many were
not logged. :meth:`Refusals.counts` is the running total per reason (since start). A receiver
process (processes.py) passes ``told``, which tells the node of each refusal, so the node's
counts are every receiver's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from dicom_node.logsafe import ae_title

log = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
LINES_PER_WINDOW = 20


class Refusals:
    """Thread-safe counter and rate-limited logger of dropped peers, keyed by reason."""

    def __init__(self, told: Callable[[str], None] | None = None) -> None:
        """``told(reason)``: called for every refusal counted (outside the lock)."""
        self._told = told
        self._counts: Counter[str] = Counter()
        self._window: dict[str, tuple[float, int, int]] = {}  # reason -> (start, logged, suppressed)
        self._lock = threading.Lock()

    def refuse(self, reason: str, address: str, calling_ae: object, why: str) -> None:
        """Count one refusal of ``reason`` and log ``why`` (already free of peer values other than
        the address and AE title passed here)."""
        now = time.monotonic()
        summary = None
        with self._lock:
            self._counts[reason] += 1
            start, logged, suppressed = self._window.get(reason, (now, 0, 0))
            if now - start > WINDOW_SECONDS:
                if suppressed:
                    summary = suppressed
                start, logged, suppressed = now, 0, 0
            emit = logged < LINES_PER_WINDOW
            self._window[reason] = (start, logged + emit, suppressed + (not emit))
        if self._told is not None:
            self._told(reason)
        if summary:
            log.warning("%d more refusal(s) for %s were not logged in the last %.0f s", summary, reason,
                        WINDOW_SECONDS)
        if emit:
            log.warning("dropped peer %s (AE %s): %s", address, ae_title(calling_ae), why)

    def count(self, reason: str) -> None:
        """Count one refusal its caller logs itself (an instance refused with a status)."""
        with self._lock:
            self._counts[reason] += 1
        if self._told is not None:
            self._told(reason)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
