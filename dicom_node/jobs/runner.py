"""How one job runs on a worker, and what a queue reports about its runs.

A queue backend (an :class:`Executor`: the embedded pool, or the node side of Celery) runs jobs
somewhere and reports each run to the one owner of job state
(:class:`~dicom_node.jobs.service.JobService`) as :class:`RunEvent` s: started, done, failed
(classified transient or permanent by :mod:`dicom_node.jobs.retry`) or lost (the run never
ended: its worker died). The owner decides what follows (record, retry, give up, hand the results
to the outbox); the backend decides nothing about the job's fate.

Wherever it runs, a run is :func:`execute`: the runner (the pipeline, or a custom one for tests
and ``serve --runner``) and then the manifest, written once by :func:`write_manifest`.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from config.schema import AppConfig
from dicom_node.jobs.manifest import Manifest, write_manifest
from dicom_node.jobs.pipeline import WorkerContext, run_ahead, run_job
from dicom_node.jobs.retry import Failure, input_failure
from dicom_node.jobs.spec import JobSpec

#: A job runner: the spec in, the manifest out (a :class:`Manifest` or a plain mapping that
#: validates as one). Raises :class:`~dicom_node.jobs.retry.JobFailed` for a series it cannot
#: process; any other exception is classified by :func:`dicom_node.jobs.retry.classify`.
JobRunner = Callable[[JobSpec], "Manifest | Mapping[str, Any]"]


def execute(spec: JobSpec, runner: JobRunner) -> Manifest:
    """Run one job here and write its manifest into its result folder. A DICOM library's error
    about the series' data (a header value it cannot read: hostile or broken input) is raised as
    :class:`JobFailed`, without the value (retry.input_failure)."""
    try:
        manifest = Manifest.coerce(runner(spec))
    except Exception as exc:
        failure = input_failure(exc)
        if failure is None:
            raise
        raise failure from None
    write_manifest(Path(spec.result_dir), manifest)
    return manifest


@runtime_checkable
class RunsAhead(Protocol):
    """A runner that can run a job's work before the job exists (the pipeline): what the
    embedded pool asks during a series' quiet period (:mod:`dicom_node.jobs.speculation`)."""

    def __call__(self, spec: JobSpec) -> Manifest | Mapping[str, Any]: ...

    def run_ahead(self, spec: JobSpec, keep_going: Callable[[], bool]) -> None:
        """Run ``spec``'s work now, keeping the outcome for its job; stop between stages once
        ``keep_going`` says so."""

    def discard_ahead(self, study_uid: str, series_uid: str) -> None:
        """Drop the outcome of the series' run ahead (something arrived for it)."""


class PipelineRunner:
    """The default runner: :func:`run_job` with one :class:`WorkerContext` per process, built now
    (tool settings are checked at start; models load on first use and stay warm)."""

    def __init__(self, config: AppConfig) -> None:
        self.ctx = WorkerContext.build(config)

    def __call__(self, spec: JobSpec) -> Manifest:
        return run_job(spec, self.ctx)

    def run_ahead(self, spec: JobSpec, keep_going: Callable[[], bool]) -> None:
        run_ahead(spec, self.ctx, keep_going)

    def discard_ahead(self, study_uid: str, series_uid: str) -> None:
        self.ctx.ahead.discard(study_uid, series_uid)


def pipeline_runner(config: AppConfig) -> JobRunner:
    """The default runner (:class:`PipelineRunner`)."""
    return PipelineRunner(config)


class RunKind(str, enum.Enum):
    STARTED = "started"
    #: The run produced its results and wrote the manifest.
    DONE = "done"
    #: The run ended without a result (``failure`` says why and whether to retry).
    FAILED = "failed"
    #: The run never ended: its worker (or, in the embedded pool, the node) died mid-run.
    LOST = "lost"


@dataclass(frozen=True)
class RunEvent:
    job_id: str
    kind: RunKind
    #: Number of the run (1 for the first start of the job).
    attempt: int
    #: Celery worker hostname (None in the embedded pool).
    worker: str | None = None
    at: float = field(default_factory=time.time)
    failure: Failure | None = None
    #: Set when the queue already recorded the job as finished for good and will not run it
    #: again whatever the owner decides (a Celery job that used every attempt).
    final: bool = False


Report = Callable[[RunEvent], None]


class Executor(Protocol):
    """A queue backend: runs jobs and reports their runs. One per job service."""

    def start(self, report: Report) -> None:
        """Start running; events go to ``report`` (called from the backend's threads)."""

    def run(self, spec: JobSpec, attempt: int, not_before: float | None = None) -> None:
        """Run the job (as run number ``attempt``) once a worker is free, not before the Unix
        time ``not_before``. Never blocks on a worker or a broker. Attempt 1 starts the job
        afresh: whatever the backend remembers of earlier runs is dropped."""

    def adopt(self, spec: JobSpec, running: bool, attempt: int, not_before: float | None) -> None:
        """Take on a job the previous owner left unfinished (after a restart): ``running`` says
        whether its record shows a run in progress then."""

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; let running ones finish up to ``timeout``. Jobs not started stay
        ``queued`` in their records and are adopted again at the next start."""


@runtime_checkable
class Speculates(Protocol):
    """A queue backend that runs a job's work ahead, during its series' quiet period (the
    embedded pool; Celery workers do not: their memory is not the node's)."""

    def speculate(self, spec: JobSpec) -> bool:
        """Run ``spec``'s work ahead when a worker is idle (replacing any earlier request that
        has not started); False when this backend's runner cannot."""

    def discard(self, study_uid: str, series_uid: str) -> None:
        """Drop the series' work ahead, requested, running or done."""
