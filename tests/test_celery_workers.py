"""Celery + Redis end to end, with real peers: redis-server (AOF) on loopback, two ``mmed-node
worker`` subprocesses (solo pool), an in-process node with ``queue.broker_url``, dcmtk storescu
sending phantom CT series and dcmtk storescp (unique file names, so a second delivery would show
as a second file) standing in as the PACS."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest

from config.loader import load_config
from config.schema import AppConfig, DestinationConfig
from dicom_node.app.commands.status import collect
from dicom_node.app.node import Node
from dicom_node.jobs.queues import make_executor
from dicom_node.jobs.service import JobService
from dicom_node.jobs.shared import SharedJobState
from dicom_node.jobs.spec import JobRequest, JobSpec, SeriesRef
from dicom_node.jobs.store import JobRecord, JobState, JobStore
from image_model.fingerprint import instance_set_fingerprint
from testkit.phantoms import write_ct_phantom
from tests.celery_helpers import (
    RedisServer,
    Worker,
    celery_config,
    wait_until,
    write_yaml,
)
from tests.orthanc_helpers import ORTHANC_AET, start_orthanc
from tests.outbox_helpers import StoreSCP, results_by_source
from tests.qr_helpers import write_study
from tests.receive_helpers import free_port, storescu
from tests.test_http_api import call

pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    root: Path
    redis: RedisServer
    workers: list[Worker]
    worker_config: dict

    def node_config(self, name: str) -> tuple[AppConfig, StoreSCP]:
        pacs = StoreSCP(self.root / name / "pacs", free_port(), extra=["-uf"]).start()
        data = celery_config(self.root / name / "var", free_port(), pacs.port, self.redis.url)
        return load_config(overrides=data), pacs

    def ensure_workers(self) -> None:
        for worker in self.workers:
            if worker.proc_ended():
                worker.start()
        for worker in self.workers:
            worker.wait_ready()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("celery")
    server = RedisServer(root / "redis", free_port()).start()
    config = celery_config(root / "worker-var", free_port(), free_port(), server.url)
    config_path = write_yaml(root / "worker.yaml", config)
    workers = [Worker(config_path, f"w{i}", root / f"w{i}.log") for i in (1, 2)]
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        yield Cluster(root, server, workers, config)
    finally:
        for worker in workers:
            worker.stop()
        server.stop()


def send_phantoms(node: Node, folder: Path, count: int, **grid: int) -> list[str]:
    """Send ``count`` phantom series (one association each); return their Series UIDs."""
    series = []
    for i in range(count):
        # A distinct seed per series: distinct UIDs, hence distinct jobs in the shared broker.
        truth = write_ct_phantom(folder / f"ct{i}", seed=time.time_ns() % 2**31 + i, **grid)
        result = storescu(node.port, truth.files)
        assert result.returncode == 0, result.stderr
        series.append(str(pydicom.dcmread(truth.files[0], stop_before_pixels=True).SeriesInstanceUID))
    return series


def assert_one_seg_one_sr_each(pacs: StoreSCP, series: list[str]) -> None:
    files = list(pacs.out_dir.iterdir())
    uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    assert len(files) == len(uids) == 2 * len(series), "a result was delivered twice"
    got = results_by_source(pacs, set(series))
    assert got == {s: Counter({"SEG": 1, "SR": 1}) for s in series}


def wait_results(pacs: StoreSCP, expected_files: int, timeout: float) -> None:
    wait_until(lambda: len(list(pacs.out_dir.iterdir())) >= expected_files, timeout)
    time.sleep(1.0)  # a duplicate delivery would arrive now


def test_several_series_one_seg_and_one_sr_each(cluster: Cluster) -> None:
    cluster.ensure_workers()
    config, pacs = cluster.node_config("several")
    node = Node(config)
    node.start()
    try:
        series = send_phantoms(node, cluster.root / "several" / "in", 4, slices=12, rows=48, cols=48)
        wait_results(pacs, 2 * len(series), timeout=90)
        assert_one_seg_one_sr_each(pacs, series)
        records = [r for r in node.jobs.all() if r.route]
        assert len(records) == len(series)
        workers = {w.hostname for w in cluster.workers}
        for record in records:
            assert record.state is JobState.DONE and record.worker in workers, record
            assert record.attempt == 1 and record.started and record.finished
        # `mmed-node status` shows which worker ran each job.
        shown = {j["job_id"]: j["worker"] for j in collect(config)["jobs"] if j["route"]}
        assert shown == {r.job_id: r.worker for r in records}
    finally:
        node.stop()
        pacs.stop()


def test_worker_killed_mid_job_other_worker_finishes(cluster: Cluster) -> None:
    """Default recovery settings (a 20 s lease, the 3600 s visibility timeout left as a last
    resort): kill -9 of the worker holding a job; the other worker finishes it within 60 s of
    the kill, and the PACS receives exactly one SEG and one SR."""
    cluster.ensure_workers()
    config, pacs = cluster.node_config("kill")
    assert config.queue.visibility_timeout_seconds == 3600 and config.queue.lease_seconds == 20
    state = SharedJobState.from_url(cluster.redis.url)
    node = Node(config)
    node.start()
    try:
        # A larger series: the job runs long enough to be caught mid-run.
        series = send_phantoms(node, cluster.root / "kill" / "in", 1, slices=64, rows=192, cols=192)
        running = wait_until(
            lambda: next((s for r in node.jobs.all() if r.route
                          for s in [state.get(r.job_id)] if s and s.state == "running"), None),
            timeout=60, interval=0.02,
        )
        assert running is not None, "the job never ran"
        victim = next(w for w in cluster.workers if w.hostname == running.worker)
        victim.kill9()
        killed = time.monotonic()
        assert state.get(running.job_id).state == "running"  # killed while holding the job
        wait_results(pacs, 2, timeout=60)
        assert time.monotonic() - killed < 60
        assert_one_seg_one_sr_each(pacs, series)
        (record,) = [r for r in node.jobs.all() if r.route]
        assert record.state is JobState.DONE
        assert record.worker != victim.hostname and record.attempt == 2
    finally:
        node.stop()
        pacs.stop()
        state.close()


def test_redis_down_while_series_arrive(cluster: Cluster) -> None:
    cluster.ensure_workers()
    config, pacs = cluster.node_config("outage")
    node = Node(config)
    node.start()
    try:
        cluster.redis.stop()
        series = send_phantoms(node, cluster.root / "outage" / "in", 2, slices=12, rows=48, cols=48)
        # The node accepted and spooled everything; the jobs wait, queued, for the broker.
        queued = wait_until(
            lambda: len([r for r in node.jobs.all() if r.route and r.state is JobState.QUEUED]) == 2,
            timeout=20,
        )
        assert queued
        time.sleep(2.0)
        assert not list(pacs.out_dir.iterdir())
        cluster.redis.start()
        wait_results(pacs, 2 * len(series), timeout=120)
        assert_one_seg_one_sr_each(pacs, series)
        assert all(r.state is JobState.DONE for r in node.jobs.all() if r.route)
    finally:
        node.stop()
        pacs.stop()


def test_poison_job_fails_with_reason_after_bounded_tries(cluster: Cluster, tmp_path: Path) -> None:
    """A worker that cannot see the series (shared volume not mounted) retries with backoff, then
    the job ends failed with the reason, mirrored into the node's job record."""
    cluster.ensure_workers()
    config = load_config(overrides=celery_config(tmp_path / "var", free_port(), free_port(),
                                                 cluster.redis.url))
    store = JobStore(tmp_path / "var" / "jobs")
    missing = tmp_path / "not-mounted" / "series"
    series = SeriesRef("1.2.3", f"1.2.3.{time.time_ns()}", str(missing),
                       ("1.2.3.4.1", "1.2.3.4.2", "1.2.3.4.3"), "poison")
    handed: list[str] = []
    service = JobService(config, store, make_executor(config), RecordingOutbox(handed),
                         tmp_path / "var" / "results")
    service.start()
    try:
        (record,) = service.submit(series, [JobRequest("ct-lungs", "ct-lungs", "Segment the lungs.",
                                                       "rules", None, ["pacs"])])
        assert service.wait_idle(timeout=60)
    finally:
        service.stop()
    record = store.load(record.job_id)
    assert record.state is JobState.FAILED and not handed
    assert record.attempt == config.queue.max_retries + 1
    assert record.retries == config.queue.max_retries
    assert record.error and "not found on worker host" in record.error and str(missing) in record.error
    assert record.error.startswith(f"gave up after {record.attempt} attempt(s)")
    assert record.worker in {w.hostname for w in cluster.workers}


