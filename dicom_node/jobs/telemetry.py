"""What a job's run tells the node besides its results: disclosures to remote endpoints and
model loads, collected where the run happens (the embedded pool or a Celery worker) and carried
home in the manifest, so the node's audit trail and metrics see them whatever queue ran the job.

Both are logged by the code that does them, on their own loggers
(:data:`image_model.deidentify.DISCLOSURE_LOGGER`, :data:`tools.device.MODEL_LOAD_LOGGER`), with a
structured attribute (``record.disclosure``, ``record.model_load``). :func:`collect_run` attaches
a handler for the duration of one run that keeps only the records emitted in that run's context
(``contextvars``: the run's thread and the tool threads it starts, which copy its context), so
two jobs running side by side in one process never take each other's.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from image_model.deidentify import DISCLOSURE_LOGGER
from tools.device import MODEL_LOAD_LOGGER, ModelLoad

#: The collector of the run whose context this is (None outside a run).
_CURRENT: contextvars.ContextVar[RunTelemetry | None] = contextvars.ContextVar(
    "mmed_run_telemetry", default=None
)


@dataclass
class RunTelemetry:
    #: One ``Disclosure.to_json()`` per request that left for a remote endpoint, with ``at``:
    #: the Unix time it was de-identified.
    disclosures: list[dict[str, Any]] = field(default_factory=list)
    model_loads: list[ModelLoad] = field(default_factory=list)


class _Handler(logging.Handler):
    def __init__(self, telemetry: RunTelemetry) -> None:
        super().__init__(logging.DEBUG)
        self.telemetry = telemetry

    def emit(self, record: logging.LogRecord) -> None:
        if _CURRENT.get() is not self.telemetry:
            return
        disclosure = getattr(record, "disclosure", None)
        if disclosure is not None:
            self.telemetry.disclosures.append({**disclosure.to_json(), "at": record.created})
        load = getattr(record, "model_load", None)
        if isinstance(load, ModelLoad):
            self.telemetry.model_loads.append(load)


@contextmanager
def collect_run() -> Iterator[RunTelemetry]:
    """Collect the disclosures and model loads of the code run inside the ``with`` block (and of
    threads started with a copy of its context)."""
    telemetry = RunTelemetry()
    handler = _Handler(telemetry)
    loggers = [logging.getLogger(DISCLOSURE_LOGGER), logging.getLogger(MODEL_LOAD_LOGGER)]
    token = _CURRENT.set(telemetry)
    for logger in loggers:
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)  # the records must be created to be collected
    try:
        yield telemetry
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        _CURRENT.reset(token)
