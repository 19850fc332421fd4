"""``mmed-node serve`` as a subprocess: kill -9 after acknowledged instances, restart, every
instance processed; SIGTERM shuts down cleanly; ``mmed-node status`` reads the result."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
import yaml

from tests.receive_helpers import (
    PROJECT_ROOT,
    free_port,
    make_ct_series,
    storescu,
    wait_for,
)


def mmed_node() -> list[str]:
    exe = shutil.which("mmed-node")
    return [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]


def write_config(path: Path, data_dir: Path, port: int, quiet: float) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "node": {
                    "port": port,
                    "data_dir": str(data_dir),
                    "series_quiet_seconds": quiet,
                },
                "routes": [
                    {
                        "name": "ct-count",
                        "match": {"Modality": "CT"},
                        "instruction": "Count.",
                        "send_to": [],
                    }
                ],
            }
        )
    )
    return path


class Serve:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    *mmed_node(),
                    "serve",
                    "--config",
                    str(config),
                    "--runner",
                    "tests.receive_helpers:counting_runner",
                ],
                cwd=PROJECT_ROOT,
                # The runner lives in tests/.
                env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(
            lambda: "serving AE" in log.read_text() or self.proc.poll() is not None
        )
        assert self.proc.poll() is None, log.read_text()


def serve_once(config: Path) -> subprocess.CompletedProcess[str]:
    """``mmed-node serve`` expected to refuse to start: it must exit on its own."""
    return subprocess.run(
        [*mmed_node(), "serve", "--config", str(config)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def servers() -> Iterator[list[Serve]]:
    started: list[Serve] = []
    yield started
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def job_records(data_dir: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted((data_dir / "jobs").glob("*.json"))
        if not p.name.startswith(".")
    ]


def test_kill_9_then_restart_processes_every_acknowledged_instance(
    servers: list[Serve], tmp_path: Path
) -> None:
    data_dir, port = tmp_path / "var", free_port()
    files = make_ct_series(tmp_path / "ct", 5)
    sent_uids = sorted(
        str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files
    )

    # Long quiet period: the node acknowledges every instance but has not processed the series yet.
    first = Serve(
        write_config(tmp_path / "slow.yaml", data_dir, port, quiet=120),
        tmp_path / "serve.log",
    )
    servers.append(first)
    result = storescu(port, files, options=["-v"])
    assert (
        result.returncode == 0 and result.stderr.count("Store Response (Success)") == 5
    )
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(10)
    assert job_records(data_dir) == []

    second = Serve(
        write_config(tmp_path / "fast.yaml", data_dir, port, quiet=0.3),
        tmp_path / "serve.log",
    )
    servers.append(second)
    (record,) = wait_for(
        lambda: [r for r in job_records(data_dir) if r["state"] == "done"], timeout=30
    )
    assert record["instance_count"] == 5
    manifest = json.loads(Path(record["manifest_path"]).read_text())
    assert manifest["sop_uids"] == sent_uids

    second.proc.send_signal(signal.SIGTERM)
    assert second.proc.wait(20) == 0, second.log.read_text()

    status = subprocess.run(
        [*mmed_node(), "status", "--json", "--config", str(tmp_path / "fast.yaml")],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    report = json.loads(status.stdout)
    (series,) = report["series"]
    assert (
        series["instances"] == 5
        and series["state"] == "done"
        and series["calling_ae"] == "STORESCU"
    )
    assert [j["job_id"] for j in report["jobs"]] == [record["job_id"]]


def test_serve_refuses_a_bad_config_naming_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("node: {port: 11112, series_quiet_secs: 5}\n")
    result = serve_once(bad)
    assert result.returncode == 2
    assert "node.series_quiet_secs" in result.stdout + result.stderr


def test_serve_refuses_invalid_tool_settings_naming_tool_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad-tools.yaml"
    bad.write_text(f"node: {{data_dir: {tmp_path / 'var'}, port: 11112}}\ntools:\n  MedSAM: {{model_pth: /models/x.pth}}\n")
    result = serve_once(bad)
    assert result.returncode == 2
    assert "tools.MedSAM" in result.stderr and "model_pth" in result.stderr


def test_second_serve_on_the_same_data_dir_is_refused(servers: list[Serve], tmp_path: Path) -> None:
    data_dir = tmp_path / "var"
    servers.append(Serve(write_config(tmp_path / "a.yaml", data_dir, free_port(), quiet=1), tmp_path / "a.log"))
    result = serve_once(write_config(tmp_path / "b.yaml", data_dir, free_port(), quiet=1))
    assert result.returncode == 2
    assert "another mmed-node serve already uses" in result.stderr
