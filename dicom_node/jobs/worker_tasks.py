"""The Celery task: ``process_series(spec_dict)`` runs one job in a worker process, the same run
as the embedded pool's (:func:`~dicom_node.jobs.runner.execute`: :func:`~dicom_node.jobs.pipeline.run_job`,
then the manifest in the result folder).

Per process, one :class:`WorkerRuntime` holds the config, the job hash client and the
:class:`~dicom_node.jobs.pipeline.WorkerContext` (tool registry + planners), built once and reused, so
models stay warm across jobs. Workers run ``--pool solo`` or ``threads``: nothing forks after
torch started (a forked child of a torch parent can deadlock).

A delivered task first claims the job and takes its lease
(:meth:`~dicom_node.jobs.shared.SharedJobState.begin`): a job that finished, waits for the node's
retry decision, or is leased by another worker, is not run again (a duplicate delivery); a job
past its attempt limit is marked ``failed``. While it runs, a heartbeat thread renews the lease
every ``queue.lease_renew_seconds`` (a worker killed mid-job stops renewing, and the node hands
the job to another worker once the lease lapses). Then it reports in the job's hash
(:mod:`dicom_node.jobs.shared`):

* success -> ``done`` (the node reads the manifest from the result folder and hands the files to
  its outbox);
* :class:`~dicom_node.jobs.retry.JobFailed` (the series cannot be processed) or a bug ->
  ``failed`` with the reason, never retried;
* a transient error (:func:`dicom_node.jobs.retry.is_transient`: shared volume not mounted yet,
  NFS hiccup, disk full, CUDA out of memory) -> ``retry`` with the reason: the node applies the
  one retry policy (:mod:`dicom_node.jobs.retry`) and publishes the job again after the backoff.
  Workers never republish: a broker that is down at that moment cannot lose the retry.

Series data reaches a worker through the node's data volume, mounted at the same path on every
worker host (docs/scaling.md); a worker that cannot see the series reports a transient error
with that reason instead of reading a partial series.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import redis
from celery import Celery, Task
from celery.exceptions import Reject

from config.schema import AppConfig
from dicom_node.jobs.celery_app import TASK_NAME
from dicom_node.jobs.pipeline import WorkerContext, run_job
from dicom_node.jobs.retry import JobFailed, RetryPolicy, classify, crash_info
from dicom_node.jobs.runner import execute
from dicom_node.jobs.shared import SharedJobState
from dicom_node.jobs.spec import JobSpec
from dicom_node.receive.spool import INSTANCE_SUFFIX

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long a worker keeps trying to record a job's final state while Redis is unreachable;
#: after that the task is left unacknowledged and re-run once Redis is back.
STATE_WRITE_PATIENCE_SECONDS = 60.0
STATE_WRITE_PAUSE_SECONDS = 1.0


class SeriesNotVisible(OSError):
    """The series folder is missing or incomplete on this worker host (transient: retried)."""


def check_series_visible(spec: JobSpec) -> None:
    """Raise :class:`SeriesNotVisible` unless this host sees the job's series folder with at
    least the instances the job was created for (the shared volume may be missing or lagging)."""
    expected = len(set(spec.instance_uids)) if spec.instance_uids is not None else None
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


class Heartbeat:
    """Renews a running job's lease every ``renew_seconds`` until the block ends (a thread:
    the job itself may hold the worker's main thread for as long as it runs)."""

    def __init__(self, state: SharedJobState, job_id: str, token: str, lease_seconds: float,
                 renew_seconds: float) -> None:
        self._state, self._job_id, self._token = state, job_id, token
        self._lease, self._every = lease_seconds, renew_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job_id[:8]}", daemon=True)
        #: False once the lease was found gone (the node took the job back).
        self.held = True

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                renewed = self._state.renew(self._job_id, self._token, self._lease)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                log.warning("job %s: lease not renewed, Redis unreachable (%s)", self._job_id, exc)
                continue
            if not renewed and self.held:
                self.held = False
                log.warning("job %s: lease lost (not renewed in time); another worker may run "
                            "the job now", self._job_id)


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
        worker = str(task.request.hostname or socket.gethostname())
        limit = RetryPolicy.from_config(self.config.queue).max_attempts
        queue = self.config.queue
        claim = self._write_state(lambda: self.state.begin(spec.job_id, worker, os.getpid(), limit,
                                                           queue.lease_seconds))
        if claim.verdict == "gave-up":
            log.error("job %s: gave up after %d attempt(s): its worker was lost each time",
                      spec.job_id, claim.attempt - 1)
            return {"job_id": spec.job_id, "state": "failed"}
        if not claim.may_run:
            log.info("job %s already %s: duplicate delivery ignored", spec.job_id, claim.verdict)
            return {"job_id": spec.job_id, "state": claim.verdict, "duplicate": True}
        log.info("job %s: attempt %d on %s (series %s)", spec.job_id, claim.attempt, worker,
                 spec.series_uid)
        token = claim.token
        try:
            with Heartbeat(self.state, spec.job_id, token, queue.lease_seconds,
                           queue.lease_renew_seconds):
                check_series_visible(spec)
                context = self.context()
                execute(spec, lambda s: run_job(s, context))
        except Exception as exc:
            failure = classify(exc)
            if failure.transient:
                log.warning("job %s: transient error (%s); the node decides on a retry",
                            spec.job_id, failure.reason)
                self._report(spec.job_id, lambda: self.state.report_retry(
                    spec.job_id, token, failure.reason, failure.disk_full))
                return {"job_id": spec.job_id, "state": "retry"}
            if not isinstance(exc, JobFailed):
                log.error("job %s crashed", spec.job_id, exc_info=crash_info(exc))
            log.warning("job %s failed: %s", spec.job_id, failure.reason)
            self._report(spec.job_id, lambda: self.state.report_failed(spec.job_id, token,
                                                                       failure.reason))
            return {"job_id": spec.job_id, "state": "failed"}
        self._report(spec.job_id, lambda: self.state.report_done(spec.job_id, token))
        log.info("job %s done on %s", spec.job_id, worker)
        return {"job_id": spec.job_id, "state": "done"}

    def _report(self, job_id: str, report: Callable[[], bool]) -> None:
        if not self._write_state(report):
            log.warning("job %s: its lease was taken back while it ran (presumed lost); this "
                        "run's outcome is not recorded, the run that took over decides", job_id)

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
