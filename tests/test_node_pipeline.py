"""The node's job side in-process: routing, job records, failures, late instances, recovery.

Jobs run a stand-in runner that decodes every spooled instance (tests/receive_helpers.py); the
real pipeline is wired by the integrator and tested elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.uid import generate_uid

from config.loader import load_config
from dicom_node.app.commands.status import collect
from dicom_node.app.node import Node
from dicom_node.jobs.pipeline import JobFailed, JobSpec
from dicom_node.jobs.retry import RetryPolicy
from dicom_node.jobs.store import JobRecord, JobState, make_job_id
from image_model.fingerprint import instance_set_fingerprint
from tests.outbox_helpers import StoreSCP
from tests.receive_helpers import (
    PROJECT_ROOT,
    counting_runner,
    free_port,
    make_ct_series,
    node_config,
    storescu,
    wait_for,
)


def picky_runner(spec: JobSpec) -> dict[str, Any]:
    """Refuses single-instance series (JobFailed), crashes on two, counts otherwise."""
    count = len(list(Path(spec.series_dir).glob("*.dcm")))
    if count == 1:
        raise JobFailed("a single slice is not a volume")
    if count == 2:
        raise KeyError("two")  # a bug in a job
    return counting_runner(spec)


class RecordingOutbox:
    """Stands in for H1b's outbox at the hand-off seam: records what the node enqueues."""

    def __init__(self) -> None:
        self.enqueued: list[tuple[str, list[Path], list[str]]] = []

    def enqueue(self, job_id: str, files: list[Path], destinations: list[str],
                fallbacks: object = None) -> None:
        self.enqueued.append((job_id, files, destinations))


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        node.stop()


def start(nodes: list[Node], node: Node) -> Node:
    node.start()
    nodes.append(node)
    return node


def start_counting(nodes: list[Node], data_dir: Path, port: int | None = None, **node_overrides: Any) -> Node:
    """A started node (on ``port``, else a free one) whose jobs run :func:`counting_runner`, no outbox."""
    config = node_config(data_dir, free_port() if port is None else port, **node_overrides)
    return start(nodes, Node(config, runner=counting_runner, use_default_outbox=False))


def done_records(node: Node) -> list[JobRecord]:
    return [r for r in node.jobs.all() if r.state.finished]


def test_failed_jobs_are_recorded_and_the_node_keeps_going(
    nodes: list[Node], tmp_path: Path
) -> None:
    node = start(
        nodes,
        Node(
            node_config(tmp_path / "var", free_port()),
            runner=picky_runner,
            use_default_outbox=False,
        ),
    )
    for n, name in ((1, "one"), (2, "two"), (3, "three")):
        assert storescu(node.port, make_ct_series(tmp_path / name, n)).returncode == 0
    records = wait_for(lambda: len(done_records(node)) == 3 and done_records(node))
    by_count = {r.instance_count: r for r in records}
    assert (
        by_count[1].state is JobState.FAILED
        and by_count[1].error == "a single slice is not a volume"
    )
    assert by_count[2].state is JobState.FAILED and "KeyError" in (
        by_count[2].error or ""
    )
    assert by_count[3].state is JobState.DONE
    manifest = Path(by_count[3].manifest_path or "").read_text()
    assert '"instance_count": 3' in manifest


def test_late_instances_rerun_and_supersede(nodes: list[Node], tmp_path: Path) -> None:
    node = start_counting(nodes, tmp_path / "var")
    study, series = "1.2.826.0.1.3680043.10.1.1", "1.2.826.0.1.3680043.10.1.1.2"
    first = make_ct_series(tmp_path / "a", 3, study_uid=study, series_uid=series)
    assert storescu(node.port, first).returncode == 0
    (old,) = wait_for(lambda: [r for r in node.jobs.all() if r.state is JobState.DONE])
    late = make_ct_series(
        tmp_path / "b", 2, study_uid=study, series_uid=series, start=10
    )
    assert storescu(node.port, late).returncode == 0
    new = wait_for(
        lambda: [
            r
            for r in node.jobs.all()
            if r.state is JobState.DONE and r.job_id != old.job_id
        ]
    )[0]
    assert new.instance_count == 5 and new.supersedes == [old.job_id]
    assert new.series_uid == old.series_uid and new.fingerprint != old.fingerprint
    # The old record stays, superseded.
    assert node.jobs.load(old.job_id).state is JobState.DONE


