"""What the dashboard shows, gathered from the node's files (no HTML here: pages.py renders it).

The overview is ``mmed-node status --json``'s document (:func:`dicom_node.app.commands.status.collect`:
series, jobs, deliveries, disk) with each job's stage durations added; a job's page adds its
manifest, the agent's turns (``conversation.json``), its SR as text, its previews and its
deliveries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from config.schema import AppConfig
from dicom_node.app.commands.status import collect
from dicom_node.app.dashboard.preview import PreviewError, PreviewSet, build_previews
from dicom_node.app.dashboard.sr_text import Line, sr_lines
from dicom_node.deliver.outbox import Delivery, Outbox
from dicom_node.jobs.manifest import Manifest, load_manifest
from dicom_node.jobs.pipeline import CONVERSATION_FILE, SR_FILE
from dicom_node.jobs.stages import ORDER, Stage, durations
from dicom_node.jobs.store import JobRecord, JobStore

log = logging.getLogger(__name__)

#: Jobs listed on the overview at most (newest first).
MAX_JOBS = 500
#: Largest conversation file read (the agent's turns are text; a bigger one is not shown).
MAX_CONVERSATION_BYTES = 2 * 1024 * 1024


def stage_rows(stages: dict[str, float] | dict[Stage, float]) -> list[dict[str, Any]]:
    """``{"stage", "at", "seconds"}`` per stage in order (``at``/``seconds`` None when not
    reached / first)."""
    typed = {Stage(k): float(v) for k, v in stages.items()}
    took = durations(typed)
    return [{"stage": s.value, "at": typed.get(s), "seconds": took.get(s)} for s in ORDER]


def job_list(jobs: list[dict[str, Any]], deliveries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest :data:`MAX_JOBS` jobs (their JSON form), each with its deliveries' destination
    and state."""
    jobs = sorted(jobs, key=lambda j: j.get("created", 0), reverse=True)[:MAX_JOBS]
    by_job: dict[str, list[dict[str, Any]]] = {}
    for delivery in deliveries:
        by_job.setdefault(delivery["job_id"], []).append(delivery)
    for job in jobs:
        job["deliveries"] = [{"destination": d["destination"], "state": d["state"]}
                             for d in by_job.get(job["job_id"], [])]
    return jobs


def overview(config: AppConfig) -> dict[str, Any]:
    """``mmed-node status --json``'s document with the job list and deliveries per destination."""
    report = collect(config)
    destinations: dict[str, dict[str, int]] = {name: {} for name in config.destinations}
    for delivery in report["deliveries"]:
        counts = destinations.setdefault(delivery["destination"], {})
        counts[delivery["state"]] = counts.get(delivery["state"], 0) + 1
    return {**report, "jobs": job_list(report["jobs"], report["deliveries"]),
            "destinations": destinations}


def live_jobs(store: JobStore, outbox: Outbox | None) -> list[dict[str, Any]]:
    """The job list alone, for the overview's refresh every few seconds: job records and
    deliveries only (no walk of the spool or of the data_dir's sizes)."""
    jobs = [{k: v for k, v in record.to_dict().items() if k != "spec"} for record in store.summaries()]
    deliveries = [d.to_dict() for d in outbox.list()] if outbox is not None else []
    return job_list(jobs, deliveries)


@dataclass
class Turn:
    speaker: str
    value: str
    thoughts: str = ""
    actions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class JobView:
    record: JobRecord
    manifest: Manifest | None
    turns: list[Turn]
    sr: list[Line]
    previews: PreviewSet | None
    deliveries: list[Delivery]
    notes: list[str]


def conversation(result_dir: Path) -> list[Turn]:
    path = result_dir / CONVERSATION_FILE
    if not path.is_file() or path.stat().st_size > MAX_CONVERSATION_BYTES:
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    turns = []
    for message in data.get("conversations", []) if isinstance(data, dict) else []:
        if not isinstance(message, dict):
            continue
        actions = [a for a in message.get("actions") or [] if isinstance(a, dict)]
        turns.append(Turn(str(message.get("from", "")), str(message.get("value", "")),
                          str(message.get("thoughts") or ""), actions))
    return turns


def job_view(record: JobRecord, outbox: Outbox | None) -> JobView:
    notes: list[str] = []
    manifest, turns, sr, previews = None, [], [], None
    if record.result_dir is not None and Path(record.result_dir).is_dir():
        base = Path(record.result_dir)
        try:
            manifest = load_manifest(base)
        except (OSError, ValueError):
            pass  # not done (yet): no manifest to show
        try:
            turns = conversation(base)
        except (OSError, ValueError) as exc:
            notes.append(f"conversation not readable: {type(exc).__name__}")
        if (base / SR_FILE).is_file():
            try:
                sr = sr_lines(base / SR_FILE)
            except (OSError, ValueError, AttributeError) as exc:
                notes.append(f"SR not readable: {type(exc).__name__}")
        if manifest is not None:
            try:
                previews = build_previews(record)
            except PreviewError as exc:
                notes.append(f"previews: {exc}")
    deliveries = ([d for d in outbox.list() if d.job_id == record.job_id]
                  if outbox is not None else [])
    return JobView(record, manifest, turns, sr, previews, deliveries, notes)
