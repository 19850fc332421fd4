"""The job: one routed series in, result files out. The same function runs in the embedded pool
and in Celery workers, so it takes only serialisable arguments (a :class:`JobSpec` as a dict)
plus the per-process :class:`WorkerContext` that keeps models warm across jobs.

Data flow (top to bottom): load series -> agent (planner + tools + aggregator) -> SEG + SR
-> files in the job's result folder -> manifest (the node's outbox sends the files).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from config import AppConfig
from tools.registry import ToolRegistry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to process one series; JSON-serialisable."""

    job_id: str
    study_uid: str
    series_uid: str
    #: Folder holding the series' instances (the spool folder, or a worker-local copy).
    series_dir: str
    #: Folder the job writes its results into (created if missing).
    result_dir: str
    route: str
    instruction: str
    planner: str
    #: Tools the planner may call (None: all available).
    tools: list[str] | None = None
    destinations: list[str] = field(default_factory=list)
    attempt: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "JobSpec":
        return cls(**data)


@dataclass
class WorkerContext:
    """Per-process state reused across jobs: the config and the tool registry (models warm)."""

    config: AppConfig
    registry: ToolRegistry

    @classmethod
    def build(cls, config: AppConfig) -> "WorkerContext":
        return cls(config=config, registry=ToolRegistry(config.tools))


class JobFailed(Exception):
    """The series cannot be processed; the message is the reason recorded in job state."""


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON via temp file + fsync + rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def run_job(spec: JobSpec, ctx: WorkerContext) -> dict[str, Any]:
    """Process one series; return the manifest (also written to ``result_dir/manifest.json``).

    Raises :class:`JobFailed` with a readable reason for input the pipeline cannot handle.
    """
    raise NotImplementedError("wired by the integrator once loader, agent and encoders exist")
