"""The node: wires the receive side to the job side.

Data flow (top to bottom, one series):

    SCP (scp.py, handlers.py) --C-STORE--> Spool (spool.py) + SeriesTracker (assembly.py)
    scheduler thread, every ~0.2 s: SeriesTracker.due() -> header -> routing.route_series()
        (done ahead, in the quiet period, for a settled series: ahead.py; the job may run ahead too)
        -> JobService.submit(series, one request per route) (jobs/service.py): job records,
           the queue (the embedded pool, or Celery workers when queue.broker_url is set)
    worker: job runner(JobSpec) -> results + manifest -> JobService -> Outbox.enqueue(...)

With ``api.enabled`` an HTTP API (http_api.py) runs beside them: status, job records, and
questions about a study in a PACS (pulled with qr/retrieve.py and submitted to the same
JobService, so they share the node's queue and outbox), the web dashboard (dashboard/) and the
Prometheus metrics (metrics.py). Every part tells the node's :class:`Telemetry` what passes it
(telemetry.py): the audit trail (audit.py) and the metrics are written there.

A restart rebuilds everything from disk (:meth:`Node.recover`): spool folders are the truth for
instances, job records for what was processed.

The disk: below the low-space watermark (dicom_node/disk.py) the SCP refuses instances with
status 0xA700; retention (retention.py) removes finished, delivered series by age, size quota
and free space, inside the node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, TextIO

from pydicom.dataset import Dataset

from config.schema import AppConfig, RouteConfig
from dicom_node.app.ahead import SETTLE_SECONDS, Ahead
from dicom_node.app.audit import AUDIT_FOLDER, AuditTrail
from dicom_node.app.metrics import NodeMetrics, NodeState
from dicom_node.app.receiver import qr_service
from dicom_node.app.retention import Retention, settle_trash
from dicom_node.app.telemetry import Telemetry
from dicom_node.data_dir import JOBS_FOLDER, RESULTS_FOLDER, DataDirBusy, lock_data_dir
from dicom_node.deliver.outbox import Outbox
from dicom_node.disk import DiskGuard
from dicom_node.events import Emit, Hop, HopEvent, ignore
from dicom_node.heap import HeapTrimmer, freeze_start_up
from dicom_node.jobs.retry import RetryPolicy
from dicom_node.jobs.runner import JobRunner
from dicom_node.jobs.service import JobService, OutboxLike
from dicom_node.jobs.spec import JobRequest, SeriesRef
from dicom_node.jobs.store import JobRecord, JobState, JobStore
from dicom_node.log_repeats import RepeatedLog
from dicom_node.receive.assembly import DueSeries, SeriesTracker
from dicom_node.receive.handlers import HandlerDeps
from dicom_node.receive.processes import ReceiverPool, receiver_count
from dicom_node.receive.refusals import Refusals
from dicom_node.receive.scp import policy_from_config, start_scp
from dicom_node.receive.spool import INSTANCE_SUFFIX, CorruptInstance, Spool
from dicom_node.tls import server_tls_context
from image_model.fingerprint import instance_set_fingerprint

if TYPE_CHECKING:
    from dicom_node.app.http_api import HttpApi

log = logging.getLogger(__name__)

#: How often complete series are looked for. A pass over the tracker costs microseconds; the
#: wait adds to every series' time from its quiet period's end to its job (issue 14: within 1 s,
#: with the route's thorax check reading the series' headers taking most of it).
SCHEDULER_INTERVAL_SECONDS = 0.2


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


def default_outbox(config: AppConfig, emit: Emit = ignore) -> Outbox:
    return Outbox(config.node.data_dir, config, emit=emit)


def series_tags(header: Dataset) -> dict[str, Any]:
    """Matchable keyword -> value of one instance's header (routing's own extraction)."""
    from dicom_node.receive.routing import series_tags_from_dataset

    return series_tags_from_dataset(header)


class Listener(Protocol):
    """The receive side as the node holds it: one SCP in this process (scp.py) or the receiver
    processes (processes.py)."""

    @property
    def port(self) -> int: ...

    refusals: Refusals

    def stop(self) -> None: ...


#: The module a receiver process runs (``node.receivers`` above 1).
RECEIVER_ENTRY = "dicom_node.app.receiver"


@dataclass(frozen=True)
class _Deferred:
    """A due series whose header could not be read for now (a transient I/O error)."""

    tries: int
    not_before: float


class Node:
    def __init__(
        self,
        config: AppConfig,
        runner: JobRunner | None = None,
        router: Router | None = None,
        outbox: OutboxLike | None = None,
        use_default_outbox: bool = True,
        data_dir_lock: TextIO | None = None,
    ) -> None:
        """``runner`` runs every job of the embedded pool, the HTTP API's questions included
        (default: the pipeline); with ``queue.broker_url`` set, Celery workers run them all.
        The node owns its data_dir while it runs: :meth:`start` takes the data_dir lock
        (:mod:`dicom_node.data_dir`) unless ``data_dir_lock`` already holds it."""
        self.config = config
        # Absolute, so job specs stay valid for workers running elsewhere (another cwd, Celery).
        data_dir = Path(config.node.data_dir).resolve()
        self.spool = Spool.for_node(data_dir, config.node)
        self.jobs = JobStore(data_dir / JOBS_FOLDER)
        self.results_dir = data_dir / RESULTS_FOLDER
        self.tracker = SeriesTracker(
            config.node.series_quiet_seconds, config.node.require_association_release
        )
        self._router = router or default_router
        self.disk = DiskGuard(data_dir, config.retention)
        self.metrics = NodeMetrics(NodeState(
            jobs=self.jobs.summaries, outbox_depth=self._outbox_depth, disk=self._disk_state,
            dropped=self.refusals, receivers=self._receiver_state,
        ))
        audit = AuditTrail(data_dir / AUDIT_FOLDER, config.audit) if config.audit.enabled else None
        self.telemetry = Telemetry(self.metrics, audit, self.jobs,
                                   record_sent=lambda job_id, at: self.job_service.record_sent(job_id, at))
        self._outbox = (
            outbox
            if outbox is not None
            else (default_outbox(config, self.telemetry.emit) if use_default_outbox else None)
        )
        from dicom_node.jobs.queues import make_executor

        # The one way in for work: routed series, retrieves and questions alike.
        self.job_service = JobService(
            config, self.jobs, make_executor(config, runner), self._outbox, self.results_dir,
            emit=self.telemetry.emit,
        )
        self.retention = Retention(
            config, self.jobs,
            self._outbox if isinstance(self._outbox, Outbox) else Outbox(data_dir, config),
            self.disk, tracker=self.tracker, in_progress=self.job_service.in_progress,
            forget_jobs=self.job_service.forget,
        )
        self._routing_policy = RetryPolicy.from_config(config.queue)
        #: Routing (and, with node.work_ahead, the job) done in a settled series' quiet period.
        self._ahead: Ahead[RoutingDecision] = Ahead(self._route, self._start_ahead,
                                                    self.job_service.discard_ahead)
        #: Due series whose header read failed for now, by (study, series, fingerprint).
        self._deferred: dict[tuple[str, str, str], _Deferred] = {}
        self._scheduler_errors = RepeatedLog(log)
        self._lock = data_dir_lock
        self._scp: Listener | None = None
        self._stop = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._api: HttpApi | None = None  # imported only when api.enabled

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, freeze: bool = False) -> None:
        """Recover state from disk, start workers, outbox, scheduler, then listen (last: no
        instance is acknowledged before the node can process it). ``freeze``: exempt what start-up
        made from the garbage collector's later passes, just before listening (heap.py:
        ``mmed-node serve`` does; a test that starts nodes in its own process does not)."""
        data_dir = Path(self.config.node.data_dir).resolve()
        if self._lock is None:
            self._lock = lock_data_dir(data_dir)
            if self._lock is None:
                raise DataDirBusy(data_dir)
        self.job_service.start()
        try:
            settle_trash(data_dir)
            self.recover()
            start_outbox = getattr(self._outbox, "start", None)
            if callable(start_outbox):
                start_outbox()
            self._stop.clear()
            self._scheduler = threading.Thread(
                target=self._schedule, name="mmed-scheduler", daemon=True
            )
            self._scheduler.start()
            if freeze:
                freeze_start_up()
            self._scp = self._listen(data_dir)
            self.retention.start()
            if self.config.api.enabled:
                from dicom_node.app.dashboard.site import Site
                from dicom_node.app.http_api import HttpApi

                site = Site(self.config, self.job_service, self._outbox, self.metrics)
                self._api = HttpApi(self.config, self.job_service, self.spool, site=site)
                self._api.start()
        except BaseException:
            self.stop()
            raise

    def _listen(self, data_dir: Path) -> Listener:
        """Start receiving: in this process, or in ``node.receivers`` receiver processes."""
        count = receiver_count(self.config.node)
        if count > 1:
            # A TLS setup error shows here, as with one process, not in every receiver's log.
            if self.config.node.tls.enabled:
                server_tls_context(self.config.node.tls)
            return ReceiverPool(self.config, count, RECEIVER_ENTRY, self.tracker, self.telemetry.emit,
                                data_dir).start()
        deps = HandlerDeps(
            self.spool, self.tracker, policy_from_config(self.config.node), disk=self.disk,
            emit=self.telemetry.emit,
        )
        return start_scp(self.config.node, deps, qr_service(self.config, data_dir, self.telemetry.emit, self.spool))

    @property
    def receivers(self) -> ReceiverPool | None:
        """The receiver processes (None: receiving in this process)."""
        return self._scp if isinstance(self._scp, ReceiverPool) else None

    def _receiver_state(self) -> tuple[int, int] | None:
        pool = self.receivers
        return None if pool is None else (len(pool.pids()), pool.restarts)

    def _outbox_depth(self) -> dict[str, int]:
        return self._outbox.depth() if isinstance(self._outbox, Outbox) else {}

    def _disk_state(self) -> tuple[int, bool] | None:
        space = self.disk.space()
        return None if space is None else (space.free, self.disk.low())

    @property
    def port(self) -> int:
        if self._scp is None:
            raise RuntimeError("node not started")
        return self._scp.port

    def refusals(self) -> dict[str, int]:
        """Peers dropped for breaking a limit since start, per reason (receive/refusals.py)."""
        return self._scp.refusals.counts() if self._scp is not None else {}

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
        self.retention.stop(timeout)
        self.job_service.stop(timeout)
        stop_outbox = getattr(self._outbox, "stop", None)
        if callable(stop_outbox):
            stop_outbox()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- restart -----------------------------------------------------------------------------

    def recover(self) -> None:
        """Rebuild series state from the spool and job records; take up unfinished work.

        Per spooled series: if its current instance set has job records that all finished, it
        is done; unfinished records (queued/running when the node died) go back to the job
        service (a run in progress then was lost with the node); a set with no records at all
        waits for its quiet period and is then routed as usual.
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
                    self.job_service.adopt(record)
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

    # -- scheduling --------------------------------------------------------------------------

    def _schedule(self) -> None:
        trimmer = HeapTrimmer()
        while not self._stop.wait(SCHEDULER_INTERVAL_SECONDS):
            trimmer.tick()
            try:
                self.process_due()
            except Exception as exc:  # noqa: BLE001 - outlive a bad pass; logged in full once, then counted
                self._scheduler_errors.error("scheduler pass failed", exc)
            else:
                self._scheduler_errors.clear("scheduler passes succeed again")

    def process_due(self) -> list[str]:
        """Route and queue every complete, unprocessed series; returns the job ids created."""
        created: list[str] = []
        now = time.monotonic()
        for due in self.tracker.due():
            deferred = self._deferred.get((due.study_uid, due.series_uid, due.fingerprint))
            if deferred is not None and now < deferred.not_before:
                continue
            created.extend(self._dispatch(due))
        self._ahead.look(self.tracker.settled(SETTLE_SECONDS))
        return created

    def _series_ref(self, due: DueSeries, complete_at: float | None) -> SeriesRef:
        return SeriesRef(
            study_uid=due.study_uid, series_uid=due.series_uid,
            series_dir=str(self.spool.series_dir(due.study_uid, due.series_uid)),
            sop_uids=tuple(sorted(due.sop_uids)), fingerprint=due.fingerprint,
            calling_ae=due.calling_ae, called_ae=due.called_ae, supersedes=due.supersedes,
            received_at=due.first_arrival, complete_at=complete_at,
        )

    def _route(self, due: DueSeries) -> RoutingDecision:
        """The series' routes, from its first readable header and (a route's image check) its
        instance files."""
        series_dir = self.spool.series_dir(due.study_uid, due.series_uid)
        files = [series_dir / f"{uid}{INSTANCE_SUFFIX}" for uid in sorted(due.sop_uids)]
        # Under the parse policy: a file it refuses is quarantined, the next one read.
        header = self.spool.first_header(due.study_uid, due.series_uid, due.sop_uids)
        return self._router(self.config, series_tags(header), due.calling_ae, due.called_ae, files)

    def _start_ahead(self, settled: DueSeries, decision: RoutingDecision) -> None:
        """Run the series' first routed job ahead (node.work_ahead): one at a time, so one."""
        if self.config.node.work_ahead and decision.routes:
            self.job_service.speculate(self._series_ref(settled, None),
                                       JobRequest.for_route(decision.routes[0]))

    def _dispatch(self, due: DueSeries) -> list[str]:
        complete_at = time.time()
        series = self._series_ref(due, complete_at)
        key = (due.study_uid, due.series_uid, due.fingerprint)
        try:
            decision = self._ahead.take(due) or self._route(due)
        except OSError as exc:
            # Transient (an I/O error, a volume that went away): the series stays due and is
            # tried again after a backoff; once its files read it is routed as usual.
            tries = self._deferred[key].tries + 1 if key in self._deferred else 1
            delay = self._routing_policy.backoff(tries - 1)
            self._deferred[key] = _Deferred(tries, time.monotonic() + delay)
            log.warning("series %s: header not readable (%s: %s); trying again in %.1f s "
                        "(try %d)", due.series_uid, type(exc).__name__, exc.strerror or exc,
                        delay, tries)
            return []
        except CorruptInstance as exc:  # the parse policy refused every file (all quarantined)
            self._deferred.pop(key, None)
            log.warning("series %s not routed: %s", due.series_uid, exc)
            return [self._unrouted(due, series, f"routing failed: {exc}")]
        except Exception as exc:  # not DICOM, or a routing bug: recorded on the series, not raised
            self._deferred.pop(key, None)
            log.exception("routing series %s failed", due.series_uid)
            self._series_hop(Hop.ROUTED, series, time.time(), outcome="error", routes=[])
            return [self._unrouted(due, series, f"routing failed: {type(exc).__name__}: {exc}")]
        self._deferred.pop(key, None)
        self._series_hop(Hop.RECEIVED, series, complete_at, instances=len(series.sop_uids),
                         first_arrival=series.received_at, calling_ae=series.calling_ae,
                         called_ae=series.called_ae)
        outcome = ("routed" if decision.routes else
                   "skipped" if decision.skipped else "unrouted")
        self._series_hop(Hop.ROUTED, series, time.time(), outcome=outcome,
                         routes=[route.name for route in decision.routes])
        if not decision.routes:
            # The reason quotes tag values (maybe patient data): it goes to the job record only.
            state = JobState.SKIPPED if decision.skipped else JobState.UNROUTED
            log.info(
                "series %s (%d instances) %s, see its job record",
                due.series_uid,
                len(due.sop_uids),
                state.value,
            )
            return [self._unrouted(due, series, decision.reason or "no route matched", state)]
        records = self.job_service.submit(
            series, [JobRequest.for_route(route) for route in decision.routes]
        )
        job_ids = tuple(r.job_id for r in records)
        self.tracker.mark_processed(due.study_uid, due.series_uid, due.fingerprint, job_ids)
        return list(job_ids)

    def _series_hop(self, hop: Hop, series: SeriesRef, at: float, **detail: Any) -> None:
        self.telemetry.emit(HopEvent(hop, series.study_uid, series.series_uid, None, at, detail))

    def _unrouted(
        self, due: DueSeries, series: SeriesRef, reason: str, state: JobState = JobState.UNROUTED
    ) -> str:
        record = self.job_service.record_unrouted(series, reason, state)
        # Unrouted series are not superseded by later ones: they produced nothing.
        self.tracker.mark_processed(
            due.study_uid, due.series_uid, due.fingerprint, due.supersedes
        )
        return record.job_id
