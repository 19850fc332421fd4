"""Job records: one JSON file per job at ``<data_dir>/jobs/<job_id>.json``.

Like mercure's task files, job state is visible on disk: an operator can ``cat`` a record to see
where a series is. :class:`JobStore` is the one loader and the one writer of these files, and
:class:`~dicom_node.jobs.service.JobService` (one per data_dir, in the node or in a standalone
``mmed-node retrieve``) is the one owner that changes them: the records are the one store of job
state, whatever queue runs the jobs. Celery workers never write them; they report through the
job's lease hash in Redis (:mod:`dicom_node.jobs.shared`), which the owner reads.

Series that no route matched are recorded here too (state ``unrouted`` with the reason; ``skipped``
when a route's image check failed), so they are kept and visible rather than silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Container, Iterable
from dataclasses import field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass as validated

from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.stages import Stages

log = logging.getLogger(__name__)

JOB_SUFFIX = ".json"
#: A record file changed less than this long ago is read again by :meth:`JobStore.summaries`
#: whatever its stat says: file times are coarse (a few ms), so two saves within one tick, with
#: the same size and a reused inode number, would look unchanged.
RECENT_SECONDS = 2.0


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    #: No route matched the series; nothing runs (``error`` holds the reason).
    UNROUTED = "unrouted"
    #: A route matched its headers but the image does not cover what it needs (e.g. a CT without
    #: the thorax on a lung route); nothing runs (``error`` holds the reason).
    SKIPPED = "skipped"

    @property
    def finished(self) -> bool:
        """Terminal states: a restart does not run such a job again."""
        return self in (JobState.DONE, JobState.FAILED, JobState.UNROUTED, JobState.SKIPPED)


def make_job_id(
    study_uid: str, series_uid: str, fingerprint: str, route: str | None
) -> str:
    """Derived, not random: the same instance set and route always give the same job id, so a
    restart that re-queues a series reuses its record instead of duplicating it."""
    text = "\n".join((study_uid, series_uid, fingerprint, route or ""))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:24]


@validated(config=ConfigDict(extra="forbid", validate_assignment=True))
class JobRecord:
    """One job: what it was asked (``spec``), where it is (``state``) and what became of it."""

    job_id: str
    study_uid: str
    series_uid: str
    state: JobState
    #: Route name (None for an unrouted series).
    route: str | None
    #: Fingerprint of the SOP instance set the job processes (see assembly.instance_set_fingerprint).
    fingerprint: str
    instance_count: int
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    #: Number of the current (or last) run of the job: every start counts, restarts after a
    #: lost worker or node included.
    attempt: int = 1
    #: Retries after transient errors used so far (see :mod:`dicom_node.jobs.retry`).
    retries: int = 0
    #: When a job queued for a retry runs again (Unix time; None: as soon as a worker is free).
    retry_at: float | None = None
    #: Since when the job has been waiting for disk space (its first disk-full failure in a row).
    waiting_since: float | None = None
    #: Hostname of the Celery worker that ran the job last (None in the embedded queue).
    worker: str | None = None
    #: Readable reason for ``failed`` / ``unrouted`` / ``skipped``.
    error: str | None = None
    result_dir: str | None = None
    destinations: list[str] = field(default_factory=list)
    calling_ae: str = ""
    called_ae: str = ""
    #: Jobs of an earlier instance set of the same series that this job's results replace.
    supersedes: list[str] = field(default_factory=list)
    #: The job spec handed to the runner (None for unrouted series).
    spec: JobSpec | None = None
    #: Path of the manifest the run wrote (``result_dir/manifest.json``), once done.
    manifest_path: str | None = None
    #: When the job passed each stage (:mod:`dicom_node.jobs.stages`).
    stages: Stages = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the file on disk, ``mmed-node status --json``, ``GET /jobs/<id>``)."""
        return _RECORD.dump_python(self, mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobRecord:
        """Read the JSON form back (fields this version does not know are ignored); raises
        ValueError naming what is wrong."""
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("spec"), dict):
            values["spec"] = JobSpec.from_dict(values["spec"])
        try:
            return _RECORD.validate_python(values)
        except ValidationError as exc:
            raise ValueError(str(exc)) from None


_RECORD: TypeAdapter[JobRecord] = TypeAdapter(JobRecord)
_FIELDS = frozenset(f.name for f in dataclasses.fields(JobRecord))


