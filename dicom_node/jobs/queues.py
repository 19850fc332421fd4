"""Which job queue the node uses: the one choice, made from ``queue.broker_url``.

No broker URL: the embedded pool of worker threads in the node process
(:class:`~dicom_node.jobs.embedded.EmbeddedQueue`). A ``redis://`` URL: Celery workers on this or
other machines (:class:`~dicom_node.jobs.celery_queue.CeleryQueue`); nothing else changes.
"""

from __future__ import annotations

from typing import Protocol

from config.schema import AppConfig
from dicom_node.jobs.embedded import (
    DoneCallback,
    EmbeddedQueue,
    JobRunner,
    pipeline_runner,
)
from dicom_node.jobs.pipeline import JobSpec
from dicom_node.jobs.store import JobStore


class JobQueue(Protocol):
    """What the node needs from a queue."""

    def start(self) -> None: ...

    def submit(self, spec: JobSpec) -> None: ...

    def wait_idle(self, timeout: float | None = None) -> bool: ...

    def stop(self, timeout: float = 30.0) -> None: ...


def make_queue(
    config: AppConfig,
    store: JobStore,
    on_done: DoneCallback | None,
    runner: JobRunner | None = None,
) -> JobQueue:
    """The queue ``config`` asks for. A custom ``runner`` only exists in the node process, so it
    cannot be combined with Celery workers (they always run the pipeline)."""
    if not config.queue.broker_url:
        return EmbeddedQueue(
            runner or pipeline_runner(config), store, config.node.workers, on_done=on_done
        )
    if runner is not None:
        raise ValueError(
            "a custom job runner runs in the node process; with queue.broker_url set, Celery "
            "workers run the pipeline (drop --runner or unset queue.broker_url)"
        )
    from dicom_node.jobs.celery_queue import CeleryQueue  # Celery is imported only when used

    return CeleryQueue(config, store, on_done)
