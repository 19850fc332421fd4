"""Retention and the low-space watermark (dicom_node/app/retention.py, dicom_node/disk.py).

1. The plan, a pure function: age, size quota, free space; unfinished units are never chosen.
2. A real node, a real storescp PACS and a destination that is down: a delivered series is
   removed whole (spool, results, outbox and job records); one whose result is undelivered and
   one whose job still runs are kept, whatever their age.
3. An instance that arrives while its series is being removed is kept.
4. ``mmed-node prune --dry-run`` and ``mmed-node status`` as subprocesses; ``prune`` without
   ``--dry-run`` is refused while a node serves the data_dir.
5. The watermark's hysteresis.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pydicom
import yaml

from config.loader import load_config
from config.schema import AppConfig, RetentionConfig
from dicom_node.app.node import Node
from dicom_node.app.retention import TRASH_FOLDER, UNITS_FILE, settle_pass, settle_trash
from dicom_node.app.retention_plan import Unit, plan_prune, survey
from dicom_node.disk import DiskGuard, DiskSpace
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.store import JobRecord, JobState, JobStore
from tests.outbox_helpers import StoreSCP
from tests.receive_helpers import (
    PROJECT_ROOT,
    counting_runner,
    free_port,
    make_ct_series,
    storescu,
    wait_for,
)

DAY = 86400.0


def unit(name: str, age_days: float, size: int, keep: str | None = None) -> Unit:
    u = Unit("1.2", name, spool_bytes=size, last_activity=1000 * DAY - age_days * DAY, keep=keep)
    u.jobs.append(JobRecord(f"job-{name}", "1.2", name, JobState.DONE, "r", "f", 1))
    return u


def test_plan_by_age_quota_and_free_space() -> None:
    now = 1000 * DAY
    units = [unit("old", 40, 100), unit("old-undelivered", 50, 100, keep="undelivered: x"),
             unit("mid", 10, 300), unit("new", 1, 300), unit("busy", 60, 300, keep="receiving: y")]
    by_age = plan_prune(units, RetentionConfig(max_age_days=30), now)
    assert [(u.series_uid, why.split(":")[0]) for u, why in by_age.remove] == [("old", "age")]
    # Quota 1100 bytes, all used: after "old" goes by age (1000 left, over 90 % of the quota)
    # the oldest finished units go until 80 % is used; kept units never go.
    by_size = plan_prune(units, RetentionConfig(max_age_days=30, max_size=1100), now)
    assert [u.series_uid for u, _ in by_size.remove] == ["old", "mid"]
    assert by_size.remove[1][1].startswith("size:")
    assert by_size.kept() == {"undelivered": 1, "receiving": 1}
    # Free space: 50 bytes free, 500 wanted: oldest finished first until enough is freed.
    by_space = plan_prune(units, RetentionConfig(max_age_days=None), now,
                          DiskSpace(total=10_000, free=50), resume_free=500)
    assert [u.series_uid for u, _ in by_space.remove] == ["old", "mid", "new"]
    assert plan_prune(units, RetentionConfig(max_age_days=None), now).remove == []


def test_watermark_refuses_then_accepts_with_a_margin(tmp_path: Path) -> None:
    free = [10 << 20]
    clock = [0.0]
    config = RetentionConfig(min_free=8 << 20, min_free_percent=0, resume_margin_percent=5)
    guard = DiskGuard(tmp_path, config, space=lambda p: DiskSpace(100 << 20, free[0]),
                      clock=lambda: clock[0])

    def at(megabytes: int) -> bool:
        free[0], clock[0] = megabytes << 20, clock[0] + 2
        return guard.low()

    assert [at(10), at(7), at(12), at(14), at(9), at(7)] == [False, True, True, False, False, True]
    assert guard.low_mark(100 << 20) == 8 << 20 and guard.resume_mark(100 << 20) == 13 << 20


def test_instance_arriving_during_removal_is_kept(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    trashed = tmp_path / TRASH_FOLDER / "pass-1"
    series = trashed / "1.2" / "1.2.3"
    series.mkdir(parents=True)
    (trashed / UNITS_FILE).write_text(json.dumps([{"study_uid": "1.2", "series_uid": "1.2.3",
                                                    "sop_uids": ["1.2.3.1"]}]))
    (series / "1.2.3.1.dcm").write_bytes(b"removed")
    (series / "1.2.3.2.dcm").write_bytes(b"late")  # linked into the moved folder meanwhile
    (series / ".origin.json").write_text("{}")
    assert settle_pass(trashed, spool) == {("1.2", "1.2.3"): ["1.2.3.2"]}
    assert sorted(p.name for p in (spool / "1.2" / "1.2.3").iterdir()) == [".origin.json", "1.2.3.2.dcm"]
    assert not trashed.exists()
    # A pass whose list could not be written (a full disk) and was interrupted: at the next
    # start, every instance goes back (none is known to be removed).
    lost = tmp_path / TRASH_FOLDER / "pass-2" / "1.4" / "1.4.5"
    lost.mkdir(parents=True)
    (lost / "1.4.5.1.dcm").write_bytes(b"kept")
    settle_trash(tmp_path)
    assert (spool / "1.4" / "1.4.5" / "1.4.5.1.dcm").read_bytes() == b"kept"
    assert not (tmp_path / TRASH_FOLDER / "pass-2").exists()


def write_config(path: Path, config: AppConfig) -> Path:
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    return path


def cli(config_file: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.app.cli", *args, "--config",
                           str(config_file)], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, check=False)


def derived_runner(spec: JobSpec) -> dict[str, Any]:
    """A stand-in result: a derived copy of one instance, so the outbox has a file to send."""
    manifest = counting_runner(spec)
    ds = pydicom.dcmread(min(Path(spec.series_dir).glob("*.dcm")))
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(Path(spec.result_dir) / "derived.dcm", enforce_file_format=True)
    return {**manifest, "files": ["derived.dcm"]}


def test_node_removes_finished_delivered_series_and_keeps_the_rest(tmp_path: Path) -> None:
    pacs = StoreSCP(tmp_path / "pacs", free_port()).start()
    down_port = free_port()  # a viewer that never answers
    held_files = make_ct_series(tmp_path / "held", 1)
    held_uid = str(pydicom.dcmread(held_files[0]).SeriesInstanceUID)
    gate = threading.Event()

    def runner(spec: JobSpec) -> dict[str, Any]:
        if spec.series_uid == held_uid:
            gate.wait(60)  # a job still running
        return derived_runner(spec)

    try:
        config = load_config(overrides={
            "node": {"port": free_port(), "data_dir": str(tmp_path / "var"),
                     "series_quiet_seconds": 0.3, "workers": 2},
            "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs.port},
                             "viewer": {"ae_title": "VIEWER", "host": "127.0.0.1", "port": down_port}},
            "outbox": {"retry_initial_seconds": 0.2, "retry_max_seconds": 0.5},
            "routes": [{"name": "to-pacs", "match": {"Modality": "CT"}, "instruction": "Copy.",
                        "send_to": ["pacs"]},
                       {"name": "to-viewer", "match": {"Modality": "MR"}, "instruction": "Copy.",
                        "send_to": ["viewer"]}],
            # Everything is "old" for the age rule at once; the node's own passes stay away.
            "retention": {"max_age_days": 1e-9, "interval_seconds": 3600, "min_idle_seconds": 1},
        })
        with Node(config, runner=runner) as node:
            delivered = make_ct_series(tmp_path / "ct", 2)
            undelivered = make_ct_series(tmp_path / "mr", 2, modality="MR")
            for files in (delivered, undelivered, held_files):
                assert storescu(node.port, files).returncode == 0
            wait_for(lambda: len(list(pacs.out_dir.iterdir())) == 1, timeout=30)
            wait_for(lambda: len([r for r in node.jobs.all() if r.state is JobState.DONE]) == 2)
            uid = {name: str(pydicom.dcmread(files[0]).SeriesInstanceUID)
                   for name, files in (("delivered", delivered), ("undelivered", undelivered))}
            time.sleep(1.0)  # idle for retention.min_idle_seconds
            config_file = write_config(tmp_path / "node.yaml", config)
            dry = cli(config_file, "prune", "--dry-run", "--json")
            assert dry.returncode == 0, dry.stderr
            plan = json.loads(dry.stdout)
            assert [r["series_uid"] for r in plan["remove"]] == [uid["delivered"]]
            assert plan["kept"] == {"undelivered": 1, "job unfinished": 1}
            refused = cli(config_file, "prune")
            assert refused.returncode == 2 and "prunes it by itself" in refused.stdout
            status = cli(config_file, "status")
            assert "disk:" in status.stdout and "oldest undelivered: " in status.stdout
            assert "-> viewer (" in status.stdout, status.stdout

            ran = node.retention.run()  # the node's own pass
            assert [u.series_uid for u, _ in ran.remove] == [uid["delivered"]]
            (done,) = ran.remove[0][0].jobs
            assert done.spec is not None
            assert not node.spool.series_dir(done.study_uid, done.series_uid).exists()
            assert not Path(done.spec.result_dir).exists() and node.jobs.get(done.job_id) is None
            assert not [p for p in (tmp_path / "var" / "outbox").glob("*.json")
                        if json.loads(p.read_text())["job_id"] == done.job_id]
            # The others stay whole: an undelivered result, a job still running.
            assert {s.series_uid for s in node.spool.scan()} == {uid["undelivered"], held_uid}
            gate.set()
            # A late instance of the removed series is a new series to the node.
            late = make_ct_series(tmp_path / "late", 1, study_uid=done.study_uid,
                                  series_uid=done.series_uid, start=50)
            assert storescu(node.port, late).returncode == 0
            (again,) = wait_for(lambda: [r for r in node.jobs.all()
                                         if r.series_uid == done.series_uid and r.state.finished])
            assert again.instance_count == 1 and again.supersedes == []
    finally:
        pacs.stop()


def test_a_series_folder_without_instances_yet_is_kept(tmp_path: Path) -> None:
    """A store creates the series folder before its instance is linked: in between, the folder
    holds no instance and no job knows it. It is not an old, finished series."""
    folder = tmp_path / "spool" / "1.2" / "1.2.3"
    folder.mkdir(parents=True)
    (folder / ".origin.json").write_text("{}")
    (unit,) = survey(tmp_path, JobStore(tmp_path / "jobs"), [], time.time() + 10 * DAY, 0.0)
    assert unit.keep is not None and unit.keep.startswith("receiving")
    assert plan_prune([unit], RetentionConfig(max_age_days=1), time.time() + 10 * DAY).remove == []
