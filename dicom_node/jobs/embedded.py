"""The embedded queue: a pool of worker threads inside the node process (no broker needed).

Each thread takes the next due job, reports it started, runs it (:func:`~dicom_node.jobs.runner.execute`:
the runner, then the manifest) and reports how the run ended; what follows (retry, give up, hand
the results to the outbox) is for :class:`~dicom_node.jobs.service.JobService` to decide. A job's
own exception never ends a thread. Jobs wait in a heap ordered by the time they may run, so a
retry after backoff takes no thread while it waits.

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
from dicom_node.jobs.runner import JobRunner, Report, RunEvent, RunKind, execute
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

    def stop(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    # -- the threads ---------------------------------------------------------------------------

    def _next(self) -> tuple[JobSpec, int] | None:
        """The next due job; None once stopping."""
        with self._cond:
            while not self._stopping:
                if self._heap:
                    wait = self._heap[0][0] - time.time()
                    if wait <= 0:
                        _, _, spec, attempt = heapq.heappop(self._heap)
                        return spec, attempt
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _work(self) -> None:
        while (job := self._next()) is not None:
            spec, attempt = job
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
