"""Work done for a job before the job exists: a speculative run during the series' quiet period.

A series whose associations ended and that had no instance for a short while is most likely
complete; the node then knows the job it will submit once the quiet period ends (its spec: the
job id and every input are derived from the instance set and the route). The embedded pool runs
that spec ahead (:meth:`~dicom_node.jobs.embedded.EmbeddedExecutor.speculate`): load, tools and
encode, keeping the outcome in memory (:class:`Prepared`): nothing is written, sent or recorded.
When the real job with an equal spec runs, it adopts the outcome and goes on from there
(:func:`~dicom_node.jobs.pipeline.run_job`); a spec that differs in anything (another instance
set, route, predecessors...) adopts nothing. The node discards the outcome when anything arrived
for the series after the run began (:meth:`AheadSlot.discard`), even an instance that leaves the
instance set as it was.

One :class:`AheadSlot` per worker process holds at most one speculative run, running or done.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from agent.loop import AgentResult
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.telemetry import RunTelemetry
from image_model.volume import Volume
from sr_templates.identity import OutputIdentity


@dataclass
class Encoded:
    """The encoded results of a run, not yet written."""

    datasets: list[Dataset]
    #: The earlier reports the SR names as predecessors (read when the run encoded).
    predecessors: list[Dataset]
    #: The outputs' derived identity (UIDs, series numbers) the datasets were built with; the
    #: overlays written beside them take the same.
    identity: OutputIdentity


@dataclass
class Prepared:
    """What a speculative run computed for ``spec``, stage by stage (a later stage is None when
    the run stopped before it, or was not to run it)."""

    spec: JobSpec
    volume: Volume
    result: AgentResult | None = None
    encoded: Encoded | None = None
    #: Seconds per stage of the speculative run (load, tools, encode).
    timings: dict[str, float] = field(default_factory=dict)
    telemetry: RunTelemetry = field(default_factory=RunTelemetry)
    #: Unix time the run ended.
    ended: float = 0.0


def talks_to_endpoints(config: Mapping[str, Any] | Any) -> bool:
    """Whether any configured component sends requests to an endpoint (a remote planner or
    tool): a speculative run must not disclose data for a job that may never exist, so it then
    only loads the series. ``config``: the app config's plain form (``model_dump()``)."""
    if isinstance(config, Mapping):
        return any(
            (key == "endpoint" and value) or talks_to_endpoints(value) for key, value in config.items()
        )
    if isinstance(config, (list, tuple)):
        return any(talks_to_endpoints(item) for item in config)
    return False


class AheadSlot:
    """The one speculative run of a worker process: the spec being run ahead, and the outcome
    of the last one, until a job adopts it or it is discarded."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: JobSpec | None = None
        #: The running spec's series was discarded while it ran: its outcome is dropped.
        self._dropped = False
        self._ready: Prepared | None = None

    def begin(self, spec: JobSpec) -> None:
        """A speculative run of ``spec`` starts (any earlier outcome is dropped)."""
        with self._cond:
            self._running, self._dropped, self._ready = spec, False, None

    def wanted(self, spec: JobSpec) -> bool:
        """Whether the run of ``spec`` should go on (checked between its stages)."""
        with self._cond:
            return self._running == spec and not self._dropped

    def publish(self, spec: JobSpec, prepared: Prepared | None) -> None:
        """The run of ``spec`` ended, with its outcome (None: nothing to keep)."""
        with self._cond:
            if self._running == spec:
                if prepared is not None and not self._dropped:
                    self._ready = prepared
                self._running = None
            self._cond.notify_all()

    def discard(self, study_uid: str, series_uid: str) -> None:
        """Something arrived for the series (or it is routed otherwise): drop its run."""
        with self._cond:
            running = self._running
            if running is not None and (running.study_uid, running.series_uid) == (study_uid, series_uid):
                self._dropped = True
            ready = self._ready
            if ready is not None and (ready.spec.study_uid, ready.spec.series_uid) == (study_uid, series_uid):
                self._ready = None

    def held(self) -> JobSpec | None:
        """The spec whose outcome is held for its job (for status and tests)."""
        with self._cond:
            return None if self._ready is None else self._ready.spec

    def take(self, spec: JobSpec) -> Prepared | None:
        """The outcome of a speculative run of exactly ``spec`` (waiting for one still running
        in another thread unless it was discarded), or None."""
        with self._cond:
            self._cond.wait_for(lambda: self._running != spec or self._dropped)
            ready = self._ready
            if ready is None:
                return None
            if ready.spec != spec:
                if (ready.spec.study_uid, ready.spec.series_uid) == (spec.study_uid, spec.series_uid):
                    self._ready = None  # the series' job runs without it: it would be held for nothing
                return None
            self._ready = None
            return ready
