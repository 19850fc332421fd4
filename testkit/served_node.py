"""``mmed-node serve`` of the working tree in a subprocess whose memory is watched, for the
hostile-input tests, the fuzzer and the benchmarks; raw connections that stall; stand-in job
runners (NOT the pipeline) a served node can be given.

The node's resident memory is read from ``/proc/<pid>/status``, summed over the node's process
and its children (its receiver processes, ``node.receivers``, where a peer's input lands first);
before each attack the peak (VmHWM) of each is reset through ``/proc/<pid>/clear_refs`` so the
peak after it is the attack's alone (the sum of the processes' peaks: at least their peak
together).
A watchdog kills a node whose memory runs away (an unprotected node would otherwise take the
machine with it) and the caller then fails with the figure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import yaml

from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.pipeline import _instance_files as instance_files
from dicom_node.jobs.spec import JobSpec
from testkit import procfs
from testkit.crafted import MB

PROJECT_ROOT = Path(__file__).resolve().parents[1]

#: The memory target of issue 11: no single input raises the node's RSS by more than this.
RSS_BUDGET_BYTES = 256 * MB
#: The watchdog kills a node whose RSS grows this much past its start (the attack clearly won).
WATCHDOG_BYTES = 1024 * MB


def mmed_node() -> list[str]:
    exe = shutil.which("mmed-node")
    return [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]


#: How often the list of the node's child processes is read again.
FAMILY_REFRESH_SECONDS = 0.5


class ServedNode:
    """``mmed-node serve`` in a subprocess with a config written from ``overrides``."""

    def __init__(self, tmp: Path, overrides: dict[str, Any] | None = None,
                 runner: str | None = "testkit.served_node:counting_runner",
                 data_dir_bytes: int | None = None) -> None:
        """``data_dir_bytes``: give the node a data_dir of that size (a tmpfs in its own mount
        namespace, so a full disk can be had without filling the machine's)."""
        self.tmp = tmp
        self.port = free_port()
        self.data_dir = tmp / "var"
        node = {"port": self.port, "data_dir": str(self.data_dir), "series_quiet_seconds": 0.3}
        config: dict[str, Any] = {
            "node": node,
            "routes": [{"name": "ct-count", "match": {"Modality": "CT"},
                        "instruction": "Count the slices.", "send_to": []}],
        }
        for key, value in (overrides or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config_path = tmp / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = tmp / "node.log"
        cmd = [*mmed_node(), "serve", "--config", str(self.config_path)]
        if runner:
            cmd += ["--runner", runner]
        if data_dir_bytes is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            mount = f'mount -t tmpfs -o size={data_dir_bytes} tmpfs "$0" && exec "$@"'
            cmd = ["unshare", "--mount", "sh", "-c", mount, str(self.data_dir), *cmd]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=tmp, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.killed_at_bytes: int | None = None
        self._family: tuple[float, list[int]] = (0.0, [])
        self._watch_stop = threading.Event()
        wait_for(lambda: "serving AE" in self.log_text() or self.proc.poll() is not None, timeout=120)
        assert self.proc.poll() is None, self.log_text()
        self.start_rss = self.rss()
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def family(self) -> list[int]:
        """The node's process and its children (re-read every :data:`FAMILY_REFRESH_SECONDS`)."""
        read_at, pids = self._family
        if time.monotonic() - read_at > FAMILY_REFRESH_SECONDS:
            pids = [self.proc.pid, *procfs.child_map().get(self.proc.pid, [])]
            self._family = (time.monotonic(), pids)
        return pids

    def _sum_kb(self, field: str) -> int:
        total = 0
        for pid in self.family():
            try:
                total += procfs.status_kb(pid, field)
            except (OSError, KeyError):  # a process that ended
                if pid == self.proc.pid:
                    raise
        return total

    def rss(self) -> int:
        return self._sum_kb("VmRSS") * 1024

    def peak(self) -> int:
        return self._sum_kb("VmHWM") * 1024

    def reset_peak(self) -> int:
        """Reset every process's peak RSS to its current RSS (Linux clear_refs 5); returns the
        current RSS."""
        for pid in self.family():
            try:
                procfs.reset_peak(pid)
            except OSError:
                if pid == self.proc.pid:
                    raise
        return self.rss()

    def _watchdog(self) -> None:
        while not self._watch_stop.wait(0.02):
            try:
                rss = self.rss()
            except (OSError, KeyError):
                return
            if rss - self.start_rss > WATCHDOG_BYTES:
                self.killed_at_bytes = rss
                self.proc.kill()
                return

    @contextmanager
    def memory(self) -> Iterator[dict[str, int]]:
        """Measure one attack: ``{"before", "peak", "growth"}`` in bytes, filled on exit."""
        figures: dict[str, int] = {}
        figures["before"] = self.reset_peak()
        try:
            yield figures
        finally:
            if self.killed_at_bytes is not None:
                figures["peak"] = self.killed_at_bytes
            elif self.proc.poll() is None:
                figures["peak"] = self.peak()
            else:
                figures["peak"] = -1
            figures["growth"] = figures["peak"] - figures["before"]

    def assert_alive(self) -> None:
        assert self.killed_at_bytes is None, (
            f"node killed by the watchdog at {self.killed_at_bytes / MB:.0f} MB RSS "
            f"(started at {self.start_rss / MB:.0f} MB)")
        assert self.proc.poll() is None, f"node exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}"

    def stop(self) -> None:
        self._watch_stop.set()
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[Any] | None, grace: float = 20.0, after_kill: float = 10.0) -> None:
    """SIGTERM a child that still runs; SIGKILL it if it has not exited after ``grace`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(after_kill)


def stalled_connections(port: int, count: int, payload: bytes = b"") -> list[socket.socket]:
    """``count`` TCP connections that send ``payload`` (maybe nothing) and then say nothing."""
    out = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            sock.sendall(payload)
        out.append(sock)
    return out


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)


def counting_runner(spec: JobSpec) -> dict[str, Any]:
    """A stand-in job runner (NOT the pipeline): decodes every spooled instance of the series and
    records the instance count, SOP UIDs and pixel sums in the manifest."""
    paths = sorted(Path(spec.series_dir).glob("*.dcm"))
    sops, sums = [], []
    for path in paths:
        ds = pydicom.dcmread(path)
        sops.append(str(ds.SOPInstanceUID))
        sums.append(int(np.asarray(ds.pixel_array, dtype=np.int64).sum()))
    manifest = {
        "job_id": spec.job_id,
        "instance_count": len(paths),
        "sop_uids": sorted(sops),
        "pixel_sums": sums,
        "files": [],
    }
    write_json_atomic(Path(spec.result_dir) / "manifest.json", manifest)
    return manifest


def loading_runner(spec: JobSpec) -> dict[str, Any]:
    """A stand-in job runner (NOT the pipeline) that loads the job's series through the real
    loader, as the pipeline does first, and records what it loaded."""
    from dicom_node.jobs.retry import JobFailed
    from image_model.loader import LoadError, load_series

    try:
        volume = load_series(instance_files(spec))
    except LoadError as exc:
        raise JobFailed(f"cannot load series: {exc}") from None
    manifest = {"job_id": spec.job_id, "instances": len(volume.datasets), "files": [],
                "skipped": len(volume.meta.get("skipped_files", []))}
    write_json_atomic(Path(spec.result_dir) / "manifest.json", manifest)
    return manifest
