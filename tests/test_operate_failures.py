"""Operating a node when things go wrong: a peer dropped by a receive limit, counted by reason;
a running job seen as running (its worker's lease in
the metrics, its pending stages on the dashboard), a failed job in the metrics, the audit trail
(without its error text) and the dashboard, retried by an operator; a node without a token
lets a browser in on loopback names only. A stand-in job runner (not the pipeline) keeps it
cheap; the real pipeline is in test_operate_node.py."""

from __future__ import annotations

import json
import re
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.loader import load_config
from dicom_node.app.node import Node
from dicom_node.jobs.retry import JobFailed
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.store import JobState
from tests.dashboard_helpers import Browser, metrics, sample
from tests.receive_helpers import free_port, make_ct_series, storescu, wait_for

REASON = "the stand-in runner refuses this series"


class HeldRunner:
    """Runs until released, then fails every job it is given (a permanent failure)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.runs = 0

    def __call__(self, spec: JobSpec) -> dict[str, Any]:
        self.runs += 1
        assert self.release.wait(60), "never released"
        raise JobFailed(REASON)


@pytest.fixture
def held(tmp_path: Path) -> Iterator[tuple[Node, HeldRunner]]:
    config = load_config(overrides={
        "node": {"port": free_port(), "data_dir": str(tmp_path / "var"),
                 "series_quiet_seconds": 0.3},
        "destinations": {},
        "routes": [{"name": "ct-count", "match": {"Modality": "CT"},
                    "instruction": "Count the slices.", "send_to": []}],
        "api": {"enabled": True, "port": 0},  # no token: loopback only
    })
    runner = HeldRunner()
    node = Node(config, runner=runner)
    node.start()
    try:
        yield node, runner
    finally:
        runner.release.set()
        node.stop()


def test_running_then_failed_job_then_retried_by_an_operator(
        held: tuple[Node, HeldRunner], tmp_path: Path) -> None:
    node, runner = held
    browser = Browser(node.api_port)
    # No token configured: a browser gets a session on a loopback name, never on another name
    # (a page whose own name resolves to 127.0.0.1: DNS rebinding).
    assert browser.get("/ui/", Host="evil.example").status == 403
    assert browser.get("/ui/login").status == 303 and browser.session_cookie()
    assert browser.get("/ui/").status == 200

    # A connection whose first PDU is not an A-ASSOCIATE-RQ is dropped by the receive gate and
    # counted by reason.
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as peer:
        peer.sendall(struct.pack(">BBL", 0x07, 0, 4) + b"\0" * 4)  # an A-ABORT, out of turn
        try:
            closed = peer.recv(64) == b""
        except ConnectionResetError:
            closed = True
        assert closed, "the node answered a connection it should have dropped"
    wait_for(lambda: sample(metrics(browser.get("/metrics").text), "mmed_peers_dropped_total",
                            reason="not_associate_rq") == 1)

    assert storescu(node.port, make_ct_series(tmp_path / "ct", n=3)).returncode == 0
    (job,) = wait_for(lambda: [j for j in node.jobs.all() if j.state is JobState.RUNNING])
    scrape = metrics(browser.get("/metrics").text)
    assert sample(scrape, "mmed_jobs", state="running") == 1
    assert sample(scrape, "mmed_worker_leases", worker="embedded") == 1
    (row,) = re.findall(r'<tr data-state="running".*?</tr>', browser.get("/ui/fragment/jobs").text)
    assert row.count('class="stage pending"') == 3  # tools, encoded, sent not reached

    runner.release.set()
    wait_for(lambda: node.jobs.get(job.job_id).state is JobState.FAILED)  # type: ignore[union-attr]
    scrape = metrics(browser.get("/metrics").text)
    assert sample(scrape, "mmed_job_runs_total", outcome="failed") == 1
    assert sample(scrape, "mmed_jobs", state="failed") == 1
    assert sample(scrape, "mmed_worker_leases", worker="embedded") == 0
    page = browser.get(f"/ui/jobs/{job.job_id}").text
    assert REASON in page and ">Retry job</button>" in page

    assert browser.post(f"/ui/jobs/{job.job_id}/retry").status == 303
    wait_for(lambda: runner.runs == 2
             and node.jobs.get(job.job_id).state is JobState.FAILED)  # type: ignore[union-attr]
    wait_for(lambda: sample(metrics(browser.get("/metrics").text), "mmed_job_runs_total",
                            outcome="failed") == 2)
    trail = (Path(node.config.node.data_dir) / "audit" / "audit.jsonl").read_text()
    lines = [json.loads(text) for text in trail.splitlines()]
    assert [line["hop"] for line in lines] == [
        "received", "routed", "queued", "started", "failed", "queued", "started", "failed"]
    assert lines[5].get("operator") is True
    assert all(line["final"] is True and line["transient"] is False
               for line in lines if line["hop"] == "failed")
    assert REASON not in trail  # error texts may quote header values: never in the trail
