"""JobStore.summaries: the records the polling views read (/metrics, the dashboard), without
their specs, re-read only when a record file changed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dicom_node.jobs import store as store_module
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.store import JobRecord, JobState, JobStore

UID = "1.2.826.0.1.3680043.8.498."


def _record(i: int, state: JobState = JobState.QUEUED) -> JobRecord:
    spec = JobSpec(job_id=f"job{i:04d}", study_uid=UID + "1", series_uid=UID + str(i), series_dir="/x",
                   result_dir="/y", route="lung", instruction="Segment the lungs.", planner="rules",
                   instance_uids=[f"{UID}{i}.{n}" for n in range(300)])
    return JobRecord(job_id=f"job{i:04d}", study_uid=UID + "1", series_uid=UID + str(i), state=state,
                     route="lung", fingerprint="f" * 40, instance_count=300, spec=spec,
                     destinations=["pacs"])


def _age(path: Path, seconds: float) -> None:
    """Make a record file look older than the store's recent window."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_summaries_match_the_records_without_specs(tmp_path: Path) -> None:
    store = JobStore(tmp_path)
    for i in range(5):
        store.save(_record(i))
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / ".hidden.json").write_text("{}")
    full = store.all()
    summaries = store.summaries()
    assert [r.job_id for r in summaries] == [r.job_id for r in full]
    for summary, record in zip(summaries, full, strict=True):
        assert summary.spec is None and record.spec is not None
        assert summary.to_dict() == {**record.to_dict(), "spec": None}


def test_a_changed_record_is_read_again_and_an_unchanged_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = JobStore(tmp_path)
    for i in range(3):
        store.save(_record(i))
    for path in tmp_path.glob("*.json"):
        _age(path, 60)
    reads: list[str] = []
    real = JobStore._summary_form

    def counting(path: str, name: str) -> dict | None:
        reads.append(name)
        return real(path, name)

    monkeypatch.setattr(JobStore, "_summary_form", staticmethod(counting))
    assert [r.state for r in store.summaries()] == [JobState.QUEUED] * 3
    assert len(reads) == 3
    reads.clear()
    assert len(store.summaries()) == 3
    assert reads == []  # nothing changed: served from the cache

    # Another process (a standalone command, say) changes one record: a new file, read again.
    store.update("job0001", state=JobState.RUNNING, worker="w1")
    states = {r.job_id: (r.state, r.worker) for r in store.summaries()}
    assert states["job0001"] == (JobState.RUNNING, "w1")
    assert reads == ["job0001.json"]

    # Removed records leave the summaries.
    store.path("job0002").unlink()
    assert [r.job_id for r in store.summaries()] == ["job0000", "job0001"]


def test_a_record_changed_within_the_clock_tick_is_not_missed(tmp_path: Path) -> None:
    """Same inode, size and mtime as before (a coarse clock, a reused inode): a recent file is
    read again whatever its stat says."""
    store = JobStore(tmp_path)
    store.save(_record(0))
    path = store.path("job0000")
    assert store.summaries()[0].state is JobState.QUEUED
    stat = path.stat()
    text = path.read_text()
    assert json.loads(text)["state"] == "queued"
    # In place, same length ("failed" for "queued"): inode and size do not change.
    with path.open("r+") as fh:
        fh.write(text.replace('"queued"', '"failed"', 1))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_size) == (stat.st_ino, stat.st_size)
    assert store.summaries()[0].state is JobState.FAILED


def test_a_summary_is_the_callers_to_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "RECENT_SECONDS", 0.0)
    store = JobStore(tmp_path)
    store.save(_record(0))
    first = store.summaries()[0]
    first.destinations.append("other")
    first.state = JobState.FAILED
    again = store.summaries()[0]
    assert again.destinations == ["pacs"] and again.state is JobState.QUEUED