def test_unrouted_series_is_kept_and_visible(nodes: list[Node], tmp_path: Path) -> None:
    node = start_counting(nodes, tmp_path / "var")
    files = make_ct_series(tmp_path / "mr", 2, modality="MR")
    assert storescu(node.port, files).returncode == 0
    (record,) = wait_for(lambda: node.jobs.all())
    assert record.state is JobState.UNROUTED and record.route is None
    assert "Modality" in (record.error or "") and "'MR'" in (record.error or "")
    assert len(list(node.spool.root.rglob("*.dcm"))) == 2


def test_results_handed_to_outbox_with_route_destinations(
    nodes: list[Node], tmp_path: Path
) -> None:
    config = node_config(tmp_path / "var", free_port())
    config = config.model_copy(
        update={"routes": [config.routes[0].model_copy(update={"send_to": ["pacs"]})]}
    )
    outbox = RecordingOutbox()

    def runner(spec: JobSpec) -> dict[str, Any]:
        manifest = counting_runner(spec)
        (Path(spec.result_dir) / "count.txt").write_text(
            str(manifest["instance_count"])
        )
        return {**manifest, "files": ["count.txt"]}

    node = start(nodes, Node(config, runner=runner, outbox=outbox))
    assert storescu(node.port, make_ct_series(tmp_path / "ct", 2)).returncode == 0
    wait_for(lambda: outbox.enqueued)
    ((job_id, files, destinations),) = outbox.enqueued
    assert destinations == ["pacs"]
    assert (
        files == [tmp_path / "var" / "results" / job_id / "count.txt"]
        and files[0].read_text() == "2"
    )


def test_recovery_requeues_unfinished_and_waiting_series(
    nodes: list[Node], tmp_path: Path
) -> None:
    port = free_port()
    slow = start_counting(nodes, tmp_path / "var", port, series_quiet_seconds=60)
    waiting = make_ct_series(tmp_path / "waiting", 3)
    running = make_ct_series(tmp_path / "running", 2)
    assert storescu(slow.port, waiting).returncode == 0
    assert storescu(slow.port, running).returncode == 0
    slow.stop()
    nodes.remove(slow)
    assert slow.jobs.all() == []  # quiet period not over: nothing processed yet

    # Pretend the node died while a job of the second series was running.
    (series,) = [s for s in slow.spool.scan() if len(s.sop_uids) == 2]
    fp = instance_set_fingerprint(series.sop_uids)
    job_id = make_job_id(series.study_uid, series.series_uid, fp, "ct-count")
    spec = JobSpec(
        job_id,
        series.study_uid,
        series.series_uid,
        str(series.folder),
        str(tmp_path / "var" / "results" / job_id),
        "ct-count",
        "Count.",
        "rules",
    )
    slow.jobs.save(
        JobRecord(
            job_id,
            series.study_uid,
            series.series_uid,
            JobState.RUNNING,
            "ct-count",
            fp,
            2,
            spec=spec.to_dict(),
        )
    )

    fresh = start_counting(nodes, tmp_path / "var", port)
    records = wait_for(lambda: len(done_records(fresh)) == 2 and done_records(fresh))
    by_count = {r.instance_count: r for r in records}
    assert (
        by_count[2].job_id == job_id
        and by_count[2].attempt == 2
        and by_count[2].state is JobState.DONE
    )
    assert by_count[3].state is JobState.DONE and by_count[3].attempt == 1


def test_results_reach_a_real_pacs_through_the_outbox(
    nodes: list[Node], tmp_path: Path
) -> None:
    """The node hands a finished job to the real outbox, which C-STOREs it to dcmtk storescp."""
    pacs_port, received = free_port(), tmp_path / "pacs"
    pacs = StoreSCP(received, pacs_port).start()
    try:
        overrides: dict[str, Any] = {
            "node": {
                "port": free_port(),
                "data_dir": str(tmp_path / "var"),
                "series_quiet_seconds": 0.3,
            },
            "destinations": {
                "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}
            },
            "routes": [
                {
                    "name": "ct-copy",
                    "match": {"Modality": "CT"},
                    "instruction": "Copy.",
                    "send_to": ["pacs"],
                }
            ],
        }
        config = load_config(overrides=overrides)

        def runner(spec: JobSpec) -> dict[str, Any]:
            """Stand-in result: a derived copy of the first instance with its own UIDs."""
            manifest = counting_runner(spec)
            ds = pydicom.dcmread(min(Path(spec.series_dir).glob("*.dcm")))
            ds.SeriesInstanceUID = generate_uid()
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(Path(spec.result_dir) / "derived.dcm", enforce_file_format=True)
            return {
                **manifest,
                "files": ["derived.dcm"],
                "derived_uid": str(ds.SOPInstanceUID),
            }

        node = start(nodes, Node(config, runner=runner))
        assert storescu(node.port, make_ct_series(tmp_path / "ct", 2)).returncode == 0
        (record,) = wait_for(
            lambda: [r for r in node.jobs.all() if r.state is JobState.DONE]
        )
        manifest = json.loads(Path(record.manifest_path or "").read_text())
        got = wait_for(lambda: list(received.iterdir()), timeout=20)
        assert [str(pydicom.dcmread(p).SOPInstanceUID) for p in got] == [
            manifest["derived_uid"]
        ]
        (delivery,) = wait_for(
            lambda: [d for d in collect(config)["deliveries"] if d["state"] == "done"]
        )
        assert delivery["job_id"] == record.job_id and delivery["destination"] == "pacs"
    finally:
        pacs.stop()


