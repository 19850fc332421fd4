"""Which job queue runs the jobs: the one choice, made from ``queue.broker_url``.

No broker URL: the embedded pool of worker threads in the owning process
(:class:`~dicom_node.jobs.embedded.EmbeddedExecutor`). A ``redis://`` URL: Celery workers on this
or other machines (:class:`~dicom_node.jobs.celery_queue.CeleryExecutor`); nothing else changes.
"""

from __future__ import annotations

from config.schema import AppConfig
from dicom_node.jobs.embedded import EmbeddedExecutor
from dicom_node.jobs.runner import Executor, JobRunner, pipeline_runner


def make_executor(config: AppConfig, runner: JobRunner | None = None) -> Executor:
    """The queue ``config`` asks for. A custom ``runner`` only exists in this process, so it
    cannot be combined with Celery workers (they always run the pipeline)."""
    if not config.queue.broker_url:
        return EmbeddedExecutor(runner or pipeline_runner(config), config.node.workers)
    if runner is not None:
        raise ValueError(
            "a custom job runner runs in the node process; with queue.broker_url set, Celery "
            "workers run the pipeline (drop --runner or unset queue.broker_url)"
        )
    from dicom_node.jobs.celery_queue import CeleryExecutor  # Celery is imported only when used

    return CeleryExecutor(config)
