"""When a job passed each stage: the one typed record of its timings.

A job record keeps ``stages`` (stage -> Unix time it was reached). The node fills in the
series' stages when it submits the job (``received``: the first instance of the set arrived,
``complete``: the set was judged complete), the service ``queued`` and ``started``, the worker
``tools`` and ``encoded`` (in the manifest, copied into the record when the job is done), and
the outbox ``sent`` (the first destination that stored the results; later ones and resends are
in the deliveries and the audit trail). A retry overwrites the stages it passes again, so the
record shows the last run.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Stage(str, enum.Enum):
    RECEIVED = "received"
    COMPLETE = "complete"
    QUEUED = "queued"
    STARTED = "started"
    #: The agent's planner and tools finished.
    TOOLS = "tools"
    #: The SEG/SR were written.
    ENCODED = "encoded"
    SENT = "sent"


#: Stage -> Unix time.
Stages = dict[Stage, float]

#: The stages in the order a job passes them.
ORDER: tuple[Stage, ...] = tuple(Stage)


def durations(stages: Mapping[Stage, float]) -> dict[Stage, float]:
    """Seconds each recorded stage took: from the latest earlier stage that was recorded (the
    first recorded stage has none)."""
    out: dict[Stage, float] = {}
    previous: float | None = None
    for stage in ORDER:
        at = stages.get(stage)
        if at is None:
            continue
        if previous is not None:
            out[stage] = max(0.0, at - previous)
        previous = at
    return out


def first_stages(received: float | None, complete: float | None, queued: float) -> Stages:
    """A new job's stages: when its instance set's first instance arrived and when the set was
    judged complete (each when known), and when the job was queued."""
    stages = {Stage.RECEIVED: received, Stage.COMPLETE: complete, Stage.QUEUED: queued}
    return {stage: at for stage, at in stages.items() if at is not None}