class RefusingOutbox:
    """An outbox on a full disk for its first ``full`` hand-offs (ENOSPC, transient), then
    taking them; with ``refuse`` it refuses the destination for good (a permanent error)."""

    def __init__(self, full: int = 0, refuse: bool = False) -> None:
        self.full, self.refuse, self.calls = full, refuse, 0
        self.enqueued: list[str] = []

    def enqueue(self, job_id: str, files: list[Path], destinations: list[str],
                fallbacks: object = None) -> None:
        self.calls += 1
        if self.refuse:
            raise ValueError(f"unknown destination(s): {', '.join(destinations)}")
        if self.calls <= self.full:
            raise OSError(28, "No space left on device")
        self.enqueued.append(job_id)


def test_results_not_handed_on_are_retried_when_transient_else_failed(
    nodes: list[Node], tmp_path: Path
) -> None:
    """One retry policy for every failure of a run, the hand-off to the outbox included: a full
    disk is waited out with backoff until the results are queued; a refusal fails the job."""
    config = node_config(tmp_path / "var", free_port())
    config = config.model_copy(update={
        "routes": [config.routes[0].model_copy(update={"send_to": ["pacs"]})],
        "queue": config.queue.model_copy(update={"retry_backoff_seconds": 0.2,
                                                 "retry_backoff_max_seconds": 0.4}),
    })
    full = RefusingOutbox(full=2)
    node = start(nodes, Node(config, runner=counting_runner, outbox=full))
    assert storescu(node.port, make_ct_series(tmp_path / "ct", 2)).returncode == 0
    (record,) = wait_for(lambda: done_records(node))
    assert record.state is JobState.DONE and full.enqueued == [record.job_id]
    # A full disk is waited out: it used no retries.
    assert (record.attempt, record.retries, record.error, record.waiting_since) == (3, 0, None, None)

    refused = RefusingOutbox(refuse=True)
    node = start(nodes, Node(config.model_copy(update={"node": config.node.model_copy(update={
        "port": free_port(), "data_dir": tmp_path / "var2"})}), runner=counting_runner,
        outbox=refused))
    assert storescu(node.port, make_ct_series(tmp_path / "ct2", 2)).returncode == 0
    (record,) = wait_for(lambda: done_records(node))
    assert record.state is JobState.FAILED and refused.calls == 1 and record.attempt == 1
    assert "outbox" in (record.error or "") and "unknown destination" in (record.error or "")


def test_late_instances_after_a_restart_still_supersede(
    nodes: list[Node], tmp_path: Path
) -> None:
    port = free_port()
    study, series = "1.2.826.0.1.3680043.10.1.2", "1.2.826.0.1.3680043.10.1.2.2"
    first = start_counting(nodes, tmp_path / "var", port)
    assert (
        storescu(
            first.port,
            make_ct_series(tmp_path / "a", 3, study_uid=study, series_uid=series),
        ).returncode
        == 0
    )
    (old,) = wait_for(lambda: [r for r in first.jobs.all() if r.state is JobState.DONE])
    first.stop()
    nodes.remove(first)

    second = start_counting(nodes, tmp_path / "var", port)
    late = make_ct_series(
        tmp_path / "b", 1, study_uid=study, series_uid=series, start=20
    )
    assert storescu(second.port, late).returncode == 0
    (new,) = wait_for(
        lambda: [
            r
            for r in second.jobs.all()
            if r.state is JobState.DONE and r.job_id != old.job_id
        ]
    )
    assert new.instance_count == 4 and new.supersedes == [old.job_id]


