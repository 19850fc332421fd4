"""The loader's read-ahead (image_model/read_ahead.py): bounded lead over the reader, files that
vanish skipped, the thread gone when the block ends, the loaded series unchanged."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from image_model.loader import load_series
from image_model.read_ahead import ReadAhead
from tests.receive_helpers import make_ct_series

pytestmark = pytest.mark.skipif(not hasattr(os, "posix_fadvise"), reason="no posix_fadvise")


def _settle(ahead: ReadAhead, expected: int) -> int:
    """``ahead.advised`` once it stops moving (it must reach ``expected`` and stay there)."""
    deadline = time.monotonic() + 5
    while ahead.advised < expected and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # would it go further?
    return ahead.advised


def test_read_ahead_stays_a_bounded_distance_ahead(tmp_path: Path) -> None:
    paths = []
    for i in range(20):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(os.urandom(8192))
        paths.append(path)
    (tmp_path / "3.bin").unlink()  # a file gone since it was listed
    with ReadAhead(paths, ahead=4) as ahead:
        assert _settle(ahead, 3) == 3  # files 0-3 are the lead; 3 is gone and skipped
        ahead.reached(10)
        assert _settle(ahead, 13) == 13  # up to file 13, never further
        ahead.reached(19)
        assert _settle(ahead, 19) == 19
        thread = ahead._thread
    assert thread is not None and not thread.is_alive()


def test_leaving_early_stops_the_thread(tmp_path: Path) -> None:
    paths = [tmp_path / f"{i}.bin" for i in range(50)]
    for path in paths:
        path.write_bytes(b"x" * 100)
    with ReadAhead(paths, ahead=2) as ahead:
        pass  # the reader failed on its first file
    assert ahead._thread is not None and not ahead._thread.is_alive()
    assert ahead.advised <= 2


def test_series_loads_the_same_with_read_ahead(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_ct_series(tmp_path / "ct", 40)
    with_read_ahead = load_series(paths)
    monkeypatch.setattr(ReadAhead.__init__, "__defaults__", (0,))
    without = load_series(paths)
    assert np.array_equal(with_read_ahead.pixels, without.pixels)
    assert [str(d.SOPInstanceUID) for d in with_read_ahead.datasets] == [
        str(d.SOPInstanceUID) for d in without.datasets]
