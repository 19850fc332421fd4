"""Atomic file writes: temp file in the same folder, flush + fsync, rename. Readers (the status
command, a restarted node, a worker on another host) never see a partial record or DICOM file.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import Dataset


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via temp file + fsync + rename, so readers never see a partial file."""
    _write_atomic(path, lambda fh: fh.write(json.dumps(data, indent=2, default=str).encode("utf-8")))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` via temp file + fsync + rename (the folder is created if missing)."""
    _write_atomic(path, lambda fh: fh.write(data))


def write_dataset_atomic(path: Path, ds: Dataset) -> None:
    """Write a DICOM file (Part 10, PS3.10 7.1) via temp file + fsync + rename."""
    _write_atomic(path, lambda fh: ds.save_as(fh, enforce_file_format=True))


def _write_atomic(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_dir(folder: Path) -> None:
    """Make the names in ``folder`` durable (a rename or link into it survives a crash)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
