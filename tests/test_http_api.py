"""The node's HTTP API (dicom_node/app/http_api.py), over real sockets.

1. Without a PACS: bearer token enforced, /health, /status equal to ``mmed-node status --json``
   (the CLI run as a subprocess), /jobs/<id> of a series the node received, 400 for bad
   questions, and a node that refuses to start when the token variable is unset.
2. With a real Orthanc holding a phantom study: POST /questions by accession number; the node
   pulls the study with C-GET, runs the question job through the real pipeline and sends the
   answer SR to Orthanc, read back over Orthanc's REST API.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

from config.loader import load_config
from config.schema import AppConfig, DestinationConfig
from dicom_node.app.http_api import ApiSetupError
from dicom_node.app.node import Node
from dicom_node.jobs.store import JobState
from tests.orthanc_helpers import ORTHANC_AET, Orthanc, start_orthanc
from tests.outbox_helpers import StoreSCP
from tests.qr_helpers import pipeline_runner, write_study
from tests.receive_helpers import (
    PROJECT_ROOT,
    counting_runner,
    free_port,
    make_ct_series,
    storescu,
    wait_for,
)

TOKEN_ENV = "MMED_TEST_API_TOKEN"
TOKEN = "s3cret-token-for-tests"


def api_config(tmp: Path, pacs_port: int, **api: Any) -> AppConfig:
    return load_config(overrides={
        "node": {"port": free_port(), "data_dir": str(tmp / "var"), "series_quiet_seconds": 0.3},
        "destinations": {"pacs": {"ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": pacs_port}},
        "routes": [{"name": "ct-count", "match": {"Modality": "CT"},
                    "instruction": "Count the slices.", "send_to": []}],
        "api": {"enabled": True, "port": 0, **api},
    })


def call(port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN,
         raw: bytes | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    """One HTTP request; (status, JSON body, headers), error statuses included."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as rsp:
            return rsp.status, json.loads(rsp.read()), dict(rsp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), dict(exc.headers)


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Node]:
    """A node with the API on a free port, a token, and a PACS that is not there."""
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    with Node(api_config(tmp_path, free_port(), token_env=TOKEN_ENV), runner=counting_runner) as n:
        yield n


def test_token_health_status_and_jobs(node: Node, tmp_path: Path) -> None:
    port = node.api_port
    for token in (None, "wrong", TOKEN + "x"):
        status, body, headers = call(port, "GET", "/health", token=token)
        assert status == 401 and "token" in body["error"]
        assert headers["WWW-Authenticate"] == "Bearer"
    assert call(port, "POST", "/questions", {"from": "pacs"}, token=None)[0] == 401
    assert call(port, "GET", "/health")[:2] == (200, {"status": "ok", "ae_title": "MMEDNODE"})

    files = make_ct_series(tmp_path / "ct", n=3)
    assert storescu(node.port, files).returncode == 0
    (job,) = wait_for(lambda: [j for j in node.jobs.all() if j.state.finished], timeout=30)
    status, record, _ = call(port, "GET", f"/jobs/{job.job_id}")
    assert status == 200 and record["state"] == "done" and record["instance_count"] == 3
    assert record["series_uid"] == str(pydicom.dcmread(files[0]).SeriesInstanceUID)
    assert call(port, "GET", "/jobs/" + "0" * 24)[0] == 404
    assert call(port, "GET", "/jobs/..%2Fconfig")[0] == 400
    assert call(port, "GET", "/jobs/ABCDEF")[0] == 400
    assert call(port, "GET", "/nothing")[0] == 404

    status, document, _ = call(port, "GET", "/status")
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(node.config.model_dump(mode="json", by_alias=True)))
    cli = subprocess.run([sys.executable, "-m", "dicom_node.app.cli", "status", "--config", str(config_file),
                          "--json"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60,
                         check=True)
    listed = json.loads(cli.stdout)
    # Free space moves between the two readings; the rest is the same document.
    assert document["disk"].keys() == listed["disk"].keys() and "free_bytes" in listed["disk"]
    document.pop("disk"), listed.pop("disk")
    assert status == 200 and document == listed
    assert [j["job_id"] for j in document["jobs"]] == [job.job_id]


@pytest.mark.parametrize("body, expected", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    ({"from": "pacs", "accession": "A1"}, "question"),
    ({"from": "pacs", "question": "How large is the liver?"}, "study_uid, accession or patient_id"),
    ({"from": "elsewhere", "accession": "A1", "question": "q?"}, "unknown PACS 'elsewhere'"),
    ({"from": "pacs", "accession": "A1", "question": "q?", "send_to": ["nowhere"]}, "nowhere"),
    ({"from": "pacs", "accession": "A*", "question": "q?"}, "several studies"),
    ({"from": "pacs", "study_uid": "1.2.abc", "question": "q?"}, "not a DICOM UID"),
    ({"from": "pacs", "accession": "A1", "question": "q?", "method": "post"}, "method"),
    ({"from": "pacs", "accession": "A1", "question": "q?", "colour": "red"}, "colour"),
    ({"from": "pacs", "accession": "A1", "question": "   "}, "blank"),
])
def test_bad_questions_are_refused(node: Node, body: Any, expected: str) -> None:
    raw = body if isinstance(body, bytes) else None
    status, answer, _ = call(node.api_port, "POST", "/questions", None if raw else body, raw=raw)
    assert status == 400 and expected in answer["error"], answer
    assert not list((Path(node.config.node.data_dir) / "questions").glob("*.json"))