def test_transient_error_reading_a_header_is_retried_then_routed(
    nodes: list[Node], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The spool's volume goes away for a moment just as the series becomes due (an NFS hiccup):
    reading the header fails with an OSError. The series is not written off as unrouted: it is
    tried again after a backoff and routed once its header reads."""
    config = node_config(tmp_path / "var", free_port(), series_quiet_seconds=1.0)
    config = config.model_copy(update={"queue": config.queue.model_copy(update={
        "retry_backoff_seconds": 0.2, "retry_backoff_max_seconds": 0.5})})
    node = start(nodes, Node(config, runner=counting_runner, use_default_outbox=False))
    files = make_ct_series(tmp_path / "ct", 3)
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert storescu(node.port, files).returncode == 0
    folder = node.spool.series_dir(str(first.StudyInstanceUID), str(first.SeriesInstanceUID))
    away = tmp_path / "volume-away"
    folder.rename(away)
    # The scheduler tried it (and said so, naming the series)...
    wait_for(lambda: any(r.name == "dicom_node.app.node" and str(first.SeriesInstanceUID)
                         in r.getMessage() for r in caplog.records), timeout=20)
    assert node.jobs.all() == []  # ...and recorded nothing: no terminal "unrouted"
    away.rename(folder)
    (record,) = wait_for(lambda: done_records(node))
    assert record.state is JobState.DONE and record.route == "ct-count"
    assert record.instance_count == 3
    assert json.loads(Path(record.manifest_path or "").read_text())["instance_count"] == 3


def test_a_job_that_keeps_killing_the_node_ends_failed_after_bounded_attempts(
    nodes: list[Node], tmp_path: Path
) -> None:
    """The embedded pool's runs die with the node. A job found running at every start (it kills
    the node each time, say by running it out of memory) is started again until it used every
    attempt, then ends failed with the reason, without running."""
    port = free_port()
    first = start_counting(nodes, tmp_path / "var", port, series_quiet_seconds=60)
    assert storescu(first.port, make_ct_series(tmp_path / "ct", 2)).returncode == 0
    first.stop()
    nodes.remove(first)
    (series,) = list(first.spool.scan())
    fp = instance_set_fingerprint(series.sop_uids)
    job_id = make_job_id(series.study_uid, series.series_uid, fp, "ct-count")
    spec = JobSpec(job_id=job_id, study_uid=series.study_uid, series_uid=series.series_uid,
                   series_dir=str(series.folder), result_dir=str(tmp_path / "var" / "results" / job_id),
                   route="ct-count", instruction="Count.", planner="rules",
                   instance_uids=sorted(series.sop_uids))
    limit = RetryPolicy.from_config(first.config.queue).max_attempts
    first.jobs.save(JobRecord(job_id, series.study_uid, series.series_uid, JobState.RUNNING,
                              "ct-count", fp, 2, attempt=limit, spec=spec))
    again = start_counting(nodes, tmp_path / "var", port)
    (record,) = wait_for(lambda: done_records(again))
    assert record.state is JobState.FAILED and record.attempt == limit
    assert record.error == (f"gave up after {limit} attempt(s): the job kept ending without a "
                            "result (its worker was lost each time)")
    assert not Path(spec.result_dir).exists()  # not run again


def test_operator_retries_a_failed_job_from_the_command_line(
    nodes: list[Node], tmp_path: Path
) -> None:
    """``mmed-node jobs list/show/retry`` as a subprocess beside a running node: the retry is a
    request the node applies at once; the job runs again from scratch and ends done."""
    broken = tmp_path / "model-missing"
    broken.touch()

    def flaky_runner(spec: JobSpec) -> dict[str, Any]:
        if broken.exists():
            raise JobFailed("model folder missing")
        return counting_runner(spec)

    config = node_config(tmp_path / "var", free_port())
    node = start(nodes, Node(config, runner=flaky_runner, use_default_outbox=False))
    assert storescu(node.port, make_ct_series(tmp_path / "ct", 2)).returncode == 0
    (failed,) = wait_for(lambda: done_records(node))
    assert failed.state is JobState.FAILED and failed.error == "model folder missing"
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))

    def jobs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dicom_node.app.cli", "jobs", "--config",
                               str(config_file), *args], cwd=PROJECT_ROOT, capture_output=True,
                              text=True, timeout=60, check=False)

    listed = jobs("list", "--state", "failed")
    assert listed.returncode == 0 and failed.job_id in listed.stdout and "model folder missing" in listed.stdout
    shown = jobs("show", failed.job_id)
    assert json.loads(shown.stdout)["state"] == "failed"
    broken.unlink()  # the operator fixed the cause
    retried = jobs("retry", failed.job_id)
    assert retried.returncode == 0 and "the running node takes it up" in retried.stdout, retried
    record = wait_for(lambda: (r := node.jobs.load(failed.job_id)).state is JobState.DONE and r)
    assert record.attempt == 1 and record.error is None
    again = jobs("retry", failed.job_id)
    assert again.returncode == 1 and "only a failed job can be retried" in again.stdout
