"""The node: wires the receive side to the job side.

Data flow (top to bottom, one series):

    SCP (scp.py, handlers.py) --C-STORE--> Spool (spool.py) + SeriesTracker (assembly.py)
    scheduler thread, every ~0.5 s: SeriesTracker.due() -> routing.route_series()
        -> JobRecord (jobstore.py, state queued) -> queue (queues.py: the embedded pool, or
           Celery workers when queue.broker_url is set)
    worker: job runner(JobSpec) -> manifest -> Outbox.enqueue(job_id, files, destinations)

With ``api.enabled`` an HTTP API (http_api.py) runs beside them: status, job records, and
questions about a study in a PACS (pulled with retrieve.py, answered by a question job).

A restart rebuilds everything from disk (:meth:`Node.recover`): spool folders are the truth for
instances, job records for what was processed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

import pydicom
from pydicom.dataset import Dataset

from config.schema import AppConfig, RouteConfig
from dicom_node.jobs.embedded import JobRunner, pipeline_runner
from dicom_node.jobs.pipeline import SR_FILE, JobSpec
from dicom_node.jobs.queues import make_queue
from dicom_node.jobs.store import JobRecord, JobState, JobStore, make_job_id
from dicom_node.qr.handlers import QRDeps, add_qr_contexts, qr_event_handlers
from dicom_node.qr.index import QRIndex
from dicom_node.receive.assembly import DueSeries, SeriesTracker
from dicom_node.receive.handlers import HandlerDeps
from dicom_node.receive.scp import (
    STORAGE_SOP_CLASSES,
    ExtraService,
    RunningSCP,
    policy_from_config,
    start_scp,
)
from dicom_node.receive.spool import INSTANCE_SUFFIX, Spool
from image_model.fingerprint import instance_set_fingerprint

if TYPE_CHECKING:
    from dicom_node.app.http_api import HttpApi

log = logging.getLogger(__name__)

SCHEDULER_INTERVAL_SECONDS = 0.5


class OutboxLike(Protocol):
    def enqueue(
        self,
        job_id: str,
        files: list[Path],
        destinations: list[str],
        fallbacks: Mapping[str, list[Path]] | None = None,
    ) -> Any: ...


@dataclass(frozen=True)
class RoutingDecision:
    routes: list[RouteConfig]
    #: Why no route fired (empty when some did).
    reason: str = ""
    #: No route fired because the image did not cover what a route needs (recorded ``skipped``).
    skipped: bool = False


#: ``(config, series_tags, calling_ae, called_ae, instance_files) -> RoutingDecision``.
Router = Callable[[AppConfig, Mapping[str, Any], str, str, Sequence[Path]], RoutingDecision]


def default_router(
    config: AppConfig, tags: Mapping[str, Any], calling_ae: str, called_ae: str, files: Sequence[Path]
) -> RoutingDecision:
    """Route with :mod:`dicom_node.receive.routing` (imported lazily: it lives in its own module)."""
    from dicom_node.receive.routing import route_series

    outcome = route_series(config, tags, calling_ae, called_ae, files)
    return RoutingDecision([m.route for m in outcome.fired], outcome.reason, outcome.skipped)


def default_outbox(config: AppConfig) -> OutboxLike | None:
    try:
        from dicom_node.deliver.outbox import Outbox
    except ModuleNotFoundError as exc:
        if exc.name != "dicom_node.deliver.outbox":
            raise
        log.warning("no outbox module: results stay in their result folders")
        return None
    return Outbox(config.node.data_dir, config)


def series_tags(header: Dataset) -> dict[str, Any]:
    """Matchable keyword -> value of one instance's header (routing's own extraction)."""
    from dicom_node.receive.routing import series_tags_from_dataset

    return series_tags_from_dataset(header)


class Node:
    def __init__(
        self,
        config: AppConfig,
        runner: JobRunner | None = None,
        router: Router | None = None,
        outbox: OutboxLike | None = None,
        use_default_outbox: bool = True,
        question_runner: JobRunner | None = None,
    ) -> None:
        """``question_runner`` runs the HTTP API's question jobs (default: the embedded pool's
        pipeline runner, so models load once per process; with Celery, a pipeline runner the
        API builds on its first question)."""
        self.config = config
        # Absolute, so job specs stay valid for workers running elsewhere (another cwd, Celery).
        data_dir = Path(config.node.data_dir).resolve()
        self.spool = Spool(data_dir / "spool")
        self.jobs = JobStore(data_dir / "jobs")
        self.results_dir = data_dir / "results"
        self.tracker = SeriesTracker(
            config.node.series_quiet_seconds, config.node.require_association_release
        )
        self._router = router or default_router
        self._outbox = (
            outbox
            if outbox is not None
            else (default_outbox(config) if use_default_outbox else None)
        )
        shared: JobRunner | None = None
        if runner is None and not config.queue.broker_url:
            runner = shared = pipeline_runner(config)  # also runs the HTTP API's questions
        # Embedded pool, or Celery workers when queue.broker_url is set.
        self.queue = make_queue(config, self.jobs, self._job_done, runner)
        self._scp: RunningSCP | None = None
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._question_runner = question_runner or shared
        self._api: HttpApi | None = None  # imported only when api.enabled

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover state from disk, start workers, outbox, scheduler, then listen (last: no
        instance is acknowledged before the node can process it)."""
        self.queue.start()
        try:
            self.recover()
            start_outbox = getattr(self._outbox, "start", None)
            if callable(start_outbox):
                start_outbox()
            deps = HandlerDeps(
                self.spool, self.tracker, policy_from_config(self.config.node)
            )
            self._stop.clear()
            self._scheduler = threading.Thread(
                target=self._schedule, name="mmed-scheduler", daemon=True
            )
            self._scheduler.start()
            qr = QRDeps(QRIndex(self.spool.root, self.results_dir, self.jobs.root), self.config)
            qr_service = ExtraService(
                add_contexts=lambda ae: add_qr_contexts(ae, STORAGE_SOP_CLASSES),
                handlers=qr_event_handlers(qr),
            )
            self._scp = start_scp(self.config.node, deps, qr_service)
            if self.config.api.enabled:
                from dicom_node.app.http_api import HttpApi

                self._api = HttpApi(self.config, self._question_runner)
                self._api.start()
        except BaseException:
            self.stop()
            raise

    @property
    def port(self) -> int:
        if self._scp is None:
            raise RuntimeError("node not started")
        return self._scp.port

    @property
    def api_port(self) -> int:
        """The HTTP API's bound port (``api.port: 0`` picks a free one)."""
        if self._api is None:
            raise RuntimeError("HTTP API not running (api.enabled is false or node not started)")
        return self._api.port

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, stop scheduling, let running jobs finish, stop the outbox."""
        if self._api is not None:
            self._api.stop()
            self._api = None
        if self._scp is not None:
            self._scp.stop()
            self._scp = None
        self._stop.set()
        if self._scheduler is not None:
            self._scheduler.join(timeout)
            self._scheduler = None
        self.queue.stop(timeout)
        stop_outbox = getattr(self._outbox, "stop", None)
        if callable(stop_outbox):
            stop_outbox()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- restart -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild series state from the spool and job records; re-queue unfinished work.

        Per spooled series: if its current instance set has job records that all finished, it
        is done; unfinished records (queued/running when the node died) are queued again with
        the next attempt number; a set with no records at all waits for its quiet period and is
        then routed as usual.
        """
        by_series: dict[tuple[str, str], list[JobRecord]] = defaultdict(list)
        for record in self.jobs.all():
            by_series[(record.study_uid, record.series_uid)].append(record)
        for series in self.spool.scan():
            fingerprint = instance_set_fingerprint(series.sop_uids)
            records = by_series.get((series.study_uid, series.series_uid), [])
            current = [r for r in records if r.fingerprint == fingerprint]
            # A new set supersedes the jobs of the latest processed set (as before the restart).
            produced = [
                r
                for r in records
                if r.fingerprint != fingerprint
                and r.state not in (JobState.UNROUTED, JobState.SKIPPED)
            ]
            latest = (
                max(produced, key=lambda r: r.created).fingerprint if produced else None
            )
            older = tuple(r.job_id for r in produced if r.fingerprint == latest)
            if current:
                self.tracker.restore(
                    series.study_uid,
                    series.series_uid,
                    series.sop_uids,
                    fingerprint,
                    tuple(r.job_id for r in current),
                    series.calling_ae,
                    series.called_ae,
                )
                for record in current:
                    if not record.state.finished and record.spec is not None:
                        self._requeue(record)
            else:
                self.tracker.restore(
                    series.study_uid,
                    series.series_uid,
                    series.sop_uids,
                    None,
                    older,
                    series.calling_ae,
                    series.called_ae,
                )
                log.info(
                    "recovered series %s (%d instances) awaiting processing",
                    series.series_uid,
                    len(series.sop_uids),
                )

    def _requeue(self, record: JobRecord) -> None:
        assert record.spec is not None
        attempt = record.attempt + (1 if record.state == JobState.RUNNING else 0)
        spec = JobSpec.from_dict({**record.spec, "attempt": attempt})
        self.jobs.update(
            record.job_id, state=JobState.QUEUED, attempt=attempt, spec=spec.to_dict()
        )
        log.info("re-queued job %s (attempt %d) after restart", record.job_id, attempt)
        self.queue.submit(spec)

    # -- scheduling --------------------------------------------------------------------------

    def _schedule(self) -> None:
        while not self._stop.wait(SCHEDULER_INTERVAL_SECONDS):
            try:
                self.process_due()
            except Exception:  # outlive one bad series; logged with traceback
                log.exception("scheduler pass failed")

    def process_due(self) -> list[str]:
        """Route and queue every complete, unprocessed series; returns the job ids created."""
        created: list[str] = []
        for due in self.tracker.due():
            created.extend(self._dispatch(due))
        return created

    def _dispatch(self, due: DueSeries) -> list[str]:
        series_dir = self.spool.series_dir(due.study_uid, due.series_uid)
        try:
            header = pydicom.dcmread(
                series_dir / f"{min(due.sop_uids)}.dcm", stop_before_pixels=True
            )
            files = [series_dir / f"{uid}{INSTANCE_SUFFIX}" for uid in sorted(due.sop_uids)]
            decision = self._router(
                self.config, series_tags(header), due.calling_ae, due.called_ae, files
            )
        except Exception as exc:  # recorded on the series, not raised
            log.exception("routing series %s failed", due.series_uid)
            return [
                self._record_unrouted(
                    due, f"routing failed: {type(exc).__name__}: {exc}"
                )
            ]
        if not decision.routes:
            # The reason quotes tag values (maybe patient data): it goes to the job record only.
            state = JobState.SKIPPED if decision.skipped else JobState.UNROUTED
            log.info(
                "series %s (%d instances) %s, see its job record",
                due.series_uid,
                len(due.sop_uids),
                state.value,
            )
            return [self._record_unrouted(due, decision.reason or "no route matched", state)]
        job_ids = []
        for route in decision.routes:
            job_id = make_job_id(
                due.study_uid, due.series_uid, due.fingerprint, route.name
            )
            spec = JobSpec(
                job_id=job_id,
                study_uid=due.study_uid,
                series_uid=due.series_uid,
                series_dir=str(series_dir),
                result_dir=str(self.results_dir / job_id),
                route=route.name,
                instruction=route.instruction,
                planner=route.planner or self.config.planner.backend,
                tools=route.tools,
                destinations=list(route.send_to),
                supersedes=self._predecessor_reports(due.supersedes, route.name),
                instance_uids=sorted(due.sop_uids),
            )
            self.jobs.save(
                JobRecord(
                    job_id=job_id,
                    study_uid=due.study_uid,
                    series_uid=due.series_uid,
                    state=JobState.QUEUED,
                    route=route.name,
                    fingerprint=due.fingerprint,
                    instance_count=len(due.sop_uids),
                    result_dir=spec.result_dir,
                    destinations=spec.destinations,
                    calling_ae=due.calling_ae,
                    called_ae=due.called_ae,
                    supersedes=list(due.supersedes),
                    spec=spec.to_dict(),
                )
            )
            log.info(
                "series %s (%d instances) -> route %s, job %s%s",
                due.series_uid,
                len(due.sop_uids),
                route.name,
                job_id,
                f" (supersedes {', '.join(due.supersedes)})" if due.supersedes else "",
            )
            self.queue.submit(spec)
            job_ids.append(job_id)
        self.tracker.mark_processed(
            due.study_uid, due.series_uid, due.fingerprint, tuple(job_ids)
        )
        return job_ids

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
            record = self.jobs.get(job_id)
            if record is None or record.route != route or record.result_dir is None:
                continue
            if record.state is JobState.FAILED:
                pending.extend(record.supersedes)
            else:
                reports.append(str(Path(record.result_dir) / SR_FILE))
        return reports

    def _record_unrouted(
        self, due: DueSeries, reason: str, state: JobState = JobState.UNROUTED
    ) -> str:
        job_id = make_job_id(due.study_uid, due.series_uid, due.fingerprint, None)
        self.jobs.save(
            JobRecord(
                job_id=job_id,
                study_uid=due.study_uid,
                series_uid=due.series_uid,
                state=state,
                route=None,
                fingerprint=due.fingerprint,
                instance_count=len(due.sop_uids),
                error=reason,
                finished=time.time(),
                calling_ae=due.calling_ae,
                called_ae=due.called_ae,
                supersedes=list(due.supersedes),
            )
        )
        # Unrouted series are not superseded by later ones: they produced nothing.
        self.tracker.mark_processed(
            due.study_uid, due.series_uid, due.fingerprint, due.supersedes
        )
        return job_id

    # -- results -----------------------------------------------------------------------------

    def _job_done(self, record: JobRecord, manifest: dict[str, Any]) -> None:
        """Hand a finished job's files to the outbox for its route's destinations."""
        if not record.destinations:
            return
        if self._outbox is None:
            log.warning(
                "job %s: no outbox, results stay in %s",
                record.job_id,
                record.result_dir,
            )
            return
        base = Path(record.result_dir or ".")
        files = [
            p if p.is_absolute() else base / p
            for p in (Path(f) for f in manifest.get("files", []))
        ]
        # Overlays standing in for the SEG where a destination refuses it (accepts_seg: false).
        fallbacks = {
            str(base / seg): [base / p for p in others]  # base / absolute = absolute
            for seg, others in (manifest.get("fallback_files") or {}).items()
        }
        if fallbacks:
            self._outbox.enqueue(
                record.job_id, files, list(record.destinations), fallbacks=fallbacks
            )
        else:
            self._outbox.enqueue(record.job_id, files, list(record.destinations))
