"""What the scheduler does for a series before its quiet period ends.

A series whose associations ended and that had no instance for :data:`SETTLE_SECONDS` is
*settled* (:meth:`~dicom_node.receive.assembly.SeriesTracker.settled`): most likely complete.
The scheduler then routes it at once (the header read and the route's image check, which read
the series' files: the longest part of a hand-off, growing with the series), and, with
``node.work_ahead``, asks the job service to run the first routed job ahead
(:mod:`dicom_node.jobs.speculation`). When the series is due, :meth:`Ahead.take` gives the
routing decision back if nothing arrived since (same instance set, same arrival count, same
association AE titles); otherwise the work ahead is discarded and the series is routed afresh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from dicom_node.receive.assembly import DueSeries

log = logging.getLogger(__name__)

#: No instance for this long after the associations ended: the series is settled.
SETTLE_SECONDS = 0.5
#: A decision held this long without its series becoming due is dropped (the series was
#: forgotten, or will be routed afresh anyway).
HOLD_SECONDS = 600.0

Decision = TypeVar("Decision")


@dataclass(frozen=True)
class _Held(Generic[Decision]):
    #: What must be unchanged when the series is due for the decision to hold.
    key: tuple[str, int, str, str]
    #: None: routing ahead failed (not tried again for this state; the dispatch routes it and
    #: records why).
    decision: Decision | None
    at: float


def _key(series: DueSeries) -> tuple[str, int, str, str]:
    return (series.fingerprint, series.arrivals, series.calling_ae, series.called_ae)


class Ahead(Generic[Decision]):
    """Routing decisions made for settled series, by series, for the dispatch to take.

    ``route``: the series' decision (may raise: then nothing is held, and the dispatch routes it
    and handles the error); ``start``: called with each new decision (asks for the work ahead);
    ``discard``: the series' work ahead no longer holds. Used from the scheduler thread only."""

    def __init__(
        self,
        route: Callable[[DueSeries], Decision],
        start: Callable[[DueSeries, Decision], None],
        discard: Callable[[str, str], None],
    ) -> None:
        self._route, self._start, self._discard = route, start, discard
        self._held: dict[tuple[str, str], _Held[Decision]] = {}

    def look(self, settled: list[DueSeries]) -> None:
        """Route each settled series not routed ahead in its current state."""
        now = time.monotonic()
        for series_key in [k for k, held in self._held.items() if now - held.at > HOLD_SECONDS]:
            del self._held[series_key]
        for series in settled:
            series_key = (series.study_uid, series.series_uid)
            held = self._held.get(series_key)
            if held is not None and held.key == _key(series):
                continue
            if held is not None:
                del self._held[series_key]
                self._discard(*series_key)
            try:
                decision = self._route(series)
            except Exception as exc:  # noqa: BLE001 - the dispatch routes it again and records the error
                log.debug("series %s: routing ahead failed (%s)", series.series_uid, type(exc).__name__)
                self._held[series_key] = _Held(_key(series), None, now)
                continue
            self._held[series_key] = _Held(_key(series), decision, now)
            self._start(series, decision)

    def take(self, due: DueSeries) -> Decision | None:
        """The decision made ahead for ``due``, if nothing changed since; else None (and any
        work ahead for the series is discarded)."""
        held = self._held.pop((due.study_uid, due.series_uid), None)
        if held is not None and held.key == _key(due) and held.decision is not None:
            return held.decision
        self._discard(due.study_uid, due.series_uid)
        return None
