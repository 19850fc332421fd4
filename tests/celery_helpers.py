"""Real peers for the Celery tests: a loopback ``redis-server`` with AOF persistence, ``mmed-node
worker`` subprocesses, and the config both the node and the workers read. Stopped by PID."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis
import yaml

from testkit.served_node import stop_process
from tests.receive_helpers import PROJECT_ROOT, wait_for

#: Debian's redis-server by absolute path (never a shim on PATH).
REDIS_SERVER = Path("/usr/bin/redis-server")
#: Celery prints this line when the worker consumes.
WORKER_READY = " ready."


def mmed_node() -> list[str]:
    exe = shutil.which("mmed-node")
    return [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]


def child_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(PROJECT_ROOT),
        "TCP_NODELAY": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        # One BLAS thread per worker: two workers share two cores.
        "OMP_NUM_THREADS": "1",
    }


class RedisServer:
    """redis-server on 127.0.0.1:``port`` with its AOF in ``folder``: a restart keeps the data."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        cmd = [
            str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "yes", "--appendfsync", "always",
            "--dir", str(self.folder), "--daemonize", "no",
        ]
        with (self.folder / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        try:
            wait_for(lambda: self._ping(client), timeout=15)
        finally:
            client.close()
        return self

    @staticmethod
    def _ping(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis flushes its AOF and exits
            self.proc.wait(15)
        self.proc = None


class Worker:
    """``mmed-node worker`` as a subprocess, named ``name`` in job state."""

    def __init__(self, config: Path, name: str, log: Path, queues: str = "gpu,cpu") -> None:
        self.config, self.name, self.log, self.queues = config, name, log, queues
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@test"

    def start(self) -> Worker:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*mmed_node(), "worker", "--config", str(self.config), "--queues", self.queues,
                 "--hostname", self.hostname],
                cwd=PROJECT_ROOT, env=child_env(), stdout=out, stderr=subprocess.STDOUT,
            )
        return self

    def wait_ready(self, timeout: float = 90) -> None:
        wait_for(lambda: WORKER_READY in self.log.read_text() or self.proc_ended(), timeout=timeout)
        assert not self.proc_ended(), self.log.read_text()[-3000:]

    def proc_ended(self) -> bool:
        return self.proc is None or self.proc.poll() is not None

    def kill9(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def pause(self) -> None:
        """Stop the worker process where it is (SIGSTOP): it takes no job until :meth:`resume`."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        stop_process(self.proc)


def celery_config(
    data_dir: Path, node_port: int, pacs_port: int, broker_url: str, **queue: Any
) -> dict[str, Any]:
    """Node and worker config: CT route to a storescp 'pacs', short timers for tests."""
    return {
        "node": {"port": node_port, "data_dir": str(data_dir), "series_quiet_seconds": 0.5},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port}},
        "outbox": {"retry_initial_seconds": 0.5, "retry_max_seconds": 2},
        "routes": [
            {
                "name": "ct-lungs",
                "match": {"Modality": "CT"},
                "instruction": "Segment the lungs and measure their volumes.",
                "send_to": ["pacs"],
            }
        ],
        # Recovery settings (leases, visibility timeout) stay at their defaults: a worker lost
        # mid-job is recovered through its lease, as in a deployment.
        "queue": {
            "broker_url": broker_url,
            "max_retries": 2,
            "retry_backoff_seconds": 0.3,
            "retry_backoff_max_seconds": 1,
            "poll_seconds": 0.2,
            **queue,
        },
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def wait_until(predicate: Any, timeout: float, interval: float = 0.1) -> Any:
    """Like wait_for, with a readable failure naming what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
