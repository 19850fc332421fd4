"""The jobs service of a process that is not the node (``mmed-node retrieve`` while no node
serves the data_dir): the same store, queue and outbox as the node would use, under the
data_dir's lock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from config.schema import AppConfig
from dicom_node.data_dir import JOBS_FOLDER, RESULTS_FOLDER, DataDirBusy, lock_data_dir
from dicom_node.deliver.outbox import Outbox
from dicom_node.jobs.queues import make_executor
from dicom_node.jobs.runner import JobRunner
from dicom_node.jobs.service import JobService, OutboxLike
from dicom_node.jobs.store import JobStore


def make_service(
    config: AppConfig, outbox: OutboxLike | None, runner: JobRunner | None = None
) -> JobService:
    """The service for ``config.node.data_dir`` with the queue the config asks for."""
    data_dir = Path(config.node.data_dir).resolve()
    return JobService(config, JobStore(data_dir / JOBS_FOLDER), make_executor(config, runner),
                      outbox, data_dir / RESULTS_FOLDER)


@contextmanager
def standalone_jobs(config: AppConfig, runner: JobRunner | None = None) -> Iterator[JobService]:
    """The jobs service of a process that is not the node (a standalone ``mmed-node
    retrieve``): the node's store, queue and outbox for the data_dir, under the data_dir's lock
    (a running node holds it: :class:`DataDirBusy`). Deliveries still pending on exit stay on
    disk; the node sends them when it starts."""
    data_dir = Path(config.node.data_dir).resolve()
    lock = lock_data_dir(data_dir)
    if lock is None:
        raise DataDirBusy(data_dir)
    try:
        outbox = Outbox(data_dir, config)
        service = make_service(config, outbox, runner)
        service.start()
        outbox.start()
        try:
            yield service
            service.wait_idle()
        finally:
            service.stop()
            outbox.stop()
    finally:
        lock.close()
