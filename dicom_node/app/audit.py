"""The audit trail: one JSON line per hop of every series and job, in the data_dir, rotated by
size; ``mmed-node audit --study UID`` prints one study's trail.

A line (keys in this order, then the hop's own details)::

    {"ts": "2026-01-01T12:00:00.123Z", "at": 1767268800.123, "hop": "queued",
     "study_uid": "1.2...", "series_uid": "1.2...", "job_id": "9f...", "route": "ct-lungs", ...}

``ts`` is UTC; ``at`` is the Unix time the hop happened (the hop's own time, which for a
worker's stages may be earlier than the line's writing). Lines carry ids (UIDs, job and delivery
ids), AE titles, counts, durations and the node's own names (routes, tools, destinations,
endpoints), never patient data: :class:`~dicom_node.events.HopEvent` s are built that way, and
:func:`audit_line` keeps only JSON scalars, lists and objects of them.

The node is the one writer (it holds the data_dir lock), so rotation needs no lock between
processes: ``audit.jsonl`` is renamed ``audit.jsonl.1`` (``.1`` to ``.2`` ...) once it reaches
``audit.max_bytes``; ``audit.backups`` files are kept.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from config.schema import AuditConfig
from dicom_node.events import HopEvent

log = logging.getLogger(__name__)

AUDIT_FOLDER = "audit"
AUDIT_FILE = "audit.jsonl"


def _plain(value: Any) -> Any:
    """JSON-safe copy: scalars, lists and string-keyed objects; anything else as its repr-free
    string form (an enum's value)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    return str(getattr(value, "value", value))


def audit_line(event: HopEvent) -> dict[str, Any]:
    """The JSON object of one hop (see the module docstring)."""
    line: dict[str, Any] = {
        "ts": datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "at": round(event.at, 3),
        "hop": event.hop.value,
        "study_uid": event.study_uid,
        "series_uid": event.series_uid,
        "job_id": event.job_id,
    }
    for key, value in event.detail.items():
        line.setdefault(str(key), _plain(value))
    return line


class AuditTrail:
    """Appends hop lines to ``<folder>/audit.jsonl`` (thread-safe), rotating by size."""

    def __init__(self, folder: Path, config: AuditConfig) -> None:
        self.folder = Path(folder)
        self.config = config
        self._lock = threading.Lock()

    @property
    def path(self) -> Path:
        return self.folder / AUDIT_FILE

    def write(self, event: HopEvent) -> None:
        data = (json.dumps(audit_line(event), separators=(",", ":"), ensure_ascii=True)
                + "\n").encode("ascii")
        with self._lock:
            self.folder.mkdir(parents=True, exist_ok=True)
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.config.max_bytes:
                self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def _rotate(self) -> None:
        backups = self.config.backups
        (self.folder / f"{AUDIT_FILE}.{backups}").unlink(missing_ok=True)
        for number in range(backups - 1, 0, -1):
            older = self.folder / f"{AUDIT_FILE}.{number}"
            if older.exists():
                older.replace(self.folder / f"{AUDIT_FILE}.{number + 1}")
        self.path.replace(self.folder / f"{AUDIT_FILE}.1")


def read_trail(folder: Path) -> Iterator[dict[str, Any]]:
    """Every line of the trail, oldest first (rotated files, then the current one); a line that
    does not parse (a crash mid-write) is skipped."""
    rotated = sorted(
        (p for p in folder.glob(f"{AUDIT_FILE}.*") if p.suffix[1:].isdigit()),
        key=lambda p: int(p.suffix[1:]), reverse=True,
    )
    for path in [*rotated, folder / AUDIT_FILE]:
        try:
            with path.open(encoding="utf-8") as fh:
                for text in fh:
                    try:
                        line = json.loads(text)
                    except json.JSONDecodeError:
                        continue
                    if isinstance(line, dict):
                        yield line
        except FileNotFoundError:
            continue


def study_trail(folder: Path, study_uid: str) -> list[dict[str, Any]]:
    """One study's lines: those naming it, and those of its jobs (a delivery's line names the
    job only), oldest first."""
    lines = list(read_trail(folder))
    jobs = {line.get("job_id") for line in lines if line.get("study_uid") == study_uid} - {None}
    return [line for line in lines
            if line.get("study_uid") == study_uid or line.get("job_id") in jobs]
