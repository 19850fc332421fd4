"""The embedded queue: a pool of worker threads inside the node process (no broker needed).

Each thread takes the next due job, reports it started, runs it (:func:`~dicom_node.jobs.runner.execute`:
the runner, then the manifest) and reports how the run ended; what follows (retry, give up, hand
the results to the outbox) is for :class:`~dicom_node.jobs.service.JobService` to decide. A job's
own exception never ends a thread. Jobs wait in a heap ordered by the time they may run, so a
retry after backoff takes no thread while it waits.

Work ahead (:mod:`dicom_node.jobs.speculation`): a job the node expects once a series' quiet
period ends may be run ahead by one thread when no job is waiting or running (at most one such
run at a time); it stops between its stages as soon as another job is due or starts, so it
never holds a thread from a real job for longer than one stage.

Nothing here survives the process: a job running when the node died is adopted at the next start
as a lost run (:meth:`EmbeddedExecutor.adopt`), the same as a Celery job whose worker died.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time

from dicom_node.jobs.retry import JobFailed, classify, crash_info
from dicom_node.jobs.runner import JobRunner, Report, RunEvent, RunKind, RunsAhead, execute
from dicom_node.jobs.spec import JobSpec

log = logging.getLogger(__name__)


class EmbeddedExecutor:
    def __init__(self, runner: JobRunner, workers: int = 1) -> None:
        self._runner = runner
        self._workers = workers
        self._report: Report | None = None
        #: (not before, sequence, spec, attempt): the jobs waiting for a thread.
        self._heap: list[tuple[float, int, JobSpec, int]] = []
        self._order = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._threads: list[threading.Thread] = []
        #: The job asked to run ahead and not started yet; the one running ahead.
        self._ahead: JobSpec | None = None
        self._running_ahead: JobSpec | None = None
        #: Jobs running now (not ahead).
        self._running: list[JobSpec] = []

    def start(self, report: Report) -> None:
        self._report = report
        self._stopping = False
        for i in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"mmed-worker-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def run(self, spec: JobSpec, attempt: int, not_before: float | None = None) -> None:
        with self._cond:
            heapq.heappush(self._heap, (not_before or 0.0, next(self._order), spec, attempt))
            self._cond.notify()

    def adopt(self, spec: JobSpec, running: bool, attempt: int, not_before: float | None) -> None:
        """A job running when the node stopped died with it: report the run lost (its owner
        decides whether it starts again); a queued one is run as it was."""
        if running:
            self._emit(RunEvent(spec.job_id, RunKind.LOST, attempt))
        else:
            self.run(spec, attempt, not_before)

    def speculate(self, spec: JobSpec) -> bool:
        if not isinstance(self._runner, RunsAhead):
            return False
        with self._cond:
            self._ahead = spec
            self._cond.notify()
        return True

    def discard(self, study_uid: str, series_uid: str) -> None:
        with self._cond:
            if self._ahead is not None and (self._ahead.study_uid, self._ahead.series_uid) == (study_uid, series_uid):
                self._ahead = None
        if isinstance(self._runner, RunsAhead):
            self._runner.discard_ahead(study_uid, series_uid)

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._ahead = None
            self._heap.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    # -- the threads ---------------------------------------------------------------------------

    def _next(self) -> tuple[JobSpec, int] | None:
        """The next due job (attempt 0: a job to run ahead); None once stopping."""
        with self._cond:
            while not self._stopping:
                wait: float | None = None
                if self._heap:
                    wait = self._heap[0][0] - time.time()
                    if wait <= 0:
                        _, _, spec, attempt = heapq.heappop(self._heap)
                        self._running.append(spec)
                        if self._ahead is not None and self._ahead.job_id == spec.job_id:
                            self._ahead = None  # the job itself runs now: nothing to run ahead
                        return spec, attempt
                if self._ahead is not None and self._running_ahead is None and not self._running:
                    spec, self._ahead, self._running_ahead = self._ahead, None, self._ahead
                    return spec, 0
                self._cond.wait(wait)
            return None

    def _ahead_may_go_on(self, spec: JobSpec) -> bool:
        """No other job is due or running (the run ahead of ``spec`` yields to them)."""
        with self._cond:
            now = time.time()
            due = any(at <= now and other != spec for at, _, other, _ in self._heap)
            return not (self._stopping or due or any(other != spec for other in self._running))

    def _work(self) -> None:
        while (job := self._next()) is not None:
            spec, attempt = job
            if attempt == 0:
                self._run_ahead(spec)
                continue
            try:
                self._run(spec, attempt)
            finally:
                with self._cond:
                    self._running.remove(spec)
                    self._cond.notify_all()  # a run ahead may wait for the pool to be idle

    def _run_ahead(self, spec: JobSpec) -> None:
        assert isinstance(self._runner, RunsAhead)
        try:
            self._runner.run_ahead(spec, lambda: self._ahead_may_go_on(spec))
        except Exception:  # a bug in the work ahead: the job itself runs as usual
            log.exception("job %s: running ahead failed", spec.job_id)
        finally:
            with self._cond:
                self._running_ahead = None
                self._cond.notify_all()

    def _run(self, spec: JobSpec, attempt: int) -> None:
        self._emit(RunEvent(spec.job_id, RunKind.STARTED, attempt))
        try:
            execute(spec, self._runner)
        except Exception as exc:  # a job's own error: reported, the thread goes on
            failure = classify(exc)
            if not failure.transient and not isinstance(exc, JobFailed):
                log.error("job %s crashed", spec.job_id, exc_info=crash_info(exc))
            self._emit(RunEvent(spec.job_id, RunKind.FAILED, attempt, failure=failure))
        else:
            self._emit(RunEvent(spec.job_id, RunKind.DONE, attempt))

    def _emit(self, event: RunEvent) -> None:
        if self._report is None:
            raise RuntimeError("executor not started")
        try:
            self._report(event)
        except Exception:  # the owner's bug must not end a worker thread; logged in full
            log.exception("job %s: handling its %s event failed", event.job_id, event.kind.value)
