"""The data_dir's file system: how full it is, and the low-space watermark.

Below the watermark (``retention.min_free`` bytes or ``retention.min_free_percent`` of the file
system, whichever is more) the node refuses new instances with C-STORE status 0xA700, "Refused:
Out of Resources" (PS3.4 B.2.3): the sender keeps them and sends them again later, rather than
the node acknowledging instances it may not be able to keep. It accepts again once free space is
``retention.resume_margin_percent`` above the mark (a margin, so that it does not flap), which
retention helps reach by removing finished, delivered series first.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from config.schema import RetentionConfig

log = logging.getLogger(__name__)

#: How long one free-space reading is reused (a C-STORE asks for every instance).
CHECK_EVERY_SECONDS = 1.0


@dataclass(frozen=True)
class DiskSpace:
    """Bytes of the file system holding a path (``free``: what unprivileged writers may use)."""

    total: int
    free: int

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free / self.total if self.total else 0.0


def disk_space(path: Path) -> DiskSpace:
    st = os.statvfs(path)
    return DiskSpace(total=st.f_blocks * st.f_frsize, free=st.f_bavail * st.f_frsize)


class DiskGuard:
    """The low-space watermark of one file system, with hysteresis; thread-safe."""

    def __init__(
        self,
        path: Path,
        config: RetentionConfig,
        space: Callable[[Path], DiskSpace] = disk_space,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self._config = config
        self._space = space
        self._clock = clock
        self._lock = threading.Lock()
        self._low = False
        self._checked = -float("inf")
        self._last: DiskSpace | None = None

    def low_mark(self, total: int) -> int:
        """Free bytes below which the node refuses instances."""
        return max(int(self._config.min_free), int(total * self._config.min_free_percent / 100))

    def resume_mark(self, total: int) -> int:
        """Free bytes at which it accepts again."""
        return self.low_mark(total) + int(total * self._config.resume_margin_percent / 100)

    def space(self) -> DiskSpace | None:
        """The file system's space now (read at most every second; None: unknown)."""
        self.low()
        return self._last

    def low(self) -> bool:
        """Whether the node refuses new instances now."""
        now = self._clock()
        with self._lock:
            if now - self._checked < CHECK_EVERY_SECONDS and self._last is not None:
                return self._low
            self._checked = now
            try:
                space = self._space(self.path)
            except OSError as exc:  # cannot tell: keep the last verdict
                log.warning("free space of %s unknown: %s", self.path, exc)
                return self._low
            self._last = space
            was = self._low
            if was:
                self._low = space.free < self.resume_mark(space.total)
            else:
                self._low = space.free < self.low_mark(space.total)
            if self._low != was:
                if self._low:
                    log.error("disk low: %d MiB free on %s (%.1f%%), under the mark of %d MiB: "
                              "refusing new instances (status 0xA700) until %d MiB are free",
                              space.free >> 20, self.path, space.free_percent,
                              self.low_mark(space.total) >> 20, self.resume_mark(space.total) >> 20)
                else:
                    log.warning("disk space back: %d MiB free on %s: accepting instances again",
                                space.free >> 20, self.path)
            return self._low
