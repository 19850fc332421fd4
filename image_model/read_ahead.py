"""Asking the kernel to read a series' files a little ahead of the loader.

The node writes received instances around the page cache (dicom_node/receive/direct_io.py), so
a job's first read of each file goes to the device, one file after the other, each read waiting
for its own I/O while the loader's core idles. :class:`ReadAhead` hands the kernel the next few
files (``posix_fadvise(WILLNEED)``) from a thread of its own, so their I/O runs while the loader
parses the current one. It stays at most :data:`READ_AHEAD_FILES` files ahead of the reader, so a
long series never pulls more than that into the cache before it is needed. Where
``posix_fadvise`` is missing it does nothing; it never changes what is read.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

#: Files advised ahead of the one being read (32 x 512 KB CT slices: 16 MB of cache).
READ_AHEAD_FILES = 32


class ReadAhead:
    """``with ReadAhead(paths) as ahead:`` then ``ahead.reached(i)`` before reading ``paths[i]``."""

    def __init__(self, paths: Sequence[Path], ahead: int = READ_AHEAD_FILES) -> None:
        self._paths = paths
        self._ahead = ahead
        self._reached = 0
        self._stop = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        #: Files advised so far (what the tests watch).
        self.advised = 0

    def __enter__(self) -> Self:
        if hasattr(os, "posix_fadvise") and len(self._paths) > 1 and self._ahead > 0:
            self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join()

    def reached(self, index: int) -> None:
        """The reader is about to read ``paths[index]``."""
        with self._cond:
            self._reached = index
            self._cond.notify()

    def _run(self) -> None:
        for index, path in enumerate(self._paths):
            with self._cond:
                while not self._stop and index >= self._reached + self._ahead:
                    self._cond.wait()
                if self._stop:
                    return
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # gone or unreadable: the reader will say so
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                pass
            finally:
                os.close(fd)
            self.advised += 1
