"""Operating a running node (issue 16): the dashboard, ``/metrics`` and the audit trail, after a
real C-STORE.

One node for the module, with the real pipeline: dcmtk storescu sends a CT phantom carrying
patient identifiers; the planner is the ``openai`` backend on a loopback stand-in configured as
remote (so its requests are de-identified and the audit trail must say so); the lung tool writes
a SEG and an SR; dcmtk storescp stands in for the PACS. The tests then read what an operator
reads: the dashboard's pages and previews (the preview's pixels against the SEG, read with
highdicom), the metrics through prometheus_client's own text parser, the study's trail through
``mmed-node audit`` run as a subprocess, and the actions a logged-in operator may take.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml
from PIL import Image
from scipy import ndimage

from config.loader import load_config
from dicom_node.app.commands.audit import run as audit_command
from dicom_node.app.commands.status import collect
from dicom_node.app.node import Node
from dicom_node.jobs.store import JobRecord, JobState
from testkit.phantoms import write_ct_phantom
from tests.agent_hf_helpers import ChatServer, reply
from tests.dashboard_helpers import Browser, metrics, sample
from tests.outbox_helpers import StoreSCP
from tests.receive_helpers import PROJECT_ROOT, echoscu, free_port, storescu, wait_for
from tests.viewers import installed

pytestmark = pytest.mark.slow

TOKEN_ENV = "MMED_TEST_DASHBOARD_TOKEN"
TOKEN = "operate-token-for-tests"
#: Identifiers written into every instance: none may reach the audit trail or the metrics.
PHI = {"PatientName": "DOE^JOHN^Q", "PatientID": "MRN77821", "PatientBirthDate": "19610203",
       "AccessionNumber": "ACC55120", "InstitutionName": "Hillside Clinic",
       "StudyDescription": "CT CHEST DOE"}
THOUGHTS = "Lung volumes are asked for: the lung segmentation tool measures them."
TOOL_TURN = json.dumps({
    "thoughts": THOUGHTS, "value": "Segmenting the lungs.",
    "actions": [{"API_name": "ct lung segmentation",
                 "API_params": {"image": "<imagepath>", "targets": ["lung"]}}]})
ANSWER = "Both lungs were segmented and measured."
FINAL_TURN = json.dumps({"thoughts": "The volumes are in.", "actions": [], "value": ANSWER})
STAGES = ("received", "complete", "queued", "started", "tools", "encoded", "sent")


@dataclass
class Run:
    node: Node
    pacs: StoreSCP
    chat: ChatServer
    files: list[Path]
    job: JobRecord
    config_file: Path
    #: ``/metrics`` scraped before the C-STORE.
    metrics_before: str

    @property
    def study_uid(self) -> str:
        return self.job.study_uid


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("operate")
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        os.environ.pop(var, None)
    truth = write_ct_phantom(tmp / "ct", slices=16, rows=64, cols=64, slice_spacing=8.0)
    for path in truth.files:
        ds = pydicom.dcmread(path)
        for keyword, value in PHI.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    chat = ChatServer([reply(TOOL_TURN), reply(FINAL_TURN)]).start()
    pacs_port = free_port()
    pacs = StoreSCP(tmp / "pacs", pacs_port, extra=["+uf"]).start()  # +uf: a resend adds files
    # The default CT route, sending to the PACS and to a destination that is down (nothing
    # listens on its port): its delivery fails after a short retry window.
    routes = [route.model_dump(mode="json") | {"send_to": ["pacs", "down"]}
              for route in load_config().routes]
    config = load_config(overrides={
        "node": {"port": free_port(), "data_dir": str(tmp / "var"), "series_quiet_seconds": 0.3,
                 "allowed_calling_aets": ["STORESCU"]},
        "destinations": {"pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": pacs_port},
                         "down": {"ae_title": "DOWN", "host": "127.0.0.1", "port": free_port()}},
        "routes": routes,
        "outbox": {"retry_initial_seconds": 0.5, "retry_window_seconds": 2.0},
        "planner": {"backend": "openai", "endpoint": chat.base_url, "model": "m",
                    "timeout_seconds": 30, "retries": 0, "treat_as_remote": True},
        "api": {"enabled": True, "port": 0, "token_env": TOKEN_ENV},
    })
    config_file = tmp / "node.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    os.environ[TOKEN_ENV] = TOKEN
    node = Node(config)
    node.start()
    try:
        before = Browser(node.api_port).get("/metrics", Authorization=f"Bearer {TOKEN}").text
        assert storescu(node.port, truth.files).returncode == 0
        wait_for(lambda: len(pacs.received()) >= 2, timeout=180)
        job = wait_for(lambda: [j for j in node.jobs.all() if "sent" in j.stages], timeout=30)[0]
        wait_for(lambda: {d["destination"]: d["state"] for d in collect(config)["deliveries"]}
                 == {"pacs": "done", "down": "failed"}, timeout=60)
        yield Run(node, pacs, chat, truth.files, job, config_file, before)
    finally:
        node.stop()
        pacs.stop()
        chat.stop()
        os.environ.pop(TOKEN_ENV, None)


# -- the job on the dashboard ------------------------------------------------------------------


def test_job_appears_with_its_stages_agent_turns_and_sr(run: Run) -> None:
    assert run.job.state is JobState.DONE and run.job.route == "ct-lungs"
    browser = Browser(run.node.api_port)
    assert browser.get("/ui/").status == 303  # no session: to the login page
    assert browser.login("wrong").status == 401
    assert browser.login(TOKEN).status == 303 and browser.session_cookie()
    overview = browser.get("/ui/")
    assert overview.status == 200 and run.job.job_id[:12] in overview.text
    assert overview.headers["Content-Security-Policy"].startswith("default-src 'none'")
    # Disk use: the spool holds the series (16 instances of ~9.5 KB, each file whole 4 KB blocks:
    # 192 KiB); deliveries counted per destination.
    assert re.search(r"spool 19\d KiB", overview.text), overview.text
    for name, counts in (("pacs", "0 0 1 0"), ("down", "0 0 0 1")):  # pending sending done failed
        cells = "".join(f"<td>{n}</td>" for n in counts.split())
        assert f"<tr><td>{name}</td>{cells}</tr>" in overview.text, name
    # The list's row: the job with a time in every stage cell, its delivery to the PACS.
    rows = browser.get("/ui/fragment/jobs").text
    (row,) = re.findall(r"<tr data-state=\"done\".*?</tr>", rows)
    cells = re.findall(r'<td class="stage( pending)?"[^>]*>([^<]*)</td>', row)
    assert len(cells) == len(STAGES) and not any(pending for pending, _ in cells)
    assert all(re.fullmatch(r"\d+ ms|\d+\.\d s|✓", text) for _, text in cells), cells
    assert "pacs:done" in row

    page = browser.get(f"/ui/jobs/{run.job.job_id}").text
    record = run.node.jobs.get(run.job.job_id)
    assert record is not None and set(record.stages) == set(STAGES)
    for stage in STAGES:  # each stage listed with when it was reached
        assert re.search(rf"<td>{stage}</td><td>\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d</td>", page), stage
    # The agent's turns as the stand-in planner gave them: thoughts, action, tool output, answer.
    assert THOUGHTS in page and "ct lung segmentation" in page and "left_lung_ml" in page
    assert f'<p class="answer">{ANSWER}</p>' in page
    # The SR as text: the lungs' groups with their volumes in readable units.
    manifest = json.loads((Path(record.result_dir or "") / "manifest.json").read_text())
    summary = next(t["summary"] for t in manifest["tools"] if t["api_name"] == "ct lung segmentation")
    for side in ("Left", "Right"):
        volume = summary[f"{side.lower()}_lung_ml"]
        assert re.search(rf'sr-name">Volume</span> <span class="sr-value">{volume:g} mL<', page)
        assert f'sr-value">{side} lung<' in page
    assert 'sr-value">Hounsfield unit' not in page and "Hounsfield unit<" in page
    assert "Imaging Measurement Report" in page and "[hnsf" not in page
    # Deliveries: done to the PACS (resend), failed to the destination that is down (retry too).
    deliveries = page[page.index("<h2>Deliveries</h2>"):]
    assert re.search(r"<td>pacs</td><td><span[^>]*>done</span></td><td>2/2</td>", deliveries)
    assert re.search(r"<td>down</td><td><span[^>]*>failed</span></td><td>0/2</td>", deliveries)
    assert deliveries.count(">Resend</button>") == 2 and deliveries.count(">Retry</button>") == 1
    assert "DOE^JOHN" not in page


def test_preview_shows_the_seg_masks_in_their_colours(run: Run) -> None:
    browser = Browser(run.node.api_port)
    browser.login(TOKEN)
    page = browser.get(f"/ui/jobs/{run.job.job_id}").text
    figures = re.findall(r'<figure data-sop-uid="([0-9.]+)" data-frame="(\d+)"><img src="([^"]+)"',
                         page)
    assert figures, "no previews on the job page"
    seg_path = Path(run.job.result_dir or "") / "seg.dcm"
    seg = hd.seg.segread(seg_path)
    colours = {int(item.SegmentNumber): tuple(
        hd.color.CIELabColor.from_dicom_value(list(item.RecommendedDisplayCIELabValue)).to_rgb())
        for item in seg.SegmentSequence}
    assert len(set(colours.values())) == len(colours) == 2  # right and left lung apart
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in run.files}
    covered = {number: 0 for number in colours}
    for sop_uid, frame, src in figures:
        answer = browser.get(src)
        assert answer.status == 200 and answer.headers["Content-Type"] == "image/png"
        rgb = np.asarray(Image.open(BytesIO(answer.body)).convert("RGB")).astype(int)
        assert sop_uid in sources and frame == "1"
        masks = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[sop_uid], segment_numbers=sorted(colours),
            combine_segments=False, skip_overlap_checks=True)[0] > 0
        assert rgb.shape[:2] == masks.shape[:2]
        anywhere = masks.any(axis=-1)
        grey = (rgb[..., 0] == rgb[..., 1]) & (rgb[..., 1] == rgb[..., 2])
        assert grey[~anywhere].all(), "colour outside every segment"
        assert not grey[anywhere].any(), "a segment's pixel left grey"
        for index, number in enumerate(sorted(colours)):
            mask = masks[..., index]
            covered[number] += int(mask.sum())
            edge = mask & ~ndimage.binary_erosion(mask, border_value=0)
            assert (rgb[edge] == colours[number]).all(), f"segment {number} outline colour"
    assert all(covered.values()), f"a segment on no preview: {covered}"
    # Key slices: the first preview is where segment 1 covers the most pixels.
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    per_source = {uid: int(seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid], segment_numbers=[1], skip_overlap_checks=True).sum())
        for uid in referenced}
    assert per_source[figures[0][0]] == max(per_source.values())


# -- /metrics ------------------------------------------------------------------------------------


def test_metrics_parse_and_move_with_the_instances(run: Run) -> None:
    before, browser = metrics(run.metrics_before), Browser(run.node.api_port)
    assert browser.get("/metrics").status == 401
    answer = browser.get("/metrics", Authorization=f"Bearer {TOKEN}")
    assert answer.status == 200 and answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    after = metrics(answer.text)
    received = "mmed_instances_received_total"
    assert sample(before, received, duplicate="false") == 0
    assert sample(after, received, duplicate="false") == len(run.files)
    sizes = sum(p.stat().st_size for p in run.files)  # the node's stored files: within 10 %
    assert abs(sample(after, "mmed_received_bytes_total") - sizes) < 0.1 * sizes
    assert sample(after, "mmed_associations_total", outcome="accepted") == 1
    assert sample(after, "mmed_series_completed_total") == 1
    assert sample(after, "mmed_series_routed_total", outcome="routed") == 1
    assert sample(after, "mmed_jobs", state="done") == 1 and sample(after, "mmed_jobs", state="failed") == 0
    for stage in STAGES[1:]:
        assert sample(after, "mmed_job_stage_seconds_count", stage=stage) == 1, stage
    assert sample(after, "mmed_job_stage_seconds_bucket", stage="tools", le="+Inf") == 1
    assert sample(after, "mmed_tool_seconds_count", tool="ct lung segmentation") == 1
    assert sample(after, "mmed_remote_disclosures_total", purpose="planner") == 2
    assert sample(after, "mmed_deliveries_total", destination="pacs", outcome="sent") == 1
    assert sample(after, "mmed_deliveries_total", destination="down", outcome="failed") == 1
    assert sample(after, "mmed_delivery_attempt_failures_total", destination="down") >= 2
    assert sample(after, "mmed_delivery_attempt_failures_total", destination="pacs") == 0
    for name in ("pacs", "down"):
        assert ("mmed_outbox_depth", (("destination", name),)) in after
        assert sample(after, "mmed_outbox_depth", destination=name) == 0
    assert any(name == "mmed_model_load_seconds_count" and value >= 1
               for (name, _), value in after.items())
    assert sample(after, "mmed_disk_free_bytes") > 0
    assert not any(value in answer.text for value in PHI.values())
    # A caller the node does not allow: refused, and counted.
    assert echoscu(run.node.port, calling_ae="INTRUDER").returncode != 0
    later = metrics(browser.get("/metrics", Authorization=f"Bearer {TOKEN}").text)
    assert sample(later, "mmed_associations_total", outcome="refused") == 1


# -- the audit trail -----------------------------------------------------------------------------


def test_audit_trail_of_the_study_says_what_left_de_identified(
        run: Run, capsys: pytest.CaptureFixture[str]) -> None:
    cli = subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "audit", "--config", str(run.config_file),
         "--study", run.study_uid, "--json"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=True)
    lines = [json.loads(text) for text in cli.stdout.splitlines()]
    hops = [line["hop"] for line in lines]
    assert [h for h in hops if h not in ("disclosed", "failed")] == [
        "received", "routed", "queued", "started", "tool", "encoded", "sent"]
    assert hops.count("disclosed") == 2
    failed = [line for line in lines if line["hop"] == "failed"]
    assert len(failed) >= 2 and {line["destination"] for line in failed} == {"down"}
    assert [line["final"] for line in failed] == [False] * (len(failed) - 1) + [True]
    assert all(line["study_uid"] == run.study_uid for line in lines)
    job_lines = [line for line in lines if line["hop"] not in ("received", "routed")]
    assert {line["job_id"] for line in job_lines} == {run.job.job_id}
    disclosed = [line for line in lines if line["hop"] == "disclosed"]
    for line in disclosed:
        assert line["deidentified"] is True and line["purpose"] == "planner"
        assert line["profile"].startswith("PS3.15") and line["endpoint"].startswith("127.0.0.1:")
        assert line["removed"]["header_values"] >= 0 and line["messages"] >= 1
    (tool,) = [line for line in lines if line["hop"] == "tool"]
    assert tool["tool"] == "ct lung segmentation" and tool["seconds"] > 0 and not tool["refused"]
    (sent,) = [line for line in lines if line["hop"] == "sent"]
    assert sent["destination"] == "pacs" and sent["files"] == 2
    # The job's lines in the order its hops happened (``at`` is rounded to ms); the deliveries'
    # (two sender threads) after its encoding.
    own = [line for line in lines if line["hop"] not in ("sent", "failed")]
    assert all(a["at"] <= b["at"] + 0.002 for a, b in itertools.pairwise(own)), hops
    assert min(line["at"] for line in [sent, *failed]) >= own[-1]["at"] - 0.002
    # No patient data anywhere in the trail, and the human-readable form prints one line a hop.
    trail = (Path(run.node.config.node.data_dir) / "audit" / "audit.jsonl").read_text()
    assert not [value for value in PHI.values() if value.lower() in trail.lower()]
    # The same trail for a person, one line a hop (the command in process: one subprocess above
    # is enough, and the CLI's entry point would set up this process's logging).
    def audit(study: str) -> int:
        return audit_command(argparse.Namespace(config=str(run.config_file), study=study, json=False))

    assert audit(run.study_uid) == 0
    text = capsys.readouterr().out.splitlines()
    assert len(text) == len(lines) and "disclosed" in text[hops.index("disclosed")]
    assert audit("1.2.3.4") == 1 and "no audit lines" in capsys.readouterr().out


# -- in a browser --------------------------------------------------------------------------------


def test_dashboard_in_headless_chromium(run: Run, tmp_path: Path) -> None:
    """Debian chromium (the viewers' install and launcher, tests/viewers/): log in, filter the
    list, see it refresh, open the job with its previews; the screenshots are kept."""
    installed.require(installed.NODE_MODULES / "puppeteer-core", installed.CHROMIUM)
    out = Path(os.environ.get("MMED_DASHBOARD_ARTIFACTS") or PROJECT_ROOT / "test-artifacts" / "operate")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    request = {"base": f"http://127.0.0.1:{run.node.api_port}", "token": TOKEN,
               "jobId": run.job.job_id, "outDir": out, "profileDir": tmp_path / "profile",
               "chromium": installed.CHROMIUM}
    seen = installed.run_node("dashboard_check.mjs", request, out)
    print(f"\ndashboard screenshots: {out}; overview loaded in {seen.get('overviewSeconds')} s, "
          f"job page in {seen.get('jobSeconds')} s")
    assert seen["errors"] == [] and seen["console"] == [], seen
    assert seen["overviewUrl"].endswith("/ui/")
    assert seen["rows"] == seen["rowsDone"] == seen["rowsCleared"] == seen["rowsAfterRefresh"] == 1
    assert seen["rowsNonsense"] == 0 and seen["refreshed"].startswith("updated")
    assert seen["previews"] and all(p["complete"] and (p["width"], p["height"]) == (64, 64)
                                    for p in seen["previews"])
    swatches = {s["background"] for s in seen["swatches"]}
    assert swatches == {f"rgb({s['rgb'].replace(',', ', ')})" for s in seen["swatches"]}
    assert len(swatches) == 2  # left and right lung in their own colours
    assert {"Stages", "Previews", "Answer", "Agent turns", "Structured report", "Deliveries"} <= set(
        seen["headings"])
    for shot in ("overview.png", "job.png"):
        with Image.open(out / shot) as image:
            assert image.width == 1280 and image.height >= 800


# -- actions -------------------------------------------------------------------------------------


def test_resend_needs_a_session_and_its_csrf_token_then_reaches_the_pacs(run: Run) -> None:
    by_destination = {d["destination"]: d for d in collect(run.node.config)["deliveries"]}
    action = f"/ui/deliveries/{by_destination['pacs']['delivery_id']}/resend"
    stranger = Browser(run.node.api_port)
    assert stranger.post(action, csrf="forged").status == 403  # no session
    operator = Browser(run.node.api_port)
    operator.login(TOKEN)
    assert operator.post(action, csrf="forged").status == 403
    assert operator.request("POST", action, {"csrf": operator.csrf or ""},
                            {"Origin": "http://evil.example"}).status == 403
    assert len(list(run.pacs.out_dir.iterdir())) == 2
    answer = operator.post(action)
    assert answer.status == 303 and answer.headers["Location"] == f"/ui/jobs/{run.job.job_id}"
    wait_for(lambda: len([p for p in run.pacs.out_dir.iterdir() if p.is_file()]) >= 4, timeout=60)
    # The session reads the metrics too; the delivery counts once its record says done.
    wait_for(lambda: sample(metrics(operator.get("/metrics").text), "mmed_deliveries_total",
                            destination="pacs", outcome="sent") == 2, timeout=30)
    # The job's ``sent`` stage stays the first delivery's: timed once, not moved by the resend.
    scrape = metrics(operator.get("/metrics").text)
    assert sample(scrape, "mmed_job_stage_seconds_count", stage="sent") == 1
    assert run.node.jobs.get(run.job.job_id).stages == run.job.stages  # type: ignore[union-attr]
    # Retry is for a failed delivery: the one to the destination that is down goes again.
    done, failed = by_destination["pacs"]["delivery_id"], by_destination["down"]["delivery_id"]
    assert operator.post(f"/ui/deliveries/{done}/retry").status == 409
    assert operator.post(f"/ui/deliveries/{failed}/retry").status == 303
    again = lambda: {d["delivery_id"]: d for d in collect(run.node.config)["deliveries"]}[failed]
    wait_for(lambda: again()["attempts"] > by_destination["down"]["attempts"], timeout=30)
    # Only a failed job may be retried.
    assert operator.post(f"/ui/jobs/{run.job.job_id}/retry").status == 409
    # Both operator's actions are in the study's trail.
    trail = (Path(run.node.config.node.data_dir) / "audit" / "audit.jsonl").read_text()
    actions = [(line["delivery_id"], line["resend"]) for line in map(json.loads, trail.splitlines())
               if line["hop"] == "queued" and line.get("operator")]
    assert actions == [(by_destination["pacs"]["delivery_id"], True), (failed, False)]
    assert all(line["study_uid"] == run.study_uid for line in map(json.loads, trail.splitlines()))