class JobStore:
    """Reads and writes job records under ``root`` (normally ``<data_dir>/jobs``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        #: :meth:`summaries`' cache: file name -> ((inode, mtime, size), the record's JSON form
        #: without its spec).
        self._summaries: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._summaries_lock = threading.Lock()

    def path(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"bad job id {job_id!r}")
        return self.root / f"{job_id}{JOB_SUFFIX}"

    def save(self, record: JobRecord) -> JobRecord:
        """The one writer: atomic JSON (temp + fsync + rename)."""
        record.updated = time.time()
        with self._lock:
            write_json_atomic(self.path(record.job_id), record.to_dict())
        return record

    def load(self, job_id: str) -> JobRecord:
        """The one loader. Raises FileNotFoundError for an unknown job."""
        with self.path(job_id).open(encoding="utf-8") as fh:
            return JobRecord.from_dict(json.load(fh))

    def get(self, job_id: str) -> JobRecord | None:
        try:
            return self.load(job_id)
        except FileNotFoundError:
            return None

    def update(self, job_id: str, **changes: Any) -> JobRecord:
        """Load, change fields (validated), save (under the store's lock for the
        read-modify-write)."""
        with self._lock:
            record = self.load(job_id)
            for name, value in changes.items():
                if name not in _FIELDS:
                    raise AttributeError(f"JobRecord has no field {name!r}")
                setattr(record, name, value)
            record.updated = time.time()
            write_json_atomic(self.path(record.job_id), record.to_dict())
        return record

    def remove_finished(self, job_ids: Iterable[str], keep: Container[str] = ()) -> list[str]:
        """Delete the records of finished jobs (retention, once their results are gone), except
        those in ``keep``; returns the ids removed."""
        removed = []
        with self._lock:
            for job_id in job_ids:
                record = self.get(job_id)
                if job_id in keep or (record is not None and not record.state.finished):
                    continue
                self.path(job_id).unlink(missing_ok=True)
                removed.append(job_id)
        return removed

    def all(self) -> list[JobRecord]:
        """Every readable record, oldest first; unreadable files are logged and skipped."""
        records = []
        for path in sorted(self.root.glob(f"*{JOB_SUFFIX}")):
            if path.name.startswith("."):
                continue
            try:
                records.append(self.load(path.stem))
            except FileNotFoundError:
                continue  # removed since it was listed (retention)
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("job record %s unreadable: %s", path.name, exc)
        records.sort(key=lambda r: r.created)
        return records

    def summaries(self) -> list[JobRecord]:
        """Every readable record without its spec (``spec`` None), oldest first: for the views
        that poll (``/metrics``, the dashboard's job list).

        A record file is read again only when it changed (every save replaces it: another
        inode, mtime or size) or changed recently (:data:`RECENT_SECONDS`), so a scrape costs a
        listing and a ``stat`` per record rather than reading and parsing every record with its
        spec (a job's instance list alone is ~30 KB at 500 slices). Each call returns new
        objects: a caller may change them freely."""
        now = time.time()
        forms: list[dict[str, Any]] = []
        with self._summaries_lock:
            seen: set[str] = set()
            with os.scandir(self.root) as entries:
                for entry in entries:
                    if entry.name.startswith(".") or not entry.name.endswith(JOB_SUFFIX):
                        continue
                    try:
                        st = entry.stat()
                    except FileNotFoundError:
                        continue
                    key = (st.st_ino, st.st_mtime_ns, st.st_size)
                    cached = self._summaries.get(entry.name)
                    if cached is None or cached[0] != key or now - st.st_mtime < RECENT_SECONDS:
                        form = self._summary_form(entry.path, entry.name)
                        if form is None:
                            self._summaries.pop(entry.name, None)
                            continue
                        cached = self._summaries[entry.name] = (key, form)
                    seen.add(entry.name)
                    forms.append(cached[1])
            for gone in self._summaries.keys() - seen:
                del self._summaries[gone]
        records = [JobRecord.from_dict(form) for form in forms]
        records.sort(key=lambda r: (r.created, r.job_id))
        return records

    @staticmethod
    def _summary_form(path: str, name: str) -> dict[str, Any] | None:
        """A record file's JSON form without its spec, checked; None if gone or unreadable."""
        try:
            with open(path, encoding="utf-8") as fh:
                form = json.load(fh)
            if not isinstance(form, dict):
                raise TypeError("not a JSON object")
            form.pop("spec", None)
            JobRecord.from_dict(form)
        except FileNotFoundError:
            return None  # removed since it was listed (retention)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("job record %s unreadable: %s", name, exc)
            return None
        return form
