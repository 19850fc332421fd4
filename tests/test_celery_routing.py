"""Celery queue choice, publishing and leases, against a real redis-server (no workers): jobs
land on the ``gpu`` or ``cpu`` list by the tools their route may call; the node records them in
the job hash; a lease outlives a long run and lapses once its worker is gone; without a broker
URL the node keeps its embedded pool."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.loader import load_config
from dicom_node.jobs.celery_app import CPU_QUEUE, GPU_QUEUE, queue_for_tools, tool_queues
from dicom_node.jobs.celery_queue import CeleryExecutor
from dicom_node.jobs.embedded import EmbeddedExecutor
from dicom_node.jobs.queues import make_executor
from dicom_node.jobs.service import JobService
from dicom_node.jobs.shared import SharedJobState
from dicom_node.jobs.spec import JobRequest, SeriesRef
from dicom_node.jobs.store import JobStore
from dicom_node.jobs.worker_tasks import Heartbeat
from tests.celery_helpers import (
    RedisServer,
    celery_config,
    child_env,
    mmed_node,
    wait_until,
    write_yaml,
)
from tests.receive_helpers import PROJECT_ROOT, counting_runner, free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", free_port()).start()
    yield server
    server.stop()


def test_queue_follows_the_tools_a_route_may_call() -> None:
    queues = tool_queues()
    cpu_tools = sorted(n for n, q in queues.items() if q == CPU_QUEUE)
    gpu_tools = sorted(n for n, q in queues.items() if q == GPU_QUEUE)
    assert "ct lung segmentation" in cpu_tools and gpu_tools
    assert queue_for_tools(cpu_tools, queues) == CPU_QUEUE
    assert queue_for_tools([cpu_tools[0], gpu_tools[0]], queues) == GPU_QUEUE
    # No tools list: the planner may call any tool, including a model tool.
    assert queue_for_tools(None, queues) == GPU_QUEUE


def test_jobs_published_to_their_queue_with_shared_state(redis_server: RedisServer, tmp_path: Path) -> None:
    config = load_config(overrides=celery_config(tmp_path / "var", free_port(), free_port(),
                                                 redis_server.url))
    store = JobStore(tmp_path / "var" / "jobs")
    series = SeriesRef("1.2", "1.2.3", str(tmp_path), tuple(f"1.2.3.{i}" for i in range(7)), "f")
    requests = [JobRequest("cpu", "r", "x", "rules", ["ct lung segmentation"], []),
                JobRequest("gpu", "r", "x", "rules", None, [])]
    executor = make_executor(config)
    assert isinstance(executor, CeleryExecutor)
    service = JobService(config, store, executor, None, tmp_path / "var" / "results")
    client = redis_server.client()
    service.start()
    try:
        cpu_job, gpu_job = service.submit(series, requests)
        assert wait_until(lambda: client.llen(CPU_QUEUE) == 1 and client.llen(GPU_QUEUE) == 1, 15)
    finally:
        service.stop()
    bodies = {q: json.loads(client.lindex(q, 0)) for q in (CPU_QUEUE, GPU_QUEUE)}
    assert bodies[CPU_QUEUE]["headers"]["id"] == cpu_job.job_id
    assert bodies[GPU_QUEUE]["headers"]["id"] == gpu_job.job_id
    state = SharedJobState(client)
    shared = state.get(cpu_job.job_id)
    assert shared is not None and shared.state == "queued" and shared.published
    assert len(store.load(cpu_job.job_id).spec.instance_uids or []) == 7

    # Taken up again (a node restart): the published job is followed, not published twice.
    again = JobService(config, store, make_executor(config), None, tmp_path / "var" / "results")
    again.start()
    try:
        again.adopt(store.load(cpu_job.job_id))
        assert not again.wait_idle(timeout=2)  # followed, waiting for a worker
    finally:
        again.stop()
    assert client.llen(CPU_QUEUE) == 1


def test_without_broker_the_embedded_pool_runs(tmp_path: Path) -> None:
    config = load_config(overrides={"node": {"data_dir": str(tmp_path)}})
    assert isinstance(make_executor(config, counting_runner), EmbeddedExecutor)
    celery = load_config(overrides={"queue": {"broker_url": "redis://127.0.0.1:1/0"}})
    with pytest.raises(ValueError, match="custom job runner"):
        make_executor(celery, runner=counting_runner)


def test_worker_command_needs_a_broker(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"node": {"data_dir": str(tmp_path)}})
    result = subprocess.run([*mmed_node(), "worker", "--config", str(config)], check=False,
                            cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "queue.broker_url is not set" in result.stdout


def test_a_lease_outlives_a_long_run_and_lapses_once_after_its_worker(
    redis_server: RedisServer,
) -> None:
    """The claim and lease scripts against a real Redis: a run longer than its lease keeps it
    through the heartbeat; a duplicate delivery meanwhile does not run; once the heartbeat stops
    (the worker died) the lease lapses, the node takes the job back exactly once, the next run
    counts a new attempt, and the lost run's late report is refused."""
    state = SharedJobState(redis_server.client())
    job = "job-lease"
    claim = state.begin(job, "w1@test", 101, max_attempts=5, lease_seconds=1.0)
    assert claim.may_run and claim.attempt == 1
    with Heartbeat(state, job, claim.token, lease_seconds=1.0, renew_seconds=0.25):
        time.sleep(2.5)  # two and a half lease periods
        shared = state.get(job)
        assert shared is not None and shared.state == "running" and shared.leased
        assert state.begin(job, "w2@test", 102, 5, 1.0).verdict == "held"
    assert wait_until(lambda: (s := state.get(job)) is not None and s.lapsed, 5)
    assert state.take_lapsed(job, 1, "lost")
    assert not state.take_lapsed(job, 1, "lost")  # exactly once
    again = state.begin(job, "w2@test", 102, 5, 1.0)
    assert again.may_run and again.attempt == 2
    assert not state.report_done(job, claim.token)  # the lost run's outcome is not recorded
    assert state.report_done(job, again.token)
    assert state.begin(job, "w3@test", 103, 5, 1.0).verdict == "done"
    # A job that kept losing its workers: the start past the limit marks it failed.
    poison = "job-poison"
    for attempt in (1, 2):
        lost = state.begin(poison, "w1@test", 101, max_attempts=2, lease_seconds=0.2)
        assert lost.may_run and lost.attempt == attempt
        assert wait_until(lambda: (s := state.get(poison)) is not None and s.lapsed, 5)
        assert state.take_lapsed(poison, attempt, "lost")
    assert state.begin(poison, "w1@test", 101, 2, 0.2).verdict == "gave-up"
    failed = state.get(poison)
    assert failed is not None and failed.state == "failed" and "gave up after 2" in (failed.error or "")
