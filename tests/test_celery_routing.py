"""Celery queue choice and publishing, against a real redis-server (no workers): jobs land on
the ``gpu`` or ``cpu`` list by the tools their route may call; the node records them in the
shared job hash; without a broker URL the node keeps its embedded pool."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.loader import load_config
from dicom_node.jobs.celery_app import CPU_QUEUE, GPU_QUEUE, queue_for_tools, tool_queues
from dicom_node.jobs.celery_queue import CeleryQueue
from dicom_node.jobs.embedded import EmbeddedQueue
from dicom_node.jobs.pipeline import JobSpec
from dicom_node.jobs.queues import make_queue
from dicom_node.jobs.shared import SharedJobState
from dicom_node.jobs.store import JobRecord, JobState, JobStore
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


def _spec(tmp_path: Path, job_id: str, tools: list[str] | None) -> JobSpec:
    return JobSpec(job_id=job_id, study_uid="1.2", series_uid="1.2.3", series_dir=str(tmp_path),
                   result_dir=str(tmp_path / "r" / job_id), route="r", instruction="x",
                   planner="rules", tools=tools)


def test_jobs_published_to_their_queue_with_shared_state(redis_server: RedisServer, tmp_path: Path) -> None:
    config = load_config(overrides=celery_config(tmp_path / "var", free_port(), free_port(),
                                                 redis_server.url))
    store = JobStore(tmp_path / "var" / "jobs")
    specs = [_spec(tmp_path, "job-cpu", ["ct lung segmentation"]), _spec(tmp_path, "job-gpu", None)]
    for spec in specs:
        store.save(JobRecord(job_id=spec.job_id, study_uid=spec.study_uid, series_uid=spec.series_uid,
                             state=JobState.QUEUED, route="r", fingerprint="f", instance_count=7,
                             spec=spec.to_dict()))
    queue = make_queue(config, store, None)
    assert isinstance(queue, CeleryQueue)
    client = redis_server.client()
    queue.start()
    try:
        for spec in specs:
            queue.submit(spec)
        assert wait_until(lambda: client.llen(CPU_QUEUE) == 1 and client.llen(GPU_QUEUE) == 1, 15)
    finally:
        queue.stop()
    bodies = {q: json.loads(client.lindex(q, 0)) for q in (CPU_QUEUE, GPU_QUEUE)}
    assert bodies[CPU_QUEUE]["headers"]["id"] == "job-cpu"
    assert bodies[GPU_QUEUE]["headers"]["id"] == "job-gpu"
    state = SharedJobState(client)
    shared = state.get("job-cpu")
    assert shared is not None and shared.state is JobState.QUEUED and shared.published
    assert shared.instance_count == 7

    # Submitting again (a node restart) follows the published job instead of publishing twice.
    again = CeleryQueue(config, store)
    again.start()
    try:
        again.submit(specs[0])
        assert wait_until(lambda: "job-cpu" in again._tracked, 10)
    finally:
        again.stop()
    assert client.llen(CPU_QUEUE) == 1


def test_without_broker_the_embedded_pool_runs(tmp_path: Path) -> None:
    config = load_config(overrides={"node": {"data_dir": str(tmp_path)}})
    store = JobStore(tmp_path / "jobs")
    assert isinstance(make_queue(config, store, None), EmbeddedQueue)
    celery = load_config(overrides={"queue": {"broker_url": "redis://127.0.0.1:1/0"}})
    with pytest.raises(ValueError, match="custom job runner"):
        make_queue(celery, store, None, runner=counting_runner)


def test_worker_command_needs_a_broker(tmp_path: Path) -> None:
    config = write_yaml(tmp_path / "c.yaml", {"node": {"data_dir": str(tmp_path)}})
    result = subprocess.run([*mmed_node(), "worker", "--config", str(config)], check=False,
                            cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "queue.broker_url is not set" in result.stdout
