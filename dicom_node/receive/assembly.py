"""Series assembly: deciding when a series is complete, and remembering what was processed.

A PACS never says "this series is done" (MISSION: DICOM facts). The node combines two signals:
every association that carried instances of the series has ended (released, aborted or dropped),
and no instance arrived for ``series_quiet_seconds``. :func:`series_complete` is that rule as a
pure function; :class:`SeriesTracker` holds the per-series state it is applied to.

Settled series: a series whose associations have all ended and which has had no instance for a
short while is very likely complete already; :meth:`SeriesTracker.settled` lists them, with the
count of instances received so far (``arrivals``, duplicates included), so the node can do work
ahead during the rest of the quiet period and tell, once it ends, whether anything arrived since.

Late instances: each processed series remembers the fingerprint of the instance set its job saw.
An instance arriving later changes the fingerprint, the series becomes due again after the quiet
period, and the new job supersedes the old one (its record names the job it supersedes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from image_model.fingerprint import instance_set_fingerprint


def series_complete(
    last_arrival: float,
    open_associations: int,
    quiet_seconds: float,
    require_release: bool,
    now: float,
) -> bool:
    """True when a series may be processed.

    ``last_arrival`` and ``now`` are on the same monotonic clock (seconds). A series still being
    carried by an open association is never complete when ``require_release`` is set; otherwise the
    quiet period alone decides.
    """
    if require_release and open_associations > 0:
        return False
    return now - last_arrival >= quiet_seconds


SeriesKey = tuple[str, str]  # (StudyInstanceUID, SeriesInstanceUID)


@dataclass
class SeriesState:
    study_uid: str
    series_uid: str
    instances: set[str] = field(default_factory=set)
    last_arrival: float = 0.0
    #: Associations that delivered instances of this series and have not ended yet.
    open_associations: set[str] = field(default_factory=set)
    calling_ae: str = ""
    called_ae: str = ""
    #: Fingerprint of the instance set last handed to routing (None: never).
    processed_fingerprint: str | None = None
    #: Job ids created for ``processed_fingerprint`` (a later job supersedes these).
    processed_jobs: tuple[str, ...] = ()
    #: Unix time the first instance not yet handed on arrived (None: none since, or unknown
    #: after a restart); a job's ``received`` stage.
    first_arrival: float | None = None
    #: Instances received so far, duplicates included: any arrival changes it, even one that
    #: leaves the instance set (and its fingerprint) as it was but rewrote a file.
    arrivals: int = 0
    #: ``fingerprint`` of ``instances`` as last computed (None: changed since). The scheduler
    #: asks every series for it several times a second; a node holding thousands of finished
    #: series must not hash them all again each time.
    _fingerprint: str | None = field(default=None, repr=False, compare=False)

    @property
    def key(self) -> SeriesKey:
        return (self.study_uid, self.series_uid)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = instance_set_fingerprint(self.instances)
        return self._fingerprint

    def changed(self) -> None:
        """``instances`` was changed in place: the fingerprint is computed again when asked."""
        self._fingerprint = None


@dataclass(frozen=True)
class DueSeries:
    """A complete series whose current instance set has not been processed yet (a snapshot)."""

    study_uid: str
    series_uid: str
    sop_uids: frozenset[str]
    fingerprint: str
    calling_ae: str
    called_ae: str
    #: Jobs of the previous instance set, which the new jobs supersede.
    supersedes: tuple[str, ...]
    #: Unix time the set's first new instance arrived (None: unknown).
    first_arrival: float | None = None
    #: :attr:`SeriesState.arrivals` when the snapshot was taken.
    arrivals: int = 0


class SeriesTracker:
    """Thread-safe per-series state shared by the DIMSE handlers and the scheduler thread."""

    def __init__(
        self,
        quiet_seconds: float,
        require_release: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_seconds = quiet_seconds
        self.require_release = require_release
        self._clock = clock
        self._lock = threading.Lock()
        self._series: dict[SeriesKey, SeriesState] = {}
        self._assoc_series: dict[str, set[SeriesKey]] = {}

    def instance_received(
        self,
        study_uid: str,
        series_uid: str,
        sop_uid: str,
        association: str,
        calling_ae: str = "",
        called_ae: str = "",
    ) -> bool:
        """Record one stored instance; returns False when the series already held it."""
        now = self._clock()
        with self._lock:
            state = self._series.setdefault(
                (study_uid, series_uid), SeriesState(study_uid, series_uid)
            )
            is_new = sop_uid not in state.instances
            if is_new and state.first_arrival is None:
                state.first_arrival = time.time()
            if is_new:
                state.instances.add(sop_uid)
                state.changed()
            state.last_arrival = now
            state.arrivals += 1
            state.open_associations.add(association)
            if calling_ae:
                state.calling_ae, state.called_ae = calling_ae, called_ae
            self._assoc_series.setdefault(association, set()).add(state.key)
            return is_new

    def association_ended(self, association: str) -> None:
        """Release, abort or a dropped connection: the association no longer holds its series open."""
        with self._lock:
            for key in self._assoc_series.pop(association, set()):
                state = self._series.get(key)
                if state is not None:
                    state.open_associations.discard(association)

    def restore(
        self,
        study_uid: str,
        series_uid: str,
        sop_uids: Iterable[str],
        processed_fingerprint: str | None,
        processed_jobs: tuple[str, ...] = (),
        calling_ae: str = "",
        called_ae: str = "",
    ) -> None:
        """Rebuild a series from the spool after a restart; its quiet period starts now."""
        with self._lock:
            self._series[(study_uid, series_uid)] = SeriesState(
                study_uid,
                series_uid,
                instances=set(sop_uids),
                last_arrival=self._clock(),
                calling_ae=calling_ae,
                called_ae=called_ae,
                processed_fingerprint=processed_fingerprint,
                processed_jobs=processed_jobs,
            )

    def due(self) -> list[DueSeries]:
        """Complete series whose current instance set differs from the processed one."""
        return self._unprocessed(self.quiet_seconds, complete=True)

    def settled(self, settle_seconds: float) -> list[DueSeries]:
        """Series not complete yet but likely to be: every association that carried them has
        ended (when ``require_release``) and nothing arrived for ``settle_seconds``; their current
        instance set is unprocessed. What the node may do ahead for them (routing, a speculative
        run) holds only if :attr:`DueSeries.arrivals` is the same once they are due."""
        return self._unprocessed(min(settle_seconds, self.quiet_seconds), complete=False)

    def _unprocessed(self, quiet_seconds: float, complete: bool) -> list[DueSeries]:
        """Unprocessed series past ``quiet_seconds``; with ``complete`` False, only those still
        short of the quiet period itself."""
        now = self._clock()
        out = []
        with self._lock:
            for state in self._series.values():
                if not series_complete(
                    state.last_arrival,
                    len(state.open_associations),
                    quiet_seconds,
                    self.require_release,
                    now,
                ):
                    continue
                if not complete and now - state.last_arrival >= self.quiet_seconds:
                    continue
                fingerprint = state.fingerprint
                if fingerprint == state.processed_fingerprint:
                    continue
                out.append(
                    DueSeries(
                        state.study_uid,
                        state.series_uid,
                        frozenset(state.instances),
                        fingerprint,
                        state.calling_ae,
                        state.called_ae,
                        state.processed_jobs,
                        state.first_arrival,
                        state.arrivals,
                    )
                )
        return out

    def mark_processed(
        self, study_uid: str, series_uid: str, fingerprint: str, jobs: tuple[str, ...]
    ) -> None:
        """The instance set ``fingerprint`` was handed on (jobs created, or recorded unrouted)."""
        with self._lock:
            state = self._series.get((study_uid, series_uid))
            if state is not None:
                state.processed_fingerprint = fingerprint
                state.processed_jobs = jobs
                if state.fingerprint == fingerprint:
                    state.first_arrival = None

    def forget(self, study_uid: str, series_uid: str, sop_uids: Iterable[str]) -> None:
        """Retention removed these instances from the spool: drop them from the series' state.
        A series left without instances is forgotten; one that received new instances meanwhile
        keeps those, unprocessed and superseding nothing (the jobs they would replace are gone)."""
        with self._lock:
            key = (study_uid, series_uid)
            state = self._series.get(key)
            if state is None:
                return
            state.instances.difference_update(sop_uids)
            state.changed()
            if not state.instances and not state.open_associations:
                del self._series[key]
            else:
                state.processed_fingerprint, state.processed_jobs = None, ()

    def snapshot(self) -> list[SeriesState]:
        """Copies of every series' state (for status displays and tests)."""
        with self._lock:
            return [
                SeriesState(
                    s.study_uid,
                    s.series_uid,
                    set(s.instances),
                    s.last_arrival,
                    set(s.open_associations),
                    s.calling_ae,
                    s.called_ae,
                    s.processed_fingerprint,
                    s.processed_jobs,
                    s.first_arrival,
                    s.arrivals,
                )
                for s in self._series.values()
            ]
