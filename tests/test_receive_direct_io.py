"""Spool writes around the page cache (direct_io.py): exact bytes and lengths on the real file
system, the pool of aligned buffers, and the spool falling back to buffered writes."""

from __future__ import annotations

import mmap
import os
import threading
import time
from pathlib import Path

import pytest

from dicom_node.receive import spool as spool_module
from dicom_node.receive.direct_io import (
    ALIGNMENT,
    BUFFER_BYTES,
    KEPT_BUFFERS,
    O_DIRECT,
    AlignedBuffers,
    DirectWriteRefused,
    _write_block,
    write_direct,
)
from dicom_node.receive.spool import Spool
from tests.receive_helpers import make_ct_series


def _direct_fd(folder: Path) -> int:
    """An unnamed file opened for direct writes in ``folder`` (skips where unsupported)."""
    if O_DIRECT is None or not hasattr(os, "O_TMPFILE"):
        pytest.skip("no O_DIRECT / O_TMPFILE on this platform")
    try:
        return os.open(folder, os.O_TMPFILE | os.O_WRONLY | O_DIRECT, 0o600)
    except OSError:
        pytest.skip("this file system refuses direct writes")


@pytest.mark.parametrize(
    "sizes",
    [
        [1],
        [ALIGNMENT - 1],
        [ALIGNMENT],
        [ALIGNMENT + 1],
        [BUFFER_BYTES],
        [BUFFER_BYTES + 1],
        [3, 132, 525_000],  # preamble-sized and odd parts, a 512x512 CT's pixel data
        [BUFFER_BYTES - 5, 10, 2 * BUFFER_BYTES + 7],  # parts straddling buffer boundaries
    ],
)
def test_direct_write_keeps_exact_bytes_and_length(tmp_path: Path, sizes: list[int]) -> None:
    parts = [os.urandom(n) for n in sizes]
    fd = _direct_fd(tmp_path)
    try:
        written = write_direct(fd, [parts[0], *(memoryview(p) for p in parts[1:])], AlignedBuffers())
        os.fdatasync(fd)
        dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
        try:  # linkat with a folder descriptor follows the /proc link (plain link does not)
            os.link(f"/proc/self/fd/{fd}", "out", dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        os.close(fd)
    assert written == sum(sizes)
    assert (tmp_path / "out").stat().st_size == sum(sizes)  # the alignment padding is cut off
    assert (tmp_path / "out").read_bytes() == b"".join(parts)


def test_an_unaligned_direct_write_is_refused_as_such(tmp_path: Path) -> None:
    """The file system's own EINVAL for a misaligned direct write becomes DirectWriteRefused
    (what makes the spool fall back), not a store failure."""
    fd = _direct_fd(tmp_path)
    buf = mmap.mmap(-1, 2 * ALIGNMENT)
    try:
        with pytest.raises(DirectWriteRefused):
            _write_block(fd, memoryview(buf)[1 : ALIGNMENT + 1])
    finally:
        os.close(fd)
        buf.close()


def test_the_buffer_pool_reuses_and_stays_bounded() -> None:
    buffers = AlignedBuffers()
    with buffers.buffer() as first:
        pass
    with buffers.buffer() as again:
        assert again is first  # reused, not fresh pages
    held: list[mmap.mmap] = []
    entered = threading.Barrier(KEPT_BUFFERS + 3)  # every thread holds a buffer at once
    release = threading.Event()

    def hold() -> None:
        with buffers.buffer() as buf:
            held.append(buf)
            entered.wait(10)
            release.wait(10)

    threads = [threading.Thread(target=hold, daemon=True) for _ in range(KEPT_BUFFERS + 3)]
    for t in threads:
        t.start()
    try:
        deadline = time.monotonic() + 10
        while len(held) < len(threads) and time.monotonic() < deadline:
            threading.Event().wait(0.01)
        assert len({id(b) for b in held}) == len(threads)  # each store had its own buffer
    finally:
        release.set()
        for t in threads:
            t.join()
    assert len(buffers._free) == KEPT_BUFFERS
    assert sum(b.closed for b in held) == len(threads) - KEPT_BUFFERS


def test_the_spool_stores_direct_and_falls_back_when_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_ct_series(tmp_path / "in", 3, rows=512, cols=512)
    spool = Spool(tmp_path / "spool")
    if not spool.direct_writes:
        pytest.skip("this file system has no O_TMPFILE or O_DIRECT")
    first = spool.store(paths[0].read_bytes())
    assert spool.direct_writes and first.path.read_bytes() == paths[0].read_bytes()

    def refuse(*args: object) -> int:
        raise DirectWriteRefused(22, "refused")

    monkeypatch.setattr(spool_module, "write_direct", refuse)
    second = spool.store(paths[1].read_bytes())  # refused mid-store: written again, buffered
    assert not spool.direct_writes
    third = spool.store(paths[2].read_bytes())
    for path, result in zip(paths[1:], (second, third), strict=True):
        assert not result.duplicate and result.path.read_bytes() == path.read_bytes()
    (series,) = list(spool.scan())
    assert len(series.sop_uids) == 3
    assert not [p for p in first.path.parent.iterdir() if p.name.startswith(".rx-")]


def test_direct_writes_can_be_turned_off(tmp_path: Path) -> None:
    (path,) = make_ct_series(tmp_path / "in", 1)
    spool = Spool(tmp_path / "spool", direct_writes=False)
    assert not spool.direct_writes
    assert spool.store(path.read_bytes()).path.read_bytes() == path.read_bytes()
