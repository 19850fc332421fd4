"""The jobs service: the one way in for work, and the one owner of job state.

    submit(series, requests)  -> a job record per request (state ``queued``) -> the executor
    executor (embedded pool or Celery) -> run events: started / done / failed / lost
    done    -> the manifest (one loader) -> the outbox (one hand-off) -> record ``done``
    failed  -> the retry policy: run again after a backoff, or record ``failed`` with the reason
    lost    -> run again, or ``failed`` once the job used every attempt

Everything that makes jobs goes through :meth:`JobService.submit`: the node's scheduler for a
routed series, ``mmed-node retrieve`` and the HTTP API's questions. Inside a running node they
share the node's service, hence its queue (Celery workers when a broker is configured) and its
single outbox, whose threads deliver at once. A process that is not the node (``mmed-node
retrieve`` while no node runs) builds the same service for the data_dir with
:func:`~dicom_node.jobs.standalone.standalone_jobs`, holding the data_dir's lock meanwhile so that
there is never a second owner.

While job records cannot be written (a full disk), a run event is kept in memory and applied
again every second until it is recorded (the repeated error is logged once, then counted); the
job's work is never redone for it, and nothing is lost unless the process dies meanwhile (then
the restart takes the job up again from its last recorded state).

An operator's retry of a failed job (``mmed-node jobs retry ID``) is a request file in
``<data_dir>/jobs/requests/``, applied by the owner: at once in a running node, else at its
next start.

Why the JSON records are the one store, and the Redis hashes of the Celery queue are not a
second one: a node must record work while the broker is down (it keeps receiving and spooling),
an operator reads the records with the node stopped, and the Q/R index serves results from them.
Workers on other hosts need a place to claim a job atomically and to renew their claim, which a
file on a shared volume cannot give; that lease, and the outcome report of the worker holding it,
is all a hash holds (:mod:`dicom_node.jobs.shared`). The service turns reports into record
changes; nothing else writes a record.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from config.schema import AppConfig
from dicom_node.events import Emit, Hop, HopEvent, ignore
from dicom_node.jobs.manifest import load_manifest, manifest_path
from dicom_node.jobs.pipeline import SR_FILE
from dicom_node.jobs.retry import Failure, RetryPolicy, classify
from dicom_node.jobs.runner import Executor, RunEvent, RunKind, Speculates
from dicom_node.jobs.spec import JobRequest, JobSpec, SeriesRef
from dicom_node.jobs.stages import Stage, Stages, first_stages
from dicom_node.jobs.store import JobRecord, JobState, JobStore, make_job_id
from dicom_node.log_repeats import RepeatedLog

log = logging.getLogger(__name__)

#: Under the jobs folder: operators' requests (``<job_id>.retry``), applied by the owner.
REQUESTS_FOLDER = "requests"
RETRY_SUFFIX = ".retry"
#: How often events that could not be recorded, and operators' requests, are looked at.
KEEPER_INTERVAL_SECONDS = 1.0


class JobNotRetryable(ValueError):
    """An operator asked to retry a job that is unknown, unfinished or done."""


def request_retry(jobs_root: Path, job_id: str) -> Path:
    """Ask the owner of the data_dir to run a failed job again (any process may call this)."""
    JobStore(jobs_root).path(job_id)  # validates the id
    folder = jobs_root / REQUESTS_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{job_id}{RETRY_SUFFIX}"
    path.touch()
    return path


class OutboxLike(Protocol):
    """Where finished jobs' results go (:class:`dicom_node.deliver.outbox.Outbox`)."""

    def enqueue(
        self,
        job_id: str,
        files: list[Path],
        destinations: list[str],
        fallbacks: Mapping[str, Sequence[Path]] | None = None,
    ) -> Any: ...

    def wait_settled(self, job_ids: Iterable[str], timeout: float) -> bool: ...


