"""What a job is asked to do: the typed inputs of :meth:`JobService.submit` and the job spec a
worker runs.

* :class:`SeriesRef` names one instance set of one series in the spool (and, for a routed series,
  the association it came on and the earlier jobs it supersedes);
* :class:`JobRequest` names one thing to do with it: a route (its instruction, planner, tools and
  destinations) or a question;
* :class:`JobSpec` is what a worker needs to process the series, in the embedded pool or on a
  Celery worker: validated when built and when read back (from a job record or a broker message),
  JSON-serialisable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass as validated

from config.schema import RouteConfig

#: Route name recorded for a question job when no route matches the series.
QUESTION_ROUTE = "question"


@validated(frozen=True, config=ConfigDict(extra="forbid"))
class JobSpec:
    """Everything a worker needs to process one series."""

    job_id: Annotated[str, Field(min_length=1)]
    study_uid: str
    series_uid: str
    #: Folder holding the series' instances (the spool folder, seen at the same path by workers).
    series_dir: str
    #: Folder the job writes its results into (created if missing).
    result_dir: str
    route: str
    instruction: str
    planner: str
    #: Tools the planner may call (None: all available).
    tools: list[str] | None = None
    destinations: list[str] = Field(default_factory=list)
    #: SR files of the earlier jobs on this series (before late instances arrived) whose results
    #: this job replaces: the new SR lists them as predecessors (PS3.3 C.17.2.3). Paths, read
    #: when the job runs; a missing one (its job failed or is not finished) is left out.
    supersedes: list[str] = Field(default_factory=list)
    #: SOP Instance UIDs of the instance set this job was created for (spool files
    #: ``<uid>.dcm`` in ``series_dir``). A job still queued when late instances arrive must not
    #: take them in: the job created for the enlarged set supersedes it, and two jobs on one set
    #: would produce the same output UIDs. None: every file in ``series_dir``.
    instance_uids: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (job records, broker messages)."""
        return _SPEC.dump_python(self, mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        """Read the JSON form back; raises ``pydantic.ValidationError`` naming a bad field.
        Specs in records of earlier versions carried the attempt number, which lives in the job
        record alone now: it is dropped."""
        return _SPEC.validate_python({k: v for k, v in data.items() if k not in _RETIRED})


_SPEC: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)
#: Spec fields of earlier versions, ignored when read.
_RETIRED = frozenset({"attempt"})


@dataclass(frozen=True)
class SeriesRef:
    """One instance set of one spooled series, as :meth:`JobService.submit` takes it."""

    study_uid: str
    series_uid: str
    #: The spool folder of the series (absolute: workers elsewhere read the same path).
    series_dir: str
    sop_uids: tuple[str, ...]
    #: :func:`image_model.fingerprint.instance_set_fingerprint` of ``sop_uids``.
    fingerprint: str
    calling_ae: str = ""
    called_ae: str = ""
    #: Jobs of an earlier instance set of the same series whose results this set's jobs replace.
    supersedes: tuple[str, ...] = ()
    #: Unix times the set's first instance arrived and the set was judged complete (None:
    #: not known, e.g. a series found in the spool after a restart, or pulled by a retrieve).
    received_at: float | None = None
    complete_at: float | None = None


@dataclass(frozen=True)
class JobRequest:
    """One job to run on a series: a route's work, or a question asked about it."""

    #: Tells the jobs on one instance set apart (part of the derived job id): the route name, or
    #: ``question:<digest of the question>``.
    key: str
    #: Route name recorded on the job (a question borrows the matching route's name, if any).
    route: str
    instruction: str
    #: Planner backend (None: ``planner.backend``).
    planner: str | None
    tools: list[str] | None
    destinations: list[str]

    @classmethod
    def for_route(cls, route: RouteConfig, send_to: list[str] | None = None) -> JobRequest:
        """The route's own job (``send_to`` replaces the route's destinations when given)."""
        return cls(route.name, route.name, route.instruction, route.planner, route.tools,
                   list(route.send_to) if send_to is None else list(send_to))

    @classmethod
    def question(cls, text: str, route: RouteConfig | None, destinations: list[str]) -> JobRequest:
        """A question about the series: the matching route's planner and tools (if a route
        matches), the question as instruction, its own job id and output UIDs."""
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
        return cls(
            f"{QUESTION_ROUTE}:{digest}", route.name if route else QUESTION_ROUTE, text,
            route.planner if route else None, route.tools if route else None, list(destinations),
        )
