"""Writing spool files around the page cache (``O_DIRECT``).

A buffered ``write`` copies every received byte into page-cache pages first. On the project's
virtual machine those pages are often fresh host memory (the host reclaims the guest's free
pages): a loop of write, flush, link and folder fsync then cost 1.6-1.9 ms of CPU per 512 KB
file buffered against 0.3-0.45 ms direct, more than the rest of the receive path. A direct
write hands the device a buffer the process already owns and reuses, so an instance costs one
copy into that buffer and no page-cache pages at all. Elsewhere it still keeps a burst of
ingest from pushing the jobs' and models' pages out of the cache; the price is that a job reads
what it loads from the device rather than from memory.

Direct I/O wants the buffer's address, the file offset and each write's length aligned to the
device's logical block size: buffers here are page-aligned anonymous mappings, every write but the
last is a whole buffer, and the last is padded to :data:`ALIGNMENT` and the file then truncated
to its true length. (A received instance's file meta group is padded so that the file is whole
blocks already, file_meta.py: no truncation, which would read the last block back.) The caller
still flushes (``fdatasync``): a direct write may sit in the device's volatile cache, and the
truncation is metadata.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Iterator, Sequence

#: Alignment of buffer addresses, offsets and lengths: 4096 covers 512-byte and 4K-sector devices.
ALIGNMENT = 4096
#: One write's size at most; an instance larger than this goes out in several.
BUFFER_BYTES = 1 << 20
#: Buffers kept for reuse between stores (one per association storing at once; more are made
#: when needed and dropped after use).
KEPT_BUFFERS = 4

O_DIRECT: int | None = getattr(os, "O_DIRECT", None)


def whole_blocks(length: int) -> int:
    """``length`` rounded up to a multiple of :data:`ALIGNMENT`."""
    return -(-length // ALIGNMENT) * ALIGNMENT


class DirectWriteRefused(OSError):
    """The file system refused a direct write (``EINVAL``): the caller writes buffered instead."""


class AlignedBuffers:
    """A small pool of page-aligned buffers of :data:`BUFFER_BYTES`, shared by the threads of one
    process. Each is first touched once, then reused: no fresh pages per instance."""

    def __init__(self, kept: int = KEPT_BUFFERS) -> None:
        self._kept = kept
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def buffer(self) -> Iterator[mmap.mmap]:
        with self._lock:
            buf = self._free.pop() if self._free else None
        if buf is None:
            buf = mmap.mmap(-1, BUFFER_BYTES)
        try:
            yield buf
        finally:
            with self._lock:
                keep = len(self._free) < self._kept
                if keep:
                    self._free.append(buf)
            if not keep:
                buf.close()


def write_direct(fd: int, parts: Sequence[bytes | memoryview], buffers: AlignedBuffers) -> int:
    """Write ``parts`` in order from offset 0 of ``fd`` (opened with ``O_DIRECT``), through one
    aligned buffer; returns the bytes written. The file ends at exactly that length.

    Raises :class:`DirectWriteRefused` when the file system refuses an aligned write: the caller
    drops the file and writes a new one buffered."""
    total = 0
    with buffers.buffer() as buf:
        view = memoryview(buf)
        try:
            fill = 0
            for part in parts:
                src = memoryview(part).cast("B")
                while src:
                    n = min(len(src), BUFFER_BYTES - fill)
                    view[fill : fill + n] = src[:n]
                    fill += n
                    total += n
                    src = src[n:]
                    if fill == BUFFER_BYTES:
                        _write_block(fd, view)
                        fill = 0
            if fill:
                padded = whole_blocks(fill)
                view[fill:padded] = bytes(padded - fill)
                _write_block(fd, view[:padded])
                if padded != fill:
                    os.ftruncate(fd, total)
        finally:
            view.release()
    return total


def _write_block(fd: int, block: memoryview) -> None:
    """One aligned write; a short one (no space, or a signal mid-way) fails: the next write
    would start at an unaligned offset."""
    try:
        written = os.write(fd, block)
    except OSError as exc:
        if exc.errno == errno.EINVAL:
            raise DirectWriteRefused(exc.errno, "direct write refused by the file system") from None
        raise
    if written != len(block):
        raise OSError(errno.ENOSPC, f"short direct write ({written} of {len(block)} bytes)")