def test_node_refuses_to_start_without_its_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = api_config(tmp_path, free_port(), token_env=TOKEN_ENV)
    node = Node(config, runner=counting_runner)
    with pytest.raises(ApiSetupError, match=TOKEN_ENV):
        node.start()
    # Stopped cleanly: the DICOM port is free again.
    with Node(config.model_copy(update={"api": config.api.model_copy(update={"enabled": False})}),
              runner=counting_runner) as again:
        assert again.port == config.node.port


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    server = start_orthanc(tmp_path / "orthanc", free_port(), auto_route=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_question_by_accession_answered_into_orthanc(
    tmp_path: Path, orthanc: Orthanc, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    caplog.set_level(logging.DEBUG, logger="dicom_node")
    truth = write_study(tmp_path / "ct", accession="ACC-API-7", patient_id="API-1")
    study_id = orthanc.upload(truth.files)[0]["ParentStudy"]
    config = api_config(tmp_path, orthanc.dicom_port, token_env=TOKEN_ENV)
    question = "How large is the left lung?"
    # Questions are the node's jobs: they run the node's runner (here the real pipeline).
    with Node(config, runner=pipeline_runner(config)) as node:
        port = node.api_port
        status, answer, headers = call(port, "POST", "/questions", {
            "from": "pacs", "accession": "ACC-API-7", "question": question, "wait": 240})
        assert status == 200 and answer["state"] == "done", answer
        assert headers["Location"] == f"/questions/{answer['request_id']}"
        assert answer["study_uids"] == [truth.study_uid]
        assert answer["pulled"] == {truth.series_uid: len(truth.files)}
        (job,) = answer["jobs"]
        status, record, _ = call(port, "GET", f"/jobs/{job['job_id']}")
        assert status == 200 and record["state"] == JobState.DONE.value
        assert record["spec"]["instruction"] == question and record["destinations"] == ["pacs"]

        # The answer SR (and the SEG) went back into the study on Orthanc.
        series = {s["MainDicomTags"]["Modality"]: s for s in orthanc.get(f"/studies/{study_id}/series")}
        assert set(series) == {"CT", "SEG", "SR"}
        sr = pydicom.dcmread(BytesIO(orthanc.get(f"/instances/{series['SR']['Instances'][0]}/file")))
        assert sr.StudyInstanceUID == truth.study_uid
        assert question in [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
        assert call(port, "GET", "/status")[1]["deliveries"][0]["state"] == "done"

        # Without "wait": 202 at once, then the request record says where it is. The same
        # question on the same instances is not run again.
        status, accepted, _ = call(port, "POST", "/questions", {
            "from": "pacs", "accession": "ACC-API-7", "question": question})
        assert status == 202 and accepted["state"] == "accepted" and accepted["jobs"] == []
        done = wait_for(lambda: (r := call(port, "GET", accepted["status_url"])[1])["state"]
                        in ("done", "failed") and r, timeout=60)
        assert done["state"] == "done" and [j["job_id"] for j in done["jobs"]] == [job["job_id"]]

        # A study the PACS does not hold: the request fails and says why.
        status, missing, _ = call(port, "POST", "/questions", {
            "from": "pacs", "accession": "ACC-NOT-THERE", "question": question, "wait": 60})
        assert status == 200 and missing["state"] == "failed"
        assert missing["errors"] == ["no matching series on the PACS"]
        assert call(port, "GET", "/questions/" + "f" * 32)[0] == 404
    # The node logged the requests by id and study UID, never the accession, patient or question.
    assert answer["request_id"] in caplog.text and truth.study_uid in caplog.text
    for phi in ("ACC-API-7", "API-1", question):
        assert phi not in caplog.text


@pytest.mark.slow
def test_question_results_go_out_through_the_node_outbox(
    tmp_path: Path, orthanc: Orthanc, caplog: pytest.LogCaptureFixture
) -> None:
    """A question is one of the node's jobs: its answer is delivered by the node's own outbox
    thread for the destination (no second outbox in the question's thread, nothing waiting for
    a restart), and the viewer receives the SEG and SR once."""
    caplog.set_level(logging.INFO, logger="dicom_node.deliver.outbox")
    truth = write_study(tmp_path / "ct", accession="ACC-API-OUTBOX")
    orthanc.upload(truth.files)
    viewer = StoreSCP(tmp_path / "viewer", free_port(), ae_title="VIEWER").start()
    try:
        base = api_config(tmp_path, orthanc.dicom_port)
        config = base.model_copy(update={"destinations": {
            **base.destinations,
            "viewer": DestinationConfig(ae_title="VIEWER", host="127.0.0.1", port=viewer.port),
        }})
        with Node(config, runner=pipeline_runner(config)) as node:
            status, answer, _ = call(node.api_port, "POST", "/questions", {
                "from": "pacs", "accession": "ACC-API-OUTBOX", "send_to": ["viewer"],
                "question": "How large is the right lung?", "wait": 240}, token=None)
            assert status == 200 and answer["state"] == "done", answer
            (job,) = answer["jobs"]
            delivered = [r for r in caplog.records
                         if "delivered" in r.getMessage() and job["job_id"] in r.getMessage()]
            assert delivered, caplog.text[-2000:]
            assert {r.threadName for r in delivered} == {"outbox-viewer"}
            got = wait_for(lambda: len(viewer.received()) >= 2 and viewer.received(), timeout=30)
            modalities = sorted(str(pydicom.dcmread(p, stop_before_pixels=True).Modality)
                                for p in got.values())
            assert modalities == ["SEG", "SR"]
    finally:
        viewer.stop()
