"""What the node's parts tell an observer (the audit trail, the metrics): typed events, one
function to receive them.

The receive side, the jobs service and the outbox each take an :data:`Emit` (default:
:func:`ignore`) and call it as work passes them; the application (``dicom_node/app/telemetry.py``)
passes the one that writes the audit trail and moves the metrics. Nothing here may carry patient
data: events hold ids (Study/Series Instance UIDs, job and delivery ids), AE titles, counts,
times and names the node chose (routes, tools, destinations), never header text, reasons that
quote tag values, or question texts.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


class Hop(str, enum.Enum):
    """One step of a series' way through the node (one audit line each)."""

    #: A series' instance set is complete (it arrived, and its quiet period passed).
    RECEIVED = "received"
    #: Routing decided: which routes fired (none: unrouted or skipped).
    ROUTED = "routed"
    #: A job was queued (first time, or again by an operator), or a delivery queued again by an
    #: operator (retry or resend: ``delivery_id``, ``resend``).
    QUEUED = "queued"
    STARTED = "started"
    #: One tool call of a job's agent (its name, how long, refused or not).
    TOOL = "tool"
    #: A job's SEG/SR were written (and the job is done).
    ENCODED = "encoded"
    #: One destination stored a job's results.
    SENT = "sent"
    #: A job's run or a delivery's attempt failed (``final`` says whether it is given up).
    FAILED = "failed"
    #: Something left for a remote endpoint, de-identified (agent/outbound.py).
    DISCLOSED = "disclosed"


@dataclass(frozen=True)
class HopEvent:
    hop: Hop
    study_uid: str = ""
    series_uid: str = ""
    job_id: str | None = None
    #: Unix time the hop happened.
    at: float = field(default_factory=time.time)
    #: Ids, counts, durations and names of the node's own (see the module docstring).
    detail: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True)
class InstanceStored:
    """One C-STORE answered SUCCESS (``duplicate``: the node held the instance already)."""

    nbytes: int
    duplicate: bool = False


class AssociationOutcome(str, enum.Enum):
    ACCEPTED = "accepted"
    REFUSED = "refused"
    ABORTED = "aborted"


@dataclass(frozen=True)
class AssociationEvent:
    outcome: AssociationOutcome


Event = HopEvent | InstanceStored | AssociationEvent
Emit = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The :data:`Emit` of a part nobody observes."""
