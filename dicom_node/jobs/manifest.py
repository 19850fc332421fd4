"""A finished job's manifest: which result files to send, and what else the run produced.

One writer (:func:`write_manifest`, called once per successful run by the worker that ran it,
in the embedded pool or on a Celery worker) and one loader (:func:`load_manifest`, called by the
node when it hands the results to its outbox). The manifest lies in the job's result folder
(``<result_dir>/manifest.json``), which the node and every worker see at the same path, so it
never travels through the broker.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.stages import Stages

MANIFEST_FILE = "manifest.json"


class ManifestError(ValueError):
    """A runner returned, or a result folder holds, something that is not a manifest."""


class Manifest(BaseModel):
    """What a job runner returns. ``files`` and ``fallback_files`` are what the node acts on;
    the pipeline's other fields describe the run for people and tools reading the folder.
    A custom runner (``serve --runner``) may add fields of its own: they are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    #: Result files to send to the job's destinations: absolute, or relative to the result folder.
    files: list[str] = Field(default_factory=list)
    #: SEG file -> the secondary-capture overlays that stand in for it where a destination does
    #: not take Segmentation Storage (:mod:`dicom_node.deliver.seg_refusal`).
    fallback_files: dict[str, list[str]] = Field(default_factory=dict)
    job_id: str | None = None
    study_uid: str | None = None
    series_uid: str | None = None
    route: str | None = None
    instances: int | None = None
    #: Result file name (relative to the result folder) -> its SOP Instance UID.
    sop_instance_uids: dict[str, str] = Field(default_factory=dict)
    #: The earlier reports this job's SR replaces: ``{"sop_instance_uid", "series_uid"}`` each.
    supersedes: list[dict[str, str]] = Field(default_factory=list)
    answer: str | None = None
    planner: str | None = None
    fallback_reason: str | None = None
    errors: list[str] = Field(default_factory=list)
    #: ``{"api_name", "summary"}`` per tool output.
    tools: list[dict[str, Any]] = Field(default_factory=list)
    #: The stages the worker passed (``tools``, ``encoded``), copied into the job record.
    stages: Stages = Field(default_factory=dict)
    #: ``{"api_name", "seconds", "refused", "ended"}`` per tool call, in order.
    tool_runs: list[dict[str, Any]] = Field(default_factory=list)
    #: What left for remote endpoints, de-identified (``Disclosure.to_json()`` each, with ``at``,
    #: when; no PHI).
    disclosures: list[dict[str, Any]] = Field(default_factory=list)
    #: ``{"kind", "seconds"}`` per model this run loaded.
    model_loads: list[dict[str, Any]] = Field(default_factory=list)
    #: Seconds per stage of the run (the pipeline's: load, tools, encode, write).
    timings: dict[str, float] = Field(default_factory=dict)
    #: Seconds per stage that ran ahead, during the series' quiet period, in a speculative run
    #: this job adopted (dicom_node/jobs/speculation.py); those stages are not in ``timings``.
    ahead: dict[str, float] = Field(default_factory=dict)
    #: Unix time that speculative run ended (None: none was adopted).
    ahead_ended: float | None = None

    @classmethod
    def coerce(cls, value: Manifest | Mapping[str, Any]) -> Manifest:
        """A runner's return value as a manifest (a plain mapping is validated)."""
        if isinstance(value, Manifest):
            return value
        try:
            return cls.model_validate(dict(value))
        except (ValidationError, TypeError, ValueError) as exc:
            raise ManifestError(f"the job runner returned no valid manifest: {exc}") from None

    def result_files(self, result_dir: Path) -> list[Path]:
        """``files`` as absolute paths (relative ones lie in ``result_dir``)."""
        return [result_dir / f for f in self.files]  # result_dir / absolute = absolute

    def stand_ins(self, result_dir: Path) -> dict[str, list[Path]]:
        """``fallback_files`` as absolute paths, SEG path -> overlay paths."""
        return {str(result_dir / seg): [result_dir / p for p in others]
                for seg, others in self.fallback_files.items()}

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def manifest_path(result_dir: Path | str) -> Path:
    return Path(result_dir) / MANIFEST_FILE


def write_manifest(result_dir: Path | str, manifest: Manifest) -> Path:
    """The one writer: ``<result_dir>/manifest.json``, atomically (temp + fsync + rename)."""
    path = manifest_path(result_dir)
    write_json_atomic(path, manifest.to_dict())
    return path


def load_manifest(result_dir: Path | str) -> Manifest:
    """The one loader. Raises OSError when the file cannot be read (a shared volume that lags is
    transient) and :class:`ManifestError` when it is not a manifest."""
    path = manifest_path(result_dir)
    with path.open(encoding="utf-8") as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path}: not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ManifestError(f"{path}: not a JSON object")
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(f"{path}: {exc}") from None
