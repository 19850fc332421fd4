"""The Celery queue, node side: publishes runs to the broker and reports what workers did.

One background thread does two things every ``queue.poll_seconds``:

1. **Publish** the runs :meth:`CeleryExecutor.run` and :meth:`~CeleryExecutor.adopt` handed it,
   once due. Neither touches the network, so a broker outage never blocks the node: it keeps
   receiving and spooling, the jobs stay ``queued`` in their records, and they are published when
   Redis answers again (after a node restart the job service adopts them from those records).
   An adopted job whose hash shows it already published, running or finished (a node restart
   while a worker held it) is followed, not published twice.
2. **Follow** published runs: read their hashes (:mod:`dicom_node.jobs.shared`) and report to
   the job service: started (attempt, worker), done, failed (permanent: the worker's reason),
   failed transient (a ``retry`` report: the service applies the retry policy and, to retry,
   calls :meth:`~CeleryExecutor.run` again after the backoff) or lost (a running job whose lease
   lapsed: its worker died; the service runs it again at once, on another worker, unless it used
   every attempt). Retries and re-runs are therefore published by this thread like any run,
   with the same outage handling: none is lost to a broker that is down at that moment.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from config.schema import AppConfig
from dicom_node.jobs import shared as hashes
from dicom_node.jobs.celery_app import TASK_NAME, make_celery_app
from dicom_node.jobs.retry import Failure
from dicom_node.jobs.runner import Report, RunEvent, RunKind
from dicom_node.jobs.shared import SharedJob, SharedJobState
from dicom_node.jobs.spec import JobSpec

log = logging.getLogger(__name__)

#: Errors meaning "the broker / Redis is unreachable now": keep the job and try later.
BROKER_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError,
)


@dataclass(frozen=True)
class _Run:
    """A run waiting to be published."""

    spec: JobSpec
    attempt: int
    not_before: float
    #: Taken over after a restart (follow what the hash shows) rather than asked for afresh.
    adopted: bool = False
    #: For an adopted job: its record showed a run in progress.
    running: bool = False


@dataclass
class _Followed:
    """A published run being followed."""

    spec: JobSpec
    attempt: int
    #: The attempt last reported started (0: none yet).
    reported: int = 0


class CeleryExecutor:
    def __init__(
        self,
        config: AppConfig,
        *,
        app: Celery | None = None,
        state: SharedJobState | None = None,
    ) -> None:
        if not config.queue.broker_url:
            raise ValueError("queue.broker_url is not set")
        self._config = config
        self._app = app or make_celery_app(config)
        self._state = state or SharedJobState.from_url(config.queue.broker_url)
        self._report: Report | None = None
        self._lock = threading.Lock()
        #: Runs not yet published, by job id.
        self._pending: dict[str, _Run] = {}
        #: Published runs, followed until they end.
        self._tracked: dict[str, _Followed] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker_down_since: float | None = None

    # -- the Executor interface ---------------------------------------------------------------

    def start(self, report: Report) -> None:
        self._report = report
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="mmed-celery-queue", daemon=True)
        self._thread.start()

    def run(self, spec: JobSpec, attempt: int, not_before: float | None = None) -> None:
        self._queue(_Run(spec, attempt, not_before or 0.0))

    def adopt(self, spec: JobSpec, running: bool, attempt: int, not_before: float | None) -> None:
        self._queue(_Run(spec, attempt, not_before or 0.0, adopted=True, running=running))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop publishing and following. Published runs stay in the broker and keep running on
        the workers; unpublished ones stay ``queued`` on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _queue(self, run: _Run) -> None:
        with self._lock:
            self._pending[run.spec.job_id] = run
            self._tracked.pop(run.spec.job_id, None)
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------

    def _loop(self) -> None:
        interval = self._config.queue.poll_seconds
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.publish_due()
                self.follow()
                if self._broker_down_since is not None:
                    log.info("broker reachable again after %.1f s",
                             time.monotonic() - self._broker_down_since)
                    self._broker_down_since = None
            except BROKER_DOWN_ERRORS as exc:
                if self._broker_down_since is None:
                    self._broker_down_since = time.monotonic()
                    log.warning("broker unreachable (%s): jobs stay queued, trying again", exc)
            self._wake.wait(interval)

    def publish_due(self) -> None:
        """Publish every due run (raises a broker-down error, keeping the rest pending)."""
        now = time.time()
        with self._lock:
            batch = [run for run in self._pending.values() if run.not_before <= now]
        for run in sorted(batch, key=lambda r: r.not_before):
            if self._stop.is_set():
                return
            self._publish(run)
            with self._lock:
                if self._pending.get(run.spec.job_id) is run:
                    del self._pending[run.spec.job_id]
                    self._tracked[run.spec.job_id] = _Followed(run.spec, run.attempt)

    def _publish(self, run: _Run) -> None:
        """Publish one run, or, for an adopted job that a worker already has in hand, follow it."""
        job_id = run.spec.job_id
        if run.adopted:
            shared = self._state.get(job_id)
            in_hand = shared is not None and (shared.published or shared.state != hashes.QUEUED)
            # A transient failure the old owner already decided to retry is published anew;
            # anything else is followed (a retry report it never saw is reported now).
            retry_decided = shared is not None and shared.state == hashes.RETRY and not run.running
            if in_hand and not retry_decided:
                log.info("job %s is already %s in its hash: following it", job_id,
                         shared.state if shared else "")
                return
        if not self._state.mark_queued(job_id, fresh=run.attempt == 1 and not run.adopted):
            log.info("job %s finished meanwhile: following it, not publishing it again", job_id)
            return
        # retry=False: an outage must fail fast here (the loop retries), not block in kombu.
        self._app.send_task(TASK_NAME, args=[run.spec.to_dict()], task_id=job_id, retry=False)
        self._state.mark_published(job_id)
        log.info("job %s published (attempt %d)", job_id, run.attempt)

    def follow(self) -> None:
        """Report what the hashes of the followed runs show; stop following runs that ended."""
        with self._lock:
            job_ids = list(self._tracked)
        if not job_ids:
            return
        for job_id, shared in self._state.get_many(job_ids).items():
            with self._lock:
                followed = self._tracked.get(job_id)
            if followed is None:
                continue  # queued again meanwhile
            if shared is None:
                log.warning("job %s: its hash is lost (Redis lost its data); publishing again",
                            job_id)
                self._queue(_Run(followed.spec, followed.attempt, 0.0))
                continue
            self._report_hash(shared, followed)

    def _report_hash(self, shared: SharedJob, followed: _Followed) -> None:
        job_id = shared.job_id
        # The hash shows a start of the run it was last queued for (a begin that gave up leaves
        # the start of an earlier run in place).
        started = shared.started is not None and (shared.queued is None
                                                  or shared.started >= shared.queued)
        if started and shared.attempt > followed.reported and shared.state != hashes.QUEUED:
            followed.reported = shared.attempt
            self._emit(RunEvent(job_id, RunKind.STARTED, shared.attempt, shared.worker,
                                at=shared.started or time.time()))
        if shared.lapsed:
            reason = (f"the worker running attempt {shared.attempt} ({shared.worker or '?'}) was "
                      "lost: its lease lapsed")
            if not self._state.take_lapsed(job_id, shared.attempt, reason):
                return  # renewed or taken back meanwhile: look again next time
            log.warning("job %s: %s; handing it to another worker", job_id, reason)
            event = RunEvent(job_id, RunKind.LOST, shared.attempt, shared.worker)
        elif shared.state == hashes.DONE:
            event = RunEvent(job_id, RunKind.DONE, shared.attempt, shared.worker,
                             at=shared.finished or time.time())
        elif shared.state == hashes.FAILED:
            event = RunEvent(job_id, RunKind.FAILED, shared.attempt, shared.worker,
                             failure=Failure(shared.error or "failed on a worker", False),
                             final=True)
        elif shared.state == hashes.RETRY:
            event = RunEvent(job_id, RunKind.FAILED, shared.attempt, shared.worker,
                             failure=Failure(shared.error or "transient error", True,
                                             shared.disk_full))
        else:
            return
        with self._lock:
            self._tracked.pop(job_id, None)
        self._emit(event)

    def _emit(self, event: RunEvent) -> None:
        if self._report is None:
            raise RuntimeError("executor not started")
        try:
            self._report(event)
        except Exception:  # the owner's bug must not end the loop; logged in full
            log.exception("job %s: handling its %s event failed", event.job_id, event.kind.value)
