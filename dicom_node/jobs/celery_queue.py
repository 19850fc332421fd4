"""The Celery queue: the node side of a Celery + Redis worker pool, with the interface of
:class:`~dicom_node.jobs.embedded.EmbeddedQueue` (``start``, ``submit``, ``wait_idle``, ``stop``).

One background thread does two things every ``queue.poll_seconds``:

1. **Publish** the jobs :meth:`CeleryQueue.submit` handed it. ``submit`` never touches the
   network, so a broker outage never blocks the node: it keeps receiving and spooling, the jobs
   stay ``queued`` in their JSON records, and they are published when Redis answers again (and,
   after a node restart, :meth:`Node.recover` submits them again from those records).
   Before publishing, the job's shared hash is consulted: a job that is already published,
   running or finished (a node restart while a worker held it) is followed, not published twice.
2. **Follow** published jobs: read their shared hashes (:mod:`dicom_node.jobs.shared`), mirror
   state, worker, attempt, timestamps and error into the node's job record, and when a job is
   ``done`` hand its manifest to ``on_done`` (the outbox) exactly as the embedded queue does:
   results first, then the record says ``done``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError

from config.schema import AppConfig
from dicom_node.jobs.celery_app import TASK_NAME, make_celery_app
from dicom_node.jobs.embedded import DoneCallback
from dicom_node.jobs.pipeline import MANIFEST_FILE, JobSpec
from dicom_node.jobs.shared import SharedJob, SharedJobState
from dicom_node.jobs.store import JobRecord, JobState, JobStore

log = logging.getLogger(__name__)

#: Errors meaning "the broker / Redis is unreachable now": keep the job and try later.
BROKER_DOWN_ERRORS: tuple[type[BaseException], ...] = (
    OperationalError, redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError,
)


class CeleryQueue:
    def __init__(
        self,
        config: AppConfig,
        store: JobStore,
        on_done: DoneCallback | None = None,
        *,
        app: Celery | None = None,
        state: SharedJobState | None = None,
    ) -> None:
        if not config.queue.broker_url:
            raise ValueError("queue.broker_url is not set")
        self._config = config
        self._store = store
        self._on_done = on_done
        self._app = app or make_celery_app(config)
        self._state = state or SharedJobState.from_url(config.queue.broker_url)
        self._lock = threading.Condition()
        #: Submitted, not yet published (in order).
        self._pending: dict[str, JobSpec] = {}
        #: Published, not yet finished: job id -> spec.
        self._tracked: dict[str, JobSpec] = {}
        #: Last shared state mirrored per job (to write the record only on change).
        self._seen: dict[str, tuple[Any, ...]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._broker_down_since: float | None = None

    # -- the EmbeddedQueue interface ----------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="mmed-celery-queue", daemon=True)
        self._thread.start()

    def submit(self, spec: JobSpec) -> None:
        """Queue a job whose record (state ``queued``) the caller has already saved."""
        with self._lock:
            self._pending[spec.job_id] = spec
        self._wake.set()

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until every submitted job finished (done or failed); False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._tracked, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop publishing and following. Jobs already published stay in the broker and keep
        running on the workers; unpublished ones stay ``queued`` on disk for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- the loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        interval = self._config.queue.poll_seconds
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.publish_pending()
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

    def publish_pending(self) -> None:
        """Publish every pending job (raises a broker-down error, keeping the rest pending)."""
        with self._lock:
            batch = list(self._pending.values())
        for spec in batch:
            if self._stop.is_set():
                return
            self._publish(spec)
            with self._lock:
                self._pending.pop(spec.job_id, None)
                self._tracked[spec.job_id] = spec

    def _publish(self, spec: JobSpec) -> None:
        shared = self._state.get(spec.job_id)
        if shared is not None and (shared.published or shared.state is not JobState.QUEUED):
            log.info("job %s is already %s in the shared state: following it", spec.job_id,
                     shared.state.value)
            return
        record = self._store.get(spec.job_id)
        self._state.mark_queued(spec.job_id, record.instance_count if record else None)
        # retry=False: an outage must fail fast here (the loop retries), not block in kombu.
        self._app.send_task(TASK_NAME, args=[spec.to_dict()], task_id=spec.job_id, retry=False)
        self._state.mark_published(spec.job_id)
        log.info("job %s published", spec.job_id)

    def follow(self) -> None:
        """Mirror the shared state of every followed job; finish those that ended."""
        with self._lock:
            job_ids = list(self._tracked)
        if not job_ids:
            return
        for job_id, shared in self._state.get_many(job_ids).items():
            if shared is None:
                # The hash vanished (Redis lost its data): publish the job again.
                log.warning("job %s: shared state lost, publishing again", job_id)
                with self._lock:
                    spec = self._tracked.pop(job_id)
                    self._pending[job_id] = spec
                continue
            self._mirror(shared)
            if shared.state in (JobState.DONE, JobState.FAILED):
                self._finish(shared)

    def _mirror(self, shared: SharedJob) -> None:
        view = (shared.state, shared.attempt, shared.worker, shared.error, shared.started)
        if self._seen.get(shared.job_id) == view or shared.state.finished:
            return
        self._seen[shared.job_id] = view
        self._update_record(
            shared.job_id, state=shared.state, attempt=max(shared.attempt, 1),
            worker=shared.worker, started=shared.started, error=shared.error,
        )

    def _finish(self, shared: SharedJob) -> None:
        job_id = shared.job_id
        with self._lock:
            spec = self._tracked.get(job_id)
        if spec is not None:
            if shared.state is JobState.DONE:
                self._done(spec, shared)
            else:
                log.warning("job %s failed on %s: %s", job_id, shared.worker, shared.error)
                self._update_record(
                    job_id, state=JobState.FAILED, finished=shared.finished or time.time(),
                    error=shared.error, attempt=max(shared.attempt, 1), worker=shared.worker,
                )
        with self._lock:
            self._tracked.pop(job_id, None)
            self._seen.pop(job_id, None)
            self._lock.notify_all()

    def _done(self, spec: JobSpec, shared: SharedJob) -> None:
        record = self._store.get(spec.job_id)
        if record is None:
            log.warning("job %s finished but has no record here; ignored", spec.job_id)
            return
        if record.state is JobState.DONE:
            return  # already handed on (a duplicate completion)
        manifest = shared.manifest or {}
        manifest_path = str(Path(spec.result_dir) / MANIFEST_FILE)
        record.manifest_path = manifest_path
        record.worker = shared.worker
        if self._on_done is not None:
            try:
                self._on_done(record, manifest)
            except Exception as exc:  # recorded on the job; the loop keeps going
                log.exception("job %s: handing results on failed", spec.job_id)
                self._update_record(
                    spec.job_id, state=JobState.FAILED, finished=time.time(),
                    error=f"results not handed to the outbox: {type(exc).__name__}: {exc}",
                )
                return
        self._update_record(
            spec.job_id, state=JobState.DONE, finished=shared.finished or time.time(),
            manifest_path=manifest_path, attempt=max(shared.attempt, 1), worker=shared.worker,
            started=shared.started, error=None,
        )
        log.info("job %s done on %s (attempt %d, series %s, route %s)", spec.job_id,
                 shared.worker, shared.attempt, spec.series_uid, spec.route)

    def _update_record(self, job_id: str, **changes: Any) -> JobRecord | None:
        try:
            return self._store.update(job_id, **changes)
        except FileNotFoundError:
            log.warning("job %s has no record under %s", job_id, self._store.root)
            return None
