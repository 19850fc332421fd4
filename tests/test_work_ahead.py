"""Work ahead in a series' quiet period: routing and the job's run done before the period ends,
adopted when nothing arrived since, dropped otherwise; nothing written or sent before the end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest

from config.loader import load_config
from dicom_node.app.ahead import Ahead
from dicom_node.app.node import Node
from dicom_node.jobs.embedded import EmbeddedExecutor
from dicom_node.jobs.manifest import load_manifest
from dicom_node.jobs.runner import PipelineRunner, RunEvent, RunKind
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.speculation import AheadSlot, Prepared, talks_to_endpoints
from dicom_node.jobs.store import JobRecord, JobState
from dicom_node.receive.assembly import DueSeries
from image_model.volume import Volume
from testkit.phantoms import write_ct_phantom
from tests.receive_helpers import free_port, storescu, wait_for


def spec(series: str = "1.2.3", job: str = "job-1", results: Path = Path("/results")) -> JobSpec:
    return JobSpec(job_id=job, study_uid="1.2", series_uid=series, series_dir="/spool/x",
                   result_dir=str(results / job), route="r", instruction="Segment the lungs.",
                   planner="rules")


def due(arrivals: int, series: str = "1.2.3") -> DueSeries:
    return DueSeries("1.2", series, frozenset({"1"}), "fp", "PACS", "NODE", (), None, arrivals)


# --------------------------------------------------------------------------- the slot


def test_slot_gives_the_outcome_only_to_an_equal_spec_and_drops_it_on_discard() -> None:
    slot = AheadSlot()
    prepared = Prepared(spec(), Volume.__new__(Volume))
    slot.begin(spec())
    slot.publish(spec(), prepared)
    assert slot.take(spec(series="4.5.6", job="job-2")) is None  # another job adopts nothing
    assert slot.take(spec()) is prepared
    assert slot.take(spec()) is None  # taken once

    slot.begin(spec())
    slot.discard("1.2", "1.2.3")  # something arrived while it ran
    assert not slot.wanted(spec())
    slot.publish(spec(), prepared)
    assert slot.held() is None and slot.take(spec()) is None

    # The series' job runs with another spec (its predecessors changed, say): the outcome is
    # not adopted, nor kept.
    slot.begin(spec())
    slot.publish(spec(), prepared)
    assert slot.take(spec(job="job-2")) is None and slot.held() is None


def test_a_job_waits_for_the_run_ahead_of_its_own_spec() -> None:
    slot = AheadSlot()
    prepared = Prepared(spec(), Volume.__new__(Volume))
    slot.begin(spec())
    taken: list[Prepared | None] = []
    waiter = threading.Thread(target=lambda: taken.append(slot.take(spec())))
    waiter.start()
    time.sleep(0.2)
    assert not taken  # still running ahead: the job waits rather than doing it twice
    slot.publish(spec(), prepared)
    waiter.join(5)
    assert taken == [prepared]


def test_endpoints_anywhere_in_the_config_keep_tools_from_running_ahead() -> None:
    assert not talks_to_endpoints(load_config().model_dump())
    config = load_config(overrides={"planner": {"backend": "openai", "endpoint": "http://x:1/v1"}})
    assert talks_to_endpoints(config.model_dump())


# --------------------------------------------------------------------------- routing ahead


def test_routing_ahead_holds_until_anything_arrives() -> None:
    routed: list[int] = []
    discarded: list[tuple[str, str]] = []
    started: list[str] = []
    def route(series: DueSeries) -> str:
        routed.append(series.arrivals)
        return f"decision {series.arrivals}"

    ahead: Ahead[str] = Ahead(route, lambda s, d: started.append(d),
                              lambda study, series: discarded.append((study, series)))
    ahead.look([due(3)])
    ahead.look([due(3)])  # routed once per state
    assert routed == [3] and started == ["decision 3"]
    assert ahead.take(due(3)) == "decision 3"
    ahead.look([due(3)])
    assert ahead.take(due(4)) is None  # a duplicate arrived since: routed afresh by the dispatch
    assert discarded == [("1.2", "1.2.3")]


def test_routing_ahead_that_fails_is_not_tried_again_for_the_same_state() -> None:
    tries: list[int] = []

    def failing(series: DueSeries) -> str:
        tries.append(series.arrivals)
        raise OSError("gone")

    ahead: Ahead[str] = Ahead(failing, lambda s, d: None, lambda study, series: None)
    ahead.look([due(1)])
    ahead.look([due(1)])
    assert tries == [1] and ahead.take(due(1)) is None


# --------------------------------------------------------------------------- the pool


class AheadRecorder:
    """A runner that runs ahead in steps, asking ``keep_going`` between them."""

    def __init__(self) -> None:
        self.ahead: list[tuple[str, int]] = []
        self.jobs: list[str] = []
        self.release = threading.Event()

    def __call__(self, job: JobSpec) -> dict[str, Any]:
        self.jobs.append(job.job_id)
        return {}

    def run_ahead(self, job: JobSpec, keep_going: Callable[[], bool]) -> None:
        steps = 0
        while keep_going() and steps < 50:
            self.release.wait(0.05)
            steps += 1
        self.ahead.append((job.job_id, steps))

    def discard_ahead(self, study_uid: str, series_uid: str) -> None:
        pass


def test_the_pool_runs_ahead_only_when_idle_and_yields_to_a_real_job(tmp_path: Path) -> None:
    runner = AheadRecorder()
    pool = EmbeddedExecutor(runner, workers=1)
    events: list[RunEvent] = []
    pool.start(events.append)
    try:
        assert pool.speculate(spec(job="ahead"))
        time.sleep(0.3)  # running ahead now
        pool.run(spec(series="9.9", job="real", results=tmp_path), 1)
        wait_for(lambda: [e for e in events if e.kind is RunKind.DONE], timeout=10)
        # The run ahead stopped between its steps for the other series' job, well before 50.
        ((job, steps),) = runner.ahead
        assert job == "ahead" and steps < 20
        assert runner.jobs == ["real"]
    finally:
        pool.stop()


# --------------------------------------------------------------------------- the node


class TimedOutbox:
    """Records when the node hands each job's results on."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}

    def enqueue(self, job_id: str, files: list[Path], destinations: list[str],
                fallbacks: object = None) -> None:
        self.at[job_id] = time.monotonic()

    def wait_settled(self, job_ids: object, timeout: float) -> bool:
        return True