class JobService:
    def __init__(
        self,
        config: AppConfig,
        store: JobStore,
        executor: Executor,
        outbox: OutboxLike | None,
        results_dir: Path,
        policy: RetryPolicy | None = None,
        emit: Emit = ignore,
    ) -> None:
        """``emit`` is told every hop of every job (queued, started, encoded, failed): the
        node's audit trail and metrics (:mod:`dicom_node.events`)."""
        self.config = config
        self.store = store
        self.results_dir = Path(results_dir).resolve()
        self.policy = policy or RetryPolicy.from_config(config.queue)
        self._executor = executor
        self._outbox = outbox
        self._emit = emit
        #: Guards record changes and ``_active``; notified when a job finishes.
        self._cond = threading.Condition(threading.RLock())
        #: Jobs handed to the executor by this service and not finished yet.
        self._active: set[str] = set()
        #: Run events not yet recorded (job records could not be written), oldest first.
        self._unrecorded: deque[RunEvent] = deque()
        self._write_errors = RepeatedLog(log)
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._executor.start(self._on_event)
        self._stop.clear()
        self._keeper = threading.Thread(target=self._keep, name="mmed-jobs-keeper", daemon=True)
        self._keeper.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the executor (running jobs finish up to ``timeout``; queued ones stay queued in
        their records for the next owner)."""
        self._stop.set()
        self._executor.stop(timeout)
        if self._keeper is not None:
            self._keeper.join(timeout)
            self._keeper = None

    def _keep(self) -> None:
        while not self._stop.wait(KEEPER_INTERVAL_SECONDS):
            self._record_pending()
            self.apply_requests()

    def adopt(self, record: JobRecord) -> None:
        """Take on an unfinished job an earlier owner left (after a restart)."""
        if record.state.finished or record.spec is None:
            return
        with self._cond:
            self._active.add(record.job_id)
        log.info("job %s (%s, attempt %d) taken up again", record.job_id, record.state.value,
                 record.attempt)
        self._executor.adopt(record.spec, record.state is JobState.RUNNING, record.attempt,
                             record.retry_at)

    # -- the way in --------------------------------------------------------------------------

    def submit(self, series: SeriesRef, requests: Iterable[JobRequest]) -> list[JobRecord]:
        """One job per request on the instance set ``series``; returns their records.

        Job ids are derived (instance set + request key), so asking twice for the same thing
        gives the same job: one already ``done`` is returned as it is, one in progress here is
        not queued twice; anything else (new, failed, or left unfinished by an owner that is
        gone) is queued afresh."""
        records = []
        for request in requests:
            job_id = make_job_id(series.study_uid, series.series_uid, series.fingerprint,
                                 request.key)
            with self._cond:
                held = self.store.get(job_id)
                if held is not None and (held.state is JobState.DONE or job_id in self._active):
                    log.info("job %s already %s, not queued again", job_id, held.state.value)
                    records.append(held)
                    continue
                spec = self._spec(job_id, series, request)
                now = time.time()
                record = self.store.save(JobRecord(
                    job_id=job_id, study_uid=series.study_uid, series_uid=series.series_uid,
                    state=JobState.QUEUED, route=request.route, fingerprint=series.fingerprint,
                    instance_count=len(series.sop_uids), result_dir=spec.result_dir,
                    destinations=list(spec.destinations), calling_ae=series.calling_ae,
                    called_ae=series.called_ae, supersedes=list(series.supersedes), spec=spec,
                    created=now,
                    stages=first_stages(series.received_at, series.complete_at, now),
                ))
                self._active.add(job_id)
            self._hop(Hop.QUEUED, record, at=now, route=request.route,
                      instances=len(series.sop_uids), destinations=list(spec.destinations),
                      supersedes=list(series.supersedes))
            log.info("series %s (%d instances) -> route %s, job %s%s", series.series_uid,
                     len(series.sop_uids), request.route, job_id,
                     f" (supersedes {', '.join(series.supersedes)})" if series.supersedes else "")
            self._executor.run(spec, 1)
            records.append(record)
        return records

    def speculate(self, series: SeriesRef, request: JobRequest) -> bool:
        """Run ahead the job :meth:`submit` would create for ``request`` on ``series`` (its
        quiet period not over yet): same job id, same spec, nothing recorded or sent; the job
        adopts the outcome when it is submitted with an equal spec
        (:mod:`dicom_node.jobs.speculation`). False when the queue does not run work ahead
        (Celery), or the job exists already (done, or in progress here)."""
        if not isinstance(self._executor, Speculates):
            return False
        job_id = make_job_id(series.study_uid, series.series_uid, series.fingerprint, request.key)
        with self._cond:
            held = self.store.get(job_id)
            if held is not None and (held.state is JobState.DONE or job_id in self._active):
                return False
            spec = self._spec(job_id, series, request)
        return self._executor.speculate(spec)

    def discard_ahead(self, study_uid: str, series_uid: str) -> None:
        """Drop the series' work ahead (requested, running or done): something arrived for it."""
        if isinstance(self._executor, Speculates):
            self._executor.discard(study_uid, series_uid)

    def record_unrouted(
        self, series: SeriesRef, reason: str, state: JobState = JobState.UNROUTED
    ) -> JobRecord:
        """Record that no route fired for the series (``unrouted``; ``skipped`` when a route's
        image check failed): kept and visible, never run."""
        return self.store.save(JobRecord(
            job_id=make_job_id(series.study_uid, series.series_uid, series.fingerprint, None),
            study_uid=series.study_uid, series_uid=series.series_uid, state=state,
            route=None, fingerprint=series.fingerprint, instance_count=len(series.sop_uids),
            error=reason, finished=time.time(), calling_ae=series.calling_ae,
            called_ae=series.called_ae, supersedes=list(series.supersedes),
        ))

    def _spec(self, job_id: str, series: SeriesRef, request: JobRequest) -> JobSpec:
        return JobSpec(
            job_id=job_id, study_uid=series.study_uid, series_uid=series.series_uid,
            series_dir=series.series_dir, result_dir=str(self.results_dir / job_id),
            route=request.route, instruction=request.instruction,
            planner=request.planner or self.config.planner.backend, tools=request.tools,
            destinations=list(request.destinations),
            supersedes=self._predecessor_reports(series.supersedes, request.route),
            instance_uids=sorted(series.sop_uids),
        )

    def _predecessor_reports(self, job_ids: Sequence[str], route: str) -> list[str]:
        """SR files of the superseded jobs of ``route``, which the new job's SR replaces
        (its Predecessor Documents, PS3.3 C.17.2.3). A superseded job that failed produced no
        SR: the jobs it superseded stand in for it, so the chain of versions is not broken."""
        reports: list[str] = []
        pending, seen = list(job_ids), set()
        while pending:
            job_id = pending.pop(0)
            if job_id in seen:
                continue
            seen.add(job_id)
            record = self.store.get(job_id)
            if record is None or record.route != route or record.result_dir is None:
                continue
            if record.state is JobState.FAILED:
                pending.extend(record.supersedes)
            else:
                reports.append(str(Path(record.result_dir) / SR_FILE))
        return reports

    # -- waiting -----------------------------------------------------------------------------

    def wait(self, job_ids: Iterable[str], timeout: float | None = None) -> list[JobRecord]:
        """The jobs' records once none of them is in progress here, or after ``timeout``."""
        wanted = list(job_ids)
        with self._cond:
            self._cond.wait_for(lambda: not self._active.intersection(wanted), timeout)
        return [record for job_id in wanted if (record := self.store.get(job_id)) is not None]

    def settle(self, job_ids: Iterable[str], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the outbox to deliver (or give up on) the results
        of these jobs; False if some delivery is still pending."""
        return self._outbox is None or self._outbox.wait_settled(job_ids, timeout)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until no job is in progress here; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._active, timeout)

    # -- run events --------------------------------------------------------------------------

    def _on_event(self, event: RunEvent) -> None:
        """The one place a run's outcome changes a job record (called by the executor). An
        event that cannot be recorded now waits, in order, for the next try."""
        with self._cond:
            if any(pending.job_id == event.job_id for pending in self._unrecorded):
                self._unrecorded.append(event)  # keep the job's events in order
                return
            self._record(event, first_try=True)

    def _record_pending(self) -> None:
        with self._cond:
            while self._unrecorded:
                if not self._record(self._unrecorded[0], first_try=False):
                    return
                self._unrecorded.popleft()
            self._write_errors.clear("job records can be written again")

    def _record(self, event: RunEvent, first_try: bool) -> bool:
        """Apply one event; False (and kept, when first tried) if a record could not be written."""
        try:
            self._apply(event)
        except OSError as exc:
            self._write_errors.error("job records cannot be written; run events wait", exc)
            if first_try:
                self._unrecorded.append(event)
            return False
        return True

    def _apply(self, event: RunEvent) -> None:
        with self._cond:
            record = self.store.get(event.job_id)
            if record is None or record.spec is None:
                log.warning("job %s: %s event for a job without a record here; ignored",
                            event.job_id, event.kind.value)
                return
            if record.state.finished:
                log.info("job %s already %s: %s event ignored", event.job_id,
                         record.state.value, event.kind.value)
                self._settle(event.job_id)
                return
            if event.kind is RunKind.STARTED:
                self.store.update(event.job_id, state=JobState.RUNNING, attempt=event.attempt,
                                  worker=event.worker, started=event.at, error=None,
                                  retry_at=None, stages=self._staged(record, Stage.STARTED,
                                                                     event.at))
                self._hop(Hop.STARTED, record, at=event.at, attempt=event.attempt,
                          worker=event.worker)
            elif event.kind is RunKind.DONE:
                self._done(record, event)
            elif event.kind is RunKind.FAILED:
                assert event.failure is not None
                self._failed(record, event.failure, event.attempt, event.worker, event.final)
            else:
                self._lost(record, event.attempt)

    def _done(self, record: JobRecord, event: RunEvent) -> None:
        # Hand results on BEFORE recording ``done``: a crash in between runs the job again at
        # the next start (at-least-once delivery; the outbox sends one delivery per job and
        # destination) instead of leaving results that are never sent.
        try:
            self._hand_off(record)
        except Exception as exc:  # recorded on the job; classified like any run's failure
            failure = classify(exc)
            if failure.transient:
                log.warning("job %s: handing results on failed: %s", record.job_id, failure.reason)
            else:
                log.exception("job %s: handing results on failed", record.job_id)
            self._failed(record, Failure(f"results not handed to the outbox: {failure.reason}",
                                         failure.transient, failure.disk_full),
                         event.attempt, event.worker, False)
            return
        assert record.spec is not None
        stages = {**record.stages, **self._run_stages(record)}
        self.store.update(record.job_id, state=JobState.DONE, finished=event.at,
                          manifest_path=str(manifest_path(record.spec.result_dir)),
                          attempt=event.attempt, worker=event.worker, error=None, retry_at=None,
                          waiting_since=None, stages=stages)
        # The observer reads the run's tool calls and disclosures from the manifest.
        self._hop(Hop.ENCODED, record, at=stages.get(Stage.ENCODED, event.at),
                  manifest=str(manifest_path(record.spec.result_dir)))
        log.info("job %s done%s (attempt %d, series %s, route %s)", record.job_id,
                 f" on {event.worker}" if event.worker else "", event.attempt,
                 record.series_uid, record.route)
        self._settle(record.job_id)

    def _run_stages(self, record: JobRecord) -> Stages:
        """The stages the worker passed (tools, encoded), from its manifest; none when it cannot
        be read now (the results were handed on already: only the record is poorer)."""
        assert record.spec is not None
        try:
            return dict(load_manifest(record.spec.result_dir).stages)
        except (OSError, ValueError) as exc:
            log.warning("job %s: manifest not readable for its stages: %s", record.job_id, exc)
            return {}

    def record_sent(self, job_id: str, at: float) -> bool:
        """A destination stored the job's results (the outbox tells): the ``sent`` stage, the
        first time only (a second destination or a resend does not move it). True if recorded."""
        with self._cond:
            record = self.store.get(job_id)
            if record is None or Stage.SENT in record.stages:
                return False
            self.store.update(job_id, stages=self._staged(record, Stage.SENT, at))
            return True

    @staticmethod
    def _staged(record: JobRecord, stage: Stage, at: float) -> Stages:
        return {**record.stages, stage: at}

    def _hop(self, hop: Hop, record: JobRecord, at: float | None = None, **detail: Any) -> None:
        """Tell the observer; its failure never changes the job's way (logged)."""
        try:
            self._emit(HopEvent(hop, record.study_uid, record.series_uid, record.job_id,
                                at if at is not None else time.time(), detail))
        except Exception:  # an observer's bug must not fail a job
            log.exception("job %s: observer failed on %s", record.job_id, hop.value)

    def _hand_off(self, record: JobRecord) -> None:
        """The one hand-off of a finished job: its result files (and the overlays that stand in
        for a SEG) to the outbox, for the job's destinations."""
        if not record.destinations:
            return
        assert record.spec is not None
        base = Path(record.spec.result_dir)
        if self._outbox is None:
            log.warning("job %s: no outbox, results stay in %s", record.job_id, base)
            return
        manifest = load_manifest(base)
        self._outbox.enqueue(record.job_id, manifest.result_files(base), list(record.destinations),
                             fallbacks=manifest.stand_ins(base) or None)

    def _failed(self, record: JobRecord, failure: Failure, attempt: int, worker: str | None,
                final: bool) -> None:
        now = time.time()
        waiting_since = (record.waiting_since or now) if failure.disk_full else None
        delay = None if final else self.policy.retry_delay(failure, record.retries,
                                                           now - (waiting_since or now))
        if delay is None:
            reason = failure.reason if final else self.policy.gave_up(failure, attempt)
            self._hop(Hop.FAILED, record, attempt=attempt, final=True,
                      transient=failure.transient, disk_full=failure.disk_full)
            self._finish_failed(record.job_id, reason, attempt, worker)
            return
        retry_at = now + delay
        # A full disk says nothing about the job: waited out without using up its retries.
        retries = record.retries + (0 if failure.disk_full else 1)
        self.store.update(record.job_id, state=JobState.QUEUED, error=failure.reason,
                          retries=retries, retry_at=retry_at, attempt=attempt, worker=worker,
                          waiting_since=waiting_since,
                          stages=self._staged(record, Stage.QUEUED, now))
        self._hop(Hop.FAILED, record, at=now, attempt=attempt, final=False,
                  transient=failure.transient, disk_full=failure.disk_full,
                  retry_in=round(delay, 3))
        log.warning("job %s: %s (%s); runs again in %.1f s", record.job_id,
                    "waiting for disk space" if failure.disk_full else f"retry {retries}",
                    failure.reason, delay)
        assert record.spec is not None
        self._executor.run(record.spec, attempt + 1, retry_at)

    def _lost(self, record: JobRecord, attempt: int) -> None:
        reason = self.policy.lost_runs_exhausted(attempt)
        self._hop(Hop.FAILED, record, attempt=attempt, final=reason is not None, lost=True,
                  worker=record.worker)
        if reason is not None:
            self._finish_failed(record.job_id, reason, attempt, record.worker)
            return
        self.store.update(record.job_id, state=JobState.QUEUED, attempt=attempt + 1,
                          stages=self._staged(record, Stage.QUEUED, time.time()))
        log.info("job %s: run %d was lost with its worker; queued again (attempt %d)",
                 record.job_id, attempt, attempt + 1)
        assert record.spec is not None
        self._executor.run(record.spec, attempt + 1)

    def _finish_failed(self, job_id: str, reason: str, attempt: int, worker: str | None) -> None:
        log.warning("job %s failed: %s", job_id, reason)
        self.store.update(job_id, state=JobState.FAILED, finished=time.time(), error=reason,
                          attempt=attempt, worker=worker, retry_at=None)
        self._settle(job_id)

    def _settle(self, job_id: str) -> None:
        with self._cond:
            self._active.discard(job_id)
            self._cond.notify_all()

    # -- operators and retention -------------------------------------------------------------

    def retry(self, job_id: str) -> JobRecord:
        """Run a failed job again from scratch (attempts and retries start over)."""
        with self._cond:
            record = self.store.get(job_id)
            if record is None:
                raise JobNotRetryable(f"no job {job_id}")
            if record.state is not JobState.FAILED or record.spec is None:
                raise JobNotRetryable(f"job {job_id} is {record.state.value}, not failed")
            record = self.store.update(job_id, state=JobState.QUEUED, attempt=1, retries=0,
                                       error=None, finished=None, retry_at=None,
                                       waiting_since=None, worker=None,
                                       stages=self._staged(record, Stage.QUEUED, time.time()))
            self._active.add(job_id)
        log.info("job %s queued again by an operator", job_id)
        self._hop(Hop.QUEUED, record, route=record.route, instances=record.instance_count,
                  destinations=list(record.destinations), operator=True)
        assert record.spec is not None
        self._executor.run(record.spec, 1)
        return record

    def apply_requests(self) -> None:
        """Apply operators' retry requests waiting in the jobs folder (each once)."""
        folder = self.store.root / REQUESTS_FOLDER
        try:
            requests = sorted(folder.glob(f"*{RETRY_SUFFIX}"))
        except OSError:
            return
        for path in requests:
            job_id = path.name[: -len(RETRY_SUFFIX)]
            try:
                self.retry(job_id)
            except (JobNotRetryable, ValueError) as exc:
                log.warning("retry request for job %s ignored: %s", job_id, exc)
            except OSError as exc:  # the record cannot be written now: try again later
                self._write_errors.error("job records cannot be written; requests wait", exc)
                continue
            path.unlink(missing_ok=True)

    def in_progress(self, job_id: str) -> bool:
        with self._cond:
            return job_id in self._active

    def forget(self, job_ids: Iterable[str]) -> list[str]:
        """Remove the records of finished jobs (retention, after their results went); returns
        the ids removed (a job in progress here, or unfinished, is kept)."""
        with self._cond:
            return self.store.remove_finished(job_ids, keep=set(self._active))
