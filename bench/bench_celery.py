"""Benchmark (not a test): jobs/minute through Celery + Redis with 1 and 2 ``mmed-node worker``
processes (solo pool) on the same input, in the same run, beside the same jobs run in-process
by ``run_job`` (no broker) as the reference.

Input: ``--series`` phantom CT series (testkit/phantoms.py), written once. Each run submits every
series as a job to a :class:`~dicom_node.jobs.service.JobService` with the Celery queue (the node's
own publisher and follower) and freshly started workers, and times from the first submit until
the last job is ``done`` in its record; worker start-up (model loading) is excluded.

    python -m bench.bench_celery                       # 8 series of 32 x 128 x 128, workers 1,2
    python -m bench.bench_celery --series 16 --workers 1,2,4 --slices 64 --size 192
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import redis
import yaml

from config.loader import load_config
from dicom_node.jobs.pipeline import WorkerContext, run_job
from dicom_node.jobs.queues import make_executor
from dicom_node.jobs.service import JobService
from dicom_node.jobs.spec import JobRequest, JobSpec, SeriesRef
from dicom_node.jobs.store import JobState, JobStore
from image_model.fingerprint import instance_set_fingerprint
from testkit.phantoms import write_ct_phantom

ROOT = Path(__file__).resolve().parents[1]
REDIS_SERVER = "/usr/bin/redis-server"
INSTRUCTION = "Segment the lungs and measure their volumes."


@dataclass
class Row:
    setup: str
    jobs: int
    seconds: float

    @property
    def per_minute(self) -> float:
        return self.jobs / self.seconds * 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(folder),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    return proc, f"redis://127.0.0.1:{port}/0"


def start_workers(
    count: int, config: Path, folder: Path, tag: str
) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    procs, logs = [], []
    for i in range(count):
        log = folder / f"{tag}-w{i}.log"
        logs.append(log)
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "dicom_node.app.cli",
                        "worker",
                        "--config",
                        str(config),
                        "--hostname",
                        f"{tag}-w{i}@bench",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + 300
    while not all(" ready." in log.read_text() for log in logs):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError(
                "workers did not start: "
                + "".join(log.read_text()[-2000:] for log in logs)
            )
        time.sleep(0.2)
    return procs


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def specs_for(series: list[Path], results: Path, tag: str) -> list[JobSpec]:
    return [
        JobSpec(
            job_id=f"{tag}-{i}",
            study_uid="bench",
            series_uid=f"bench-{i}",
            series_dir=str(s),
            result_dir=str(results / tag / str(i)),
            route="bench",
            instruction=INSTRUCTION,
            planner="rules",
        )
        for i, s in enumerate(series)
    ]


def series_ref(folder: Path) -> SeriesRef:
    sops = tuple(sorted(p.stem for p in folder.glob("*.dcm")))
    return SeriesRef("bench", f"bench-{folder.name}", str(folder), sops,
                     instance_set_fingerprint(sops))


def run_celery(count: int, series: list[Path], folder: Path, config_path: Path) -> Row:
    config = load_config(config_path)
    tag = f"celery{count}-{time.time_ns()}"
    store = JobStore(folder / tag / "jobs")
    request = JobRequest("bench", "bench", INSTRUCTION, "rules", None, [])
    workers = start_workers(count, config_path, folder, tag)
    service = JobService(config, store, make_executor(config), None, folder / "results" / tag)
    try:
        service.start()
        started = time.perf_counter()
        for s in series:
            service.submit(series_ref(s), [request])
        if not service.wait_idle(timeout=3600):
            raise RuntimeError("jobs did not finish")
        elapsed = time.perf_counter() - started
    finally:
        service.stop()
        stop(workers)
    failed = [r.job_id for r in store.all() if r.state is not JobState.DONE]
    if failed:
        raise RuntimeError(f"jobs not done: {failed}")
    return Row(f"celery, {count} worker(s)", len(series), elapsed)


def run_inline(series: list[Path], folder: Path, config_path: Path) -> Row:
    ctx = WorkerContext.build(load_config(config_path))
    specs = specs_for(series, folder / "results", "inline")
    run_job(specs[0], ctx)  # warm-up (first-call costs), not timed
    started = time.perf_counter()
    for spec in specs:
        run_job(spec, ctx)
    return Row(
        "in-process run_job (no broker)", len(specs), time.perf_counter() - started
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--size", type=int, default=128, help="rows = columns")
    parser.add_argument(
        "--workers", default="1,2", help="worker counts to run, e.g. 1,2,4"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.workers.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-celery-") as tmp:
        folder = Path(tmp)
        series = []
        for i in range(args.series):
            out = folder / "series" / str(i)
            write_ct_phantom(
                out, slices=args.slices, rows=args.size, cols=args.size, seed=i
            )
            series.append(out)
        redis_proc, url = start_redis(folder)
        try:
            config_path = folder / "config.yaml"
            config_path.write_text(
                yaml.safe_dump(
                    {
                        "node": {"data_dir": str(folder / "var")},
                        "queue": {"broker_url": url},
                    }
                )
            )
            rows = [run_inline(series, folder, config_path)]
            rows += [run_celery(count, series, folder, config_path) for count in counts]
        finally:
            redis_proc.terminate()
            redis_proc.wait(30)

    print(
        f"\n{args.series} series of {args.slices} x {args.size} x {args.size} (phantom CT), "
        f"{os.cpu_count()} CPU cores"
    )
    base = next((r for r in rows if r.setup.startswith("celery, 1 ")), rows[0])
    print(
        f"{'setup':<34} {'jobs':>5} {'seconds':>8} {'jobs/min':>9} {'vs 1 worker':>12}"
    )
    for row in rows:
        print(
            f"{row.setup:<34} {row.jobs:>5} {row.seconds:>8.1f} {row.per_minute:>9.1f} "
            f"{row.per_minute / base.per_minute:>11.2f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