QUIET = 4.0


def lung_node(tmp_path: Path) -> tuple[Node, PipelineRunner, TimedOutbox]:
    config = load_config(overrides={
        "node": {"port": free_port(), "data_dir": str(tmp_path / "var"),
                 "series_quiet_seconds": QUIET},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": free_port()}},
    })
    runner, outbox = PipelineRunner(config), TimedOutbox()
    node = Node(config, runner=runner, outbox=outbox)
    node.start()
    # A first series loads the planner's models, which are not what the tests time.
    warm = write_ct_phantom(tmp_path / "warm", slices=16, rows=64, cols=64, slice_spacing=8.0, seed=7)
    assert storescu(node.port, warm.files).returncode == 0
    wait_for(lambda: [r for r in node.jobs.all() if r.state is JobState.DONE], timeout=90)
    return node, runner, outbox


def jobs_of(node: Node, files: list[Path]) -> list[JobRecord]:
    """The job records of the series in ``files``."""
    series = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    return [r for r in node.jobs.all() if r.series_uid == series]


def done(records: list[JobRecord]) -> list[JobRecord]:
    return [r for r in records if r.state is JobState.DONE]


@pytest.mark.slow
def test_a_settled_series_is_run_ahead_and_adopted_nothing_sent_before_its_quiet_end(
    tmp_path: Path,
) -> None:
    truth = write_ct_phantom(tmp_path / "ct", slices=16, rows=64, cols=64, slice_spacing=8.0)
    node, runner, outbox = lung_node(tmp_path)
    try:
        assert storescu(node.port, truth.files).returncode == 0
        held = wait_for(runner.ctx.ahead.held, timeout=QUIET - 0.5)
        # Done ahead, yet no job, no result and nothing handed on before the quiet period ends.
        assert jobs_of(node, truth.files) == [] and len(outbox.at) == 1  # the warm-up's
        assert not Path(held.result_dir).exists()
        (job,) = wait_for(lambda: done(jobs_of(node, truth.files)), timeout=60)
        # The tracker's clock is time.monotonic: the quiet period ended QUIET after the last arrival.
        (state,) = [st for st in node.tracker.snapshot() if st.series_uid == job.series_uid]
        assert outbox.at[job.job_id] >= state.last_arrival + QUIET
        manifest = load_manifest(job.result_dir)
        assert set(manifest.ahead) == {"load", "tools", "encode"}
        assert "tools" not in manifest.timings and "adopt" in manifest.timings
        assert manifest.instances == job.instance_count == len(truth.files)
        assert {"tools", "encoded"} <= {stage.value for stage in job.stages}
    finally:
        node.stop()


@pytest.mark.slow
def test_an_instance_arriving_after_the_run_ahead_drops_it(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path / "ct", slices=16, rows=64, cols=64, slice_spacing=8.0)
    node, runner, _ = lung_node(tmp_path)
    try:
        assert storescu(node.port, truth.files[:-1]).returncode == 0
        early = wait_for(runner.ctx.ahead.held, timeout=QUIET - 0.5)
        assert early.instance_uids is not None and len(early.instance_uids) == len(truth.files) - 1
        assert storescu(node.port, truth.files[-1:]).returncode == 0
        (job,) = wait_for(lambda: done(jobs_of(node, truth.files)), timeout=60)
        assert jobs_of(node, truth.files) == [job]
        manifest = load_manifest(job.result_dir)
        # One job, on every instance: the run ahead of the smaller set was not adopted.
        assert job.instance_count == manifest.instances == len(truth.files)
        assert job.job_id != early.job_id and job.supersedes == []
        seg = pydicom.dcmread(Path(job.result_dir) / "seg.dcm", stop_before_pixels=True)
        referenced = {str(item.ReferencedSOPInstanceUID)
                      for series in seg.ReferencedSeriesSequence
                      for item in series.ReferencedInstanceSequence}
        assert len(referenced) == len(truth.files)
    finally:
        node.stop()