class RecordingOutbox:
    """Records the jobs whose results reach the outbox."""

    def __init__(self, handed: list[str]) -> None:
        self.handed = handed

    def enqueue(self, job_id: str, files: list[Path], destinations: list[str],
                fallbacks: object = None) -> None:
        self.handed.append(job_id)


def test_node_restart_while_workers_run_its_jobs(cluster: Cluster) -> None:
    """The node stops after publishing; a worker finishes the job meanwhile; the restarted node
    reads the shared state, hands the results to its outbox once and records who ran the job.
    The workers are paused until the node has stopped, so that the job cannot finish (and be
    handed on) while the first node still runs."""
    cluster.ensure_workers()
    config, pacs = cluster.node_config("restart")
    state = SharedJobState.from_url(cluster.redis.url)
    node = Node(config)
    node.start()
    for worker in cluster.workers:
        worker.pause()
    try:
        try:
            series = send_phantoms(node, cluster.root / "restart" / "in", 1, slices=12, rows=48, cols=48)
            published = wait_until(
                lambda: next((s for r in node.jobs.all() if r.route
                              for s in [state.get(r.job_id)] if s and s.published), None),
                timeout=30, interval=0.02,
            )
            assert published is not None
        finally:
            node.stop()
    finally:
        for worker in cluster.workers:
            worker.resume()
    try:
        assert wait_until(lambda: state.get(published.job_id).state == "done", 60)
        assert not list(pacs.out_dir.iterdir())  # nobody handed the results on yet
        node = Node(config)
        node.start()
        try:
            wait_results(pacs, 2, timeout=60)
            assert_one_seg_one_sr_each(pacs, series)
            record = node.jobs.load(published.job_id)
            assert record.state is JobState.DONE and record.worker == state.get(record.job_id).worker
        finally:
            node.stop()
    finally:
        pacs.stop()
        state.close()


