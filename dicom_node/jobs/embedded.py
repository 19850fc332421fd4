"""The embedded queue: a pool of worker threads inside the node process (no broker needed).

Workers call a job runner ``Callable[[JobSpec], dict]`` (the manifest). The default runner is
:func:`dicom_node.jobs.pipeline.run_job` with one :class:`WorkerContext` per process, built on first
use and shared by the threads so models load once. A failing job (``JobFailed`` or any other
exception) becomes a ``failed`` record with a readable reason; the pool keeps running.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config import AppConfig
from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.pipeline import (
    MANIFEST_FILE,
    JobFailed,
    JobSpec,
    WorkerContext,
    run_job,
)
from dicom_node.jobs.store import JobRecord, JobState, JobStore

log = logging.getLogger(__name__)

JobRunner = Callable[[JobSpec], dict[str, Any]]
#: Called when a job succeeded, with its record and manifest, before the record says ``done``.
DoneCallback = Callable[[JobRecord, dict[str, Any]], None]



def pipeline_runner(config: AppConfig) -> JobRunner:
    """The default runner: ``run_job`` with one :class:`WorkerContext` per process, built now
    (tool settings are checked at start; models load on first use and stay warm)."""
    ctx = WorkerContext.build(config)

    def run(spec: JobSpec) -> dict[str, Any]:
        return run_job(spec, ctx)

    return run


class EmbeddedQueue:
    def __init__(
        self,
        runner: JobRunner,
        store: JobStore,
        workers: int = 1,
        on_done: DoneCallback | None = None,
    ) -> None:
        self._runner = runner
        self._store = store
        self._workers = workers
        self._on_done = on_done
        self._queue: queue.Queue[JobSpec | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Condition()
        self._busy = 0

    def start(self) -> None:
        for i in range(self._workers):
            thread = threading.Thread(
                target=self._work, name=f"mmed-worker-{i}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def submit(self, spec: JobSpec) -> None:
        """Queue a job whose record (state ``queued``) the caller has already saved."""
        with self._idle:
            self._busy += 1
        self._queue.put(spec)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Let running jobs finish (up to ``timeout``), then end the workers. Jobs still queued
        stay ``queued`` on disk and are picked up again at the next start."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
            with self._idle:
                self._busy -= 1
                self._idle.notify_all()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _work(self) -> None:
        while True:
            spec = self._queue.get()
            if spec is None:
                return
            try:
                self._run_one(spec)
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()

    def _run_one(self, spec: JobSpec) -> None:
        record = self._store.update(
            spec.job_id, state=JobState.RUNNING, started=time.time(), error=None
        )
        try:
            manifest = self._runner(spec)
        except JobFailed as exc:
            self._fail(spec, str(exc))
            return
        except Exception as exc:  # a job's bug: record it, keep the node going
            log.exception("job %s crashed", spec.job_id)
            self._fail(spec, f"{type(exc).__name__}: {exc}")
            return
        manifest_path = Path(spec.result_dir) / MANIFEST_FILE
        # The returned manifest is the record of truth (overwrites what the runner wrote).
        write_json_atomic(manifest_path, manifest)
        record.manifest_path = str(manifest_path)
        # Hand results on BEFORE recording ``done``: a crash in between re-runs the job at the
        # next start (at-least-once delivery) instead of leaving results that are never sent.
        if self._on_done is not None:
            try:
                self._on_done(record, manifest)
            except Exception as exc:  # must not kill the worker; logged with traceback
                log.exception("job %s: handing results on failed", spec.job_id)
                self._fail(
                    spec,
                    f"results not handed to the outbox: {type(exc).__name__}: {exc}",
                )
                return
        self._store.update(
            spec.job_id,
            state=JobState.DONE,
            finished=time.time(),
            manifest_path=str(manifest_path),
        )
        log.info(
            "job %s done (series %s, route %s)",
            spec.job_id,
            spec.series_uid,
            spec.route,
        )

    def _fail(self, spec: JobSpec, reason: str) -> None:
        log.warning("job %s failed: %s", spec.job_id, reason)
        self._store.update(
            spec.job_id, state=JobState.FAILED, finished=time.time(), error=reason
        )
