"""The audit trail's file (dicom_node/app/audit.py): size rotation keeps the configured number of
files and loses no line, a study's trail includes the delivery lines that name only its job, and
a line holds JSON values only. The node writing it is tested in test_operate_node.py."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from config.schema import AuditConfig
from dicom_node.app.audit import AUDIT_FILE, AuditTrail, audit_line, read_trail, study_trail
from dicom_node.events import Hop, HopEvent
from dicom_node.jobs.stages import Stage, durations


def test_rotation_keeps_every_line_within_the_backups(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, AuditConfig(max_bytes=4096, backups=3))
    lines_per_thread, threads = 60, 4

    def write(worker: int) -> None:
        for n in range(lines_per_thread):
            trail.write(HopEvent(Hop.TOOL, "1.2.3", "1.2.3.4", f"job{worker}", 1000.0 + n,
                                 {"tool": "ct lung segmentation", "n": n}))

    pool = [threading.Thread(target=write, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [AUDIT_FILE, f"{AUDIT_FILE}.1", f"{AUDIT_FILE}.2", f"{AUDIT_FILE}.3"]
    assert all((tmp_path / name).stat().st_size <= 4096 for name in files)
    kept = list(read_trail(tmp_path))
    # The oldest lines went with the file rotated out; the kept ones are whole and in order.
    assert 0 < len(kept) < lines_per_thread * threads
    for worker in range(threads):
        numbers = [line["n"] for line in kept if line["job_id"] == f"job{worker}"]
        assert numbers == list(range(lines_per_thread - len(numbers), lines_per_thread))


def test_study_trail_takes_its_jobs_delivery_lines(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, AuditConfig())
    trail.write(HopEvent(Hop.RECEIVED, "1.1", "1.1.1", None, 1.0, {"instances": 3}))
    trail.write(HopEvent(Hop.QUEUED, "1.1", "1.1.1", "a1", 2.0, {"route": "ct-lungs"}))
    trail.write(HopEvent(Hop.QUEUED, "2.2", "2.2.1", "b2", 2.5, {"route": "ct-lungs"}))
    trail.write(HopEvent(Hop.SENT, job_id="a1", at=3.0, detail={"destination": "pacs"}))
    trail.write(HopEvent(Hop.SENT, job_id="b2", at=3.5, detail={"destination": "pacs"}))
    with (tmp_path / AUDIT_FILE).open("a") as fh:
        fh.write('{"hop": "sent", "study_uid": "1.1"')  # a torn last line (a crash mid-write)
    lines = study_trail(tmp_path, "1.1")
    assert [(line["hop"], line["job_id"]) for line in lines] == [
        ("received", None), ("queued", "a1"), ("sent", "a1")]


def test_a_line_holds_json_values_only() -> None:
    line = audit_line(HopEvent(Hop.ENCODED, "1.1", "1.1.1", "a1", 1767268800.5,
                               {"stage": Stage.TOOLS, "uids": ("1.2", "1.3"), "study_uid": "9.9"}))
    assert line["ts"] == "2026-01-01T12:00:00.500Z" and line["hop"] == "encoded"
    assert line["stage"] == "tools" and line["uids"] == ["1.2", "1.3"]
    assert line["study_uid"] == "1.1"  # a detail never overrides the common keys
    assert json.loads(json.dumps(line)) == line


def test_stage_durations_skip_stages_not_reached() -> None:
    stages = {Stage.RECEIVED: 10.0, Stage.QUEUED: 12.5, Stage.STARTED: 12.0, Stage.SENT: 20.0}
    assert durations(stages) == {Stage.QUEUED: 2.5, Stage.STARTED: 0.0, Stage.SENT: 8.0}