def test_lost_worker_attempts_are_bounded_and_done_jobs_never_rerun(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Each start of a job counts as an attempt in its hash (a worker dying mid-job leaves the
    count raised). A job that already used every attempt ends failed without running; a
    delivery of a job that is already done is acknowledged without running it again."""
    cluster.ensure_workers()
    config = load_config(overrides=celery_config(tmp_path / "var", free_port(), free_port(),
                                                 cluster.redis.url))
    store = JobStore(tmp_path / "var" / "jobs")
    series = tmp_path / "series"
    write_ct_phantom(series, slices=8, rows=32, cols=32, seed=time.time_ns() % 2**31)
    specs = [
        JobSpec(job_id=f"{name}-{time.time_ns()}", study_uid="1.2.3", series_uid="1.2.3.4",
                series_dir=str(series), result_dir=str(tmp_path / "results" / name),
                route="ct-lungs", instruction="Segment the lungs.", planner="rules")
        for name in ("lost", "done")
    ]
    for spec in specs:
        store.save(JobRecord(job_id=spec.job_id, study_uid=spec.study_uid,
                             series_uid=spec.series_uid, state=JobState.QUEUED, route=spec.route,
                             fingerprint="f", instance_count=8, spec=spec))
    limit = config.queue.max_retries + 1 + config.queue.max_redeliveries
    client = cluster.redis.client()
    lost, done = specs
    # Earlier deliveries of "lost" all ended with their worker killed.
    client.hset(SharedJobState.key(lost.job_id), mapping={"state": "queued", "attempt": limit})
    client.hset(SharedJobState.key(done.job_id), mapping={"state": "done", "attempt": 1})
    handed: list[str] = []
    service = JobService(config, store, make_executor(config), RecordingOutbox(handed),
                         tmp_path / "results")
    service.start()
    try:
        service.adopt(store.load(lost.job_id))  # the node restarted: it takes the job up again
        # Deliver the done job straight to a worker, as a redelivery would.
        from dicom_node.jobs.celery_app import TASK_NAME, make_celery_app

        make_celery_app(config).send_task(TASK_NAME, args=[done.to_dict()], task_id=done.job_id)
        assert service.wait_idle(timeout=30)
        assert wait_until(lambda: any(f"job {done.job_id} already done" in w.log.read_text()
                                      for w in cluster.workers), 30)
    finally:
        service.stop()
    record = store.load(lost.job_id)
    assert record.state is JobState.FAILED and record.error and "gave up after" in record.error
    assert record.attempt == limit + 1
    assert not Path(lost.result_dir).exists()  # it did not run
    assert client.hget(SharedJobState.key(done.job_id), "attempt") == "1"
    assert not Path(done.result_dir).exists() and handed == []
    client.close()


def test_question_runs_on_a_worker_and_the_node_delivers_it(cluster: Cluster, tmp_path: Path) -> None:
    """With a broker configured, an HTTP question is a job like any other: a Celery worker runs
    it, and the node's outbox sends the answer to the destination asked for."""
    cluster.ensure_workers()
    orthanc = start_orthanc(tmp_path / "orthanc", free_port(), auto_route=False)
    try:
        truth = write_study(tmp_path / "ct", accession="ACC-CELERY-Q")
        orthanc.upload(truth.files)
        base, pacs = cluster.node_config("question")
        config = base.model_copy(update={
            "destinations": {**base.destinations, "orthanc": DestinationConfig(
                ae_title=ORTHANC_AET, host="127.0.0.1", port=orthanc.dicom_port)},
            "api": base.api.model_copy(update={"enabled": True, "port": 0}),
        })
        try:
            with Node(config) as node:
                status, answer, _ = call(node.api_port, "POST", "/questions", {
                    "from": "orthanc", "accession": "ACC-CELERY-Q", "send_to": ["pacs"],
                    "question": "How large is the left lung?", "wait": 120}, token=None)
                assert status == 200 and answer["state"] == "done", answer
                (job,) = answer["jobs"]
                record = node.jobs.load(job["job_id"])
                assert record.worker in {w.hostname for w in cluster.workers}, record
                wait_results(pacs, 2, timeout=30)
                assert_one_seg_one_sr_each(pacs, [truth.series_uid])
        finally:
            pacs.stop()
    finally:
        orthanc.stop()


def test_retry_due_during_a_broker_outage_is_published_when_it_returns(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A worker reports a transient error (the series is not visible on its host yet); the node
    schedules the retry; Redis goes down before the retry is due, so publishing it fails; once
    Redis is back the node publishes it and the job completes. Workers never republish, so no
    retry can be dropped with a broker that is down at that moment."""
    cluster.ensure_workers()
    overrides = celery_config(tmp_path / "var", free_port(), free_port(), cluster.redis.url,
                              retry_backoff_seconds=3, retry_backoff_max_seconds=3)
    config = load_config(overrides=overrides)
    store = JobStore(tmp_path / "var" / "jobs")
    phantom = write_ct_phantom(tmp_path / "phantom", slices=12, rows=48, cols=48,
                               seed=time.time_ns() % 2**31)
    sops = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in phantom.files}
    mount = tmp_path / "not-mounted-yet" / "series"
    series = SeriesRef(phantom.study_uid, phantom.series_uid, str(mount), tuple(sorted(sops)),
                       instance_set_fingerprint(sops))
    service = JobService(config, store, make_executor(config), None, tmp_path / "var" / "results")
    service.start()
    try:
        (record,) = service.submit(series, [JobRequest("ct-lungs", "ct-lungs", "Segment the lungs.",
                                                       "rules", None, [])])
        assert wait_until(lambda: (r := store.load(record.job_id)).retries == 1
                          and r.state is JobState.QUEUED, 30)
        cluster.redis.stop()
        mount.mkdir(parents=True)  # the volume appears meanwhile
        for uid, path in sops.items():
            shutil.copy(path, mount / f"{uid}.dcm")
        time.sleep(5.0)  # the retry fell due while Redis was down
        assert store.load(record.job_id).state is JobState.QUEUED
        cluster.redis.start()
        assert service.wait_idle(timeout=90)
    finally:
        service.stop()
    done = store.load(record.job_id)
    assert done.state is JobState.DONE and done.attempt == 2 and done.retries == 1, done
