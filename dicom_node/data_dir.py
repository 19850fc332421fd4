"""The data_dir's owner lock: one process at a time owns a data_dir's job records and outbox.

``mmed-node serve`` holds it for its lifetime, and so does a standalone ``mmed-node retrieve``
while it runs jobs: two owners would both run the same queued jobs after a restart and race on
the same records.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TextIO

#: The lock file in the data_dir (it holds the owner's process id, for people).
DATA_DIR_LOCK = "node.lock"
#: Folders under the data_dir: job records, and each job's results (here, not in the job
#: service, so that a receiver process serving Q/R over them need not import the pipeline).
JOBS_FOLDER = "jobs"
RESULTS_FOLDER = "results"


class DataDirBusy(RuntimeError):
    """Another process owns the data_dir (a running node, or a retrieve running jobs)."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"another mmed-node process owns {data_dir} (lock {data_dir / DATA_DIR_LOCK})")
        self.data_dir = data_dir


def lock_data_dir(data_dir: Path) -> TextIO | None:
    """Take the data_dir's exclusive lock; None if another process holds it. The returned file
    must stay open: the lock is released when it is closed or the process exits, even after
    ``kill -9``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / DATA_DIR_LOCK, "a+", encoding="utf-8")  # noqa: SIM115 - held open
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def data_dir_owned(data_dir: Path) -> bool:
    """Whether some process holds the data_dir's lock now (a node is serving it)."""
    lock = lock_data_dir(data_dir)
    if lock is None:
        return True
    lock.close()
    return False
