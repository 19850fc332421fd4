"""The Celery task: ``process_series(spec_dict)`` runs :func:`dicom_node.jobs.pipeline.run_job`, the
same job function as the embedded pool, in a worker process.

Per process, one :class:`WorkerRuntime` holds the config, the shared job state client and the
:class:`~dicom_node.jobs.pipeline.WorkerContext` (tool registry + planners), built once and reused, so
models stay warm across jobs. Workers run ``--pool solo`` or ``threads``: nothing forks after
torch started (a forked child of a torch parent can deadlock).

Outcomes, recorded in the job's shared hash (:mod:`dicom_node.jobs.shared`):

* success -> ``done`` with the manifest; the node hands the files to its outbox;
* :class:`~dicom_node.jobs.pipeline.JobFailed` (the series cannot be processed) -> ``failed`` at once,
  never retried;
* a transient error (``OSError``: shared volume not mounted yet, NFS hiccup, disk full; CUDA out
  of memory) -> retried with exponential backoff up to ``queue.max_retries`` times, then
  ``failed`` with the last reason;
* any other exception (a bug) -> ``failed`` with its type and message;
* a job whose worker dies each time it runs it is counted per delivery and ends ``failed`` once
  it used ``max_retries + 1 + max_redeliveries`` attempts (a poison job cannot loop forever).

Series data reaches a worker through the node's data volume, mounted at the same path on every
worker host (docs/scaling.md); a worker that cannot see the series fails the job with that reason
instead of reading a partial series.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery, Task
from celery.exceptions import Reject

from config.schema import AppConfig
from dicom_node.jobs.celery_app import TASK_NAME
from dicom_node.jobs.pipeline import JobFailed, JobSpec, WorkerContext, run_job
from dicom_node.jobs.shared import SharedJobState
from dicom_node.receive.spool import INSTANCE_SUFFIX

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a worker keeps trying to record a job's final state while Redis is unreachable;
#: after that the task is left unacknowledged and re-run once Redis is back.
STATE_WRITE_PATIENCE_SECONDS = 60.0
STATE_WRITE_PAUSE_SECONDS = 1.0


class SeriesNotVisible(OSError):
    """The series folder is missing or incomplete on this worker host (transient: retried)."""


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: I/O (OSError and its subclasses) and CUDA running out of memory."""
    if isinstance(exc, (OSError, MemoryError)):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError, no torch import


def backoff_seconds(retries: int, initial: float, maximum: float) -> float:
    """Delay before retry number ``retries + 1``: initial, 2x, 4x ... capped at maximum."""
    return float(min(initial * 2**retries, maximum))


def check_series_visible(spec: JobSpec, expected: int | None) -> None:
    """Raise :class:`SeriesNotVisible` unless this host sees the job's series folder with at
    least the instances the node counted (the shared volume may be missing or lagging)."""
    folder = Path(spec.series_dir)
    host = socket.gethostname()
    if not folder.is_dir():
        raise SeriesNotVisible(
            f"series folder {folder} not found on worker host {host}: mount the node's data "
            "volume at the same path on every worker (docs/scaling.md)"
        )
    if expected is not None:
        found = sum(1 for p in folder.iterdir() if p.name.endswith(INSTANCE_SUFFIX))
        if found < expected:
            raise SeriesNotVisible(
                f"series folder {folder} on worker host {host} holds {found} of {expected} "
                "instances (shared volume not up to date?)"
            )


class WorkerRuntime:
    """Per-process state of a worker: config, job state client, warm :class:`WorkerContext`."""

    def __init__(self, config: AppConfig) -> None:
        if not config.queue.broker_url:
            raise ValueError("queue.broker_url is not set")
        self.config = config
        self.state = SharedJobState.from_url(config.queue.broker_url)
        self._lock = threading.Lock()
        self._context: WorkerContext | None = None

    def context(self) -> WorkerContext:
        """The tool registry and planners, built on first use and kept for the process."""
        with self._lock:
            if self._context is None:
                started = time.monotonic()
                self._context = WorkerContext.build(self.config)
                log.info("worker context ready in %.1f s", time.monotonic() - started)
            return self._context

    def process(self, task: Task, spec_dict: dict[str, Any]) -> dict[str, Any]:
        spec = JobSpec.from_dict(spec_dict)
        queue = self.config.queue
        worker = str(task.request.hostname or socket.gethostname())
        previous, attempt = self._write_state(lambda: self.state.begin(spec.job_id, worker, os.getpid()))
        if previous in ("done", "failed"):
            log.info("job %s already %s: duplicate delivery ignored", spec.job_id, previous)
            return {"job_id": spec.job_id, "state": previous, "duplicate": True}
        limit = queue.max_retries + 1 + queue.max_redeliveries
        if attempt > limit:
            reason = (f"gave up after {attempt - 1} attempt(s): the job kept ending without a result "
                      "(its worker was lost each time)")
            self._write_state(lambda: self.state.mark_failed(spec.job_id, reason))
            log.error("job %s: %s", spec.job_id, reason)
            return {"job_id": spec.job_id, "state": "failed"}
        log.info("job %s: attempt %d on %s (series %s)", spec.job_id, attempt, worker, spec.series_uid)
        try:
            shared = self._write_state(lambda: self.state.get(spec.job_id))
            check_series_visible(spec, shared.instance_count if shared else None)
            manifest = run_job(spec, self.context())
        except JobFailed as exc:
            return self._failed(spec, str(exc))
        except Exception as exc:
            if not is_transient(exc):
                log.exception("job %s crashed", spec.job_id)
                return self._failed(spec, f"{type(exc).__name__}: {exc}")
            reason = f"{type(exc).__name__}: {exc}"
            retries = int(task.request.retries or 0)
            if retries >= queue.max_retries:
                return self._failed(spec, f"gave up after {attempt} attempt(s): {reason}")
            delay = backoff_seconds(retries, queue.retry_backoff_seconds, queue.retry_backoff_max_seconds)
            log.warning("job %s: transient error (%s); retry %d in %.1f s",
                        spec.job_id, reason, retries + 1, delay)
            self._write_state(lambda: self.state.mark_retrying(spec.job_id, reason, delay))
            raise task.retry(countdown=delay, max_retries=queue.max_retries) from exc
        self._write_state(lambda: self.state.mark_done(spec.job_id, manifest))
        log.info("job %s done on %s", spec.job_id, worker)
        return {"job_id": spec.job_id, "state": "done"}

    def _failed(self, spec: JobSpec, reason: str) -> dict[str, Any]:
        log.warning("job %s failed: %s", spec.job_id, reason)
        self._write_state(lambda: self.state.mark_failed(spec.job_id, reason))
        return {"job_id": spec.job_id, "state": "failed"}

    def _write_state(self, write: Callable[[], T]) -> T:
        """Run a job-state read/write, waiting out a short Redis outage; if Redis stays away,
        leave the message unacknowledged (requeued) so the job is decided again later."""
        deadline = time.monotonic() + STATE_WRITE_PATIENCE_SECONDS
        while True:
            try:
                return write()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise Reject(f"job state unreachable: {exc}", requeue=True) from exc
                log.warning("job state unreachable (%s); trying again", exc)
                time.sleep(STATE_WRITE_PAUSE_SECONDS)


def register_tasks(app: Celery, config: AppConfig) -> WorkerRuntime:
    """Register ``process_series`` on ``app``; return the runtime it uses (to warm it up)."""
    runtime = WorkerRuntime(config)

    @app.task(bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True)
    def process_series(self: Task, spec_dict: dict[str, Any]) -> dict[str, Any]:
        return runtime.process(self, spec_dict)

    return runtime
