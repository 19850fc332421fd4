"""The one retry policy of the jobs layer, for the embedded pool and Celery workers alike.

A run that ends without a result ends in one of two ways (:func:`classify`):

* **permanent** (:class:`JobFailed`: the series cannot be processed; any other exception: a bug)
  -> the job ends ``failed`` with the reason, never retried: running it again gives the same;
* **transient** (``OSError``: a volume not mounted yet, an NFS hiccup; memory or CUDA memory
  exhausted; the broker or Redis unreachable) -> run again after a backoff
  (``queue.retry_backoff_seconds`` doubling up to ``queue.retry_backoff_max_seconds``), at most
  ``queue.max_retries`` times, then ``failed`` with the last reason;
* **a full disk** (``ENOSPC``, ``EDQUOT``): transient too, but it says nothing about the job, so it
  uses up no retries: the job runs again with a backoff as long as it has waited so far (capped
  at the maximum), until space returns, for up to ``queue.disk_full_patience_seconds``.

Separately, a run may be **lost** (its worker or, for the embedded pool, the node process died
mid-run): every start counts as an attempt, and a job that used ``max_retries + 1 +
max_redeliveries`` attempts is not started again (a poison job cannot loop forever).

The classification happens where the exception is caught (the worker); the decision is made by
the one owner of job state (:class:`~dicom_node.jobs.service.JobService`) with this policy.
"""

from __future__ import annotations

import errno
import re
from dataclasses import dataclass
from types import TracebackType

from config.schema import QueueConfig


class JobFailed(Exception):
    """The series cannot be processed; the message is the reason recorded in job state."""


#: Exception class names meaning "the broker or Redis is unreachable now", matched by name so
#: that the embedded pool needs neither kombu nor redis imported.
_BROKER_DOWN = frozenset({"OperationalError", "ConnectionError", "TimeoutError", "BusyLoadingError"})
#: Exception class names of running out of (GPU) memory (torch.cuda.OutOfMemoryError).
_OUT_OF_MEMORY = frozenset({"OutOfMemoryError"})


@dataclass(frozen=True)
class Failure:
    """Why a run ended without a result, and whether running it again may help."""

    reason: str
    transient: bool
    #: The disk (or quota) is full: wait for space, without using up retries.
    disk_full: bool = False


#: Libraries whose exception messages quote the data they were given: a header value of the
#: series (maybe patient data) must not reach a job record, ``/status`` or the log.
_DATA_QUOTING = frozenset({"pydicom", "highdicom", "pynetdicom"})


def raised_in(exc: BaseException) -> str:
    """The module whose code raised ``exc`` (its traceback's innermost frame), or ''."""
    tb = exc.__traceback__
    if tb is None:
        return ""
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(tb.tb_frame.f_globals.get("__name__", ""))


def quotes_data(exc: BaseException) -> bool:
    """Whether ``exc`` was raised by a DICOM library about the data (its message may quote a
    header value). An OSError is about a file, not its content: not counted."""
    return not isinstance(exc, OSError) and raised_in(exc).split(".")[0] in _DATA_QUOTING


def describe(exc: BaseException) -> str:
    """``Type: message``, first line only (a :class:`JobFailed` is its message alone: a reason
    for people). Some libraries re-raise with a traceback in the message (pydicom's writer).
    The message of a DICOM library's exception about the data is left out (:func:`quotes_data`):
    the type and the module that raised it say what went wrong without the value."""
    if quotes_data(exc):
        return f"{type(exc).__name__} in {raised_in(exc)} (its message may quote a header value: not recorded)"
    lines = str(exc).splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, JobFailed):
        return text
    if not isinstance(exc, OSError):
        # float('DOE^JANE'), int(...), a KeyError: Python quotes the value it was given.
        text = _QUOTED.sub("'<not recorded>'", text)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


#: A quoted value in an exception's message (Python's own quote what they could not convert).
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")


class Withheld(Exception):
    """Stands in for a crashed job's exception in the log (:func:`crash_info`): its stack, its
    type and :func:`describe`'s text, without a value its message may quote."""


def crash_info(exc: BaseException) -> tuple[type[Withheld], Withheld, TracebackType | None]:
    """``exc_info`` for logging a job's unexpected exception: the stack where it was raised (to
    find the bug) with :class:`Withheld` in place of the exception (no quoted values)."""
    return Withheld, Withheld(describe(exc)), exc.__traceback__


def input_failure(exc: BaseException) -> JobFailed | None:
    """A DICOM library's exception about the series' data (a header value it cannot read) as a
    :class:`JobFailed`: the input cannot be processed, which is no bug to log a traceback for;
    None for anything else."""
    if isinstance(exc, JobFailed) or is_transient(exc) or not quotes_data(exc):
        return None
    return JobFailed(f"a value in the series cannot be read: {describe(exc)}")


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: I/O (OSError and its subclasses, ENOSPC included), memory or CUDA
    memory exhausted, and a broker or Redis that cannot be reached."""
    if isinstance(exc, JobFailed):
        return False
    if isinstance(exc, (OSError, MemoryError)):
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & (_OUT_OF_MEMORY | _BROKER_DOWN))


#: errno values of a full disk or quota.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """A full disk or quota, also when re-raised by a library without the errno (the original
    is then the cause: pydicom's writer names the element it was writing)."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain, not a cycle
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def classify(exc: BaseException) -> Failure:
    return Failure(describe(exc), is_transient(exc), is_disk_full(exc))


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 3
    backoff_seconds: float = 5.0
    backoff_max_seconds: float = 300.0
    max_redeliveries: int = 2
    disk_full_patience_seconds: float = 86400.0

    @classmethod
    def from_config(cls, queue: QueueConfig) -> RetryPolicy:
        return cls(queue.max_retries, queue.retry_backoff_seconds, queue.retry_backoff_max_seconds,
                   queue.max_redeliveries, queue.disk_full_patience_seconds)

    @property
    def max_attempts(self) -> int:
        """Starts a job may use, lost runs included."""
        return self.max_retries + 1 + self.max_redeliveries

    def backoff(self, retries: int) -> float:
        """Delay before retry number ``retries + 1``: initial, 2x, 4x ... capped at the maximum."""
        return float(min(self.backoff_seconds * 2**retries, self.backoff_max_seconds))

    def retry_delay(self, failure: Failure, retries: int, waited: float = 0.0) -> float | None:
        """Seconds until the job runs again after ``failure``, or None: it ends ``failed``.
        ``retries`` is the number of retries it already used, ``waited`` how long it has been
        waiting for disk space (since its first disk-full failure in a row)."""
        if failure.disk_full:
            if waited > self.disk_full_patience_seconds:
                return None
            return float(min(max(waited, self.backoff_seconds), self.backoff_max_seconds))
        if not failure.transient or retries >= self.max_retries:
            return None
        return self.backoff(retries)

    def gave_up(self, failure: Failure, attempts: int) -> str:
        """The reason recorded when a job is not run again."""
        if failure.disk_full:
            return (f"gave up after waiting {self.disk_full_patience_seconds:g} s for disk space "
                    f"({attempts} attempt(s)): {failure.reason}")
        if not failure.transient:
            return failure.reason
        return f"gave up after {attempts} attempt(s): {failure.reason}"

    def lost_runs_exhausted(self, attempts: int) -> str | None:
        """After a lost run (attempt number ``attempts`` never ended): the reason the job ends
        ``failed``, or None when it may start again."""
        if attempts < self.max_attempts:
            return None
        return (f"gave up after {attempts} attempt(s): the job kept ending without a result "
                "(its worker was lost each time)")
