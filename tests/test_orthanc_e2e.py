"""A real Orthanc as the hospital PACS, end to end.

1. Auto-routing: a CT series is uploaded into Orthanc over REST; Orthanc's Lua script sends the
   stable series to the node; the node sends SEG + SR back; read back over Orthanc's REST API,
   they sit in the same study and reference the source series.
2. Retrieval by accession number: with C-GET (no running node, a question asked) through the
   Python API, and with C-MOVE to a running node through ``mmed-node retrieve`` as a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset

from dicom_node.app.node import Node
from dicom_node.jobs.store import JobState
from dicom_node.qr.retrieve import RetrieveQuery, retrieve_and_process
from tests.orthanc_helpers import ORTHANC_AET, Orthanc, start_orthanc
from tests.qr_helpers import node_config, pipeline_runner, write_study
from tests.receive_helpers import PROJECT_ROOT, free_port, storescu, wait_for

ROUTE = {"name": "ct-lungs", "match": {"Modality": "CT"},
         "instruction": "Segment the lungs and measure their volumes.", "send_to": ["pacs"]}


def _pacs(orthanc: Orthanc) -> dict[str, Any]:
    return {"pacs": {"ae_title": ORTHANC_AET, "host": "127.0.0.1", "port": orthanc.dicom_port}}


@pytest.fixture
def orthanc_and_port(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Orthanc, int]]:
    node_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", node_port, auto_route=getattr(request, "param", True))
    try:
        yield orthanc, node_port
    finally:
        orthanc.stop()


def _series_by_modality(orthanc: Orthanc, study_id: str) -> dict[str, dict[str, Any]]:
    return {s["MainDicomTags"].get("Modality", ""): s for s in orthanc.get(f"/studies/{study_id}/series")}


def _first_instance(orthanc: Orthanc, series: dict[str, Any]) -> Dataset:
    instance_id = series["Instances"][0]
    return pydicom.dcmread(BytesIO(orthanc.get(f"/instances/{instance_id}/file")))


def _wait_results(orthanc: Orthanc, study_id: str, timeout: float = 60) -> dict[str, dict[str, Any]]:
    return wait_for(lambda: (s := _series_by_modality(orthanc, study_id)).keys() >= {"CT", "SEG", "SR"} and s,
                    timeout=timeout, interval=0.5)


def _check_results(orthanc: Orthanc, study_id: str, truth: Any) -> Dataset:
    series = _wait_results(orthanc, study_id)
    assert set(series) == {"CT", "SEG", "SR"}
    sent = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in truth.files}
    seg = _first_instance(orthanc, series["SEG"])
    assert seg.StudyInstanceUID == truth.study_uid
    (ref_series,) = seg.ReferencedSeriesSequence
    assert ref_series.SeriesInstanceUID == truth.series_uid
    assert {str(i.ReferencedSOPInstanceUID) for i in ref_series.ReferencedInstanceSequence} == sent
    sr = _first_instance(orthanc, series["SR"])
    tags = orthanc.get(f"/instances/{series['SR']['Instances'][0]}/tags?simplify")
    assert tags["StudyInstanceUID"] == truth.study_uid and tags["Modality"] == "SR"
    evidence = {
        str(s.SeriesInstanceUID): {str(i.ReferencedSOPInstanceUID) for i in s.ReferencedSOPSequence}
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for s in study.ReferencedSeriesSequence
    }
    assert evidence[truth.series_uid] == sent
    assert evidence[seg.SeriesInstanceUID] == {str(seg.SOPInstanceUID)}
    return sr


@pytest.mark.slow
def test_orthanc_auto_routes_and_receives_seg_and_sr(
    tmp_path: Path, orthanc_and_port: tuple[Orthanc, int]
) -> None:
    orthanc, node_port = orthanc_and_port
    config = node_config(tmp_path, node_port, _pacs(orthanc), routes=[ROUTE])
    truth = write_study(tmp_path / "ct", accession="ACC-E2E-1")
    with Node(config, runner=pipeline_runner(config)) as node:
        uploaded = orthanc.upload(truth.files)
        study_id = uploaded[0]["ParentStudy"]
        _check_results(orthanc, study_id, truth)
        (job,) = node.jobs.all()
        assert job.state is JobState.DONE and job.calling_ae == ORTHANC_AET


@pytest.mark.slow
@pytest.mark.parametrize("orthanc_and_port", [False], indirect=True)
def test_retrieve_by_accession_with_a_question_via_c_get(
    tmp_path: Path, orthanc_and_port: tuple[Orthanc, int]
) -> None:
    orthanc, node_port = orthanc_and_port
    truth = write_study(tmp_path / "ct", accession="ACC-RET-9", patient_id="RET-1")
    other = write_study(tmp_path / "other", accession="ACC-OTHER", patient_id="RET-2", seed=3)
    study_id = orthanc.upload(truth.files)[0]["ParentStudy"]
    orthanc.upload(other.files)
    config = node_config(tmp_path, node_port, _pacs(orthanc), routes=[ROUTE])
    question = "How large is the left lung?"
    told: list[tuple[int, int | None]] = []
    result = retrieve_and_process(config, "pacs", RetrieveQuery(accession="ACC-RET-9"),
                                  method="get", instruction=question,
                                  runner=pipeline_runner(config), progress=lambda n, t: told.append((n, t)))
    assert result.ok, (result.errors, [j.error for j in result.jobs])
    # The progress bar's feed: one per instance as it is spooled, against the PACS's count.
    assert [n for n, _ in told] == [1] * len(truth.files)
    assert {t for _, t in told} <= {len(truth.files), None}
    assert [s.series_uid for s in result.series] == [truth.series_uid]
    assert result.pulled == {truth.series_uid: len(truth.files)}
    (job,) = result.jobs
    assert job.spec is not None and job.spec.instruction == question
    sr = _check_results(orthanc, study_id, truth)
    texts = [str(elem.value) for elem in sr.iterall() if elem.keyword == "TextValue"]
    assert question in texts
    # Nothing of the other study was pulled.
    assert not (Path(config.node.data_dir) / "spool" / other.study_uid).exists()
    # Asked again: the study now holds our SEG and SR too; they are not pulled (not images),
    # and the same question on the same instances is not run twice.
    again = retrieve_and_process(config, "pacs", RetrieveQuery(accession="ACC-RET-9"),
                                 method="get", instruction=question,
                                 runner=pipeline_runner(config))
    assert [s.modality for s in again.series] == ["CT"]
    assert again.ok and [j.job_id for j in again.jobs] == [job.job_id]
    assert set(_series_by_modality(orthanc, study_id)) == {"CT", "SEG", "SR"}


def _mmed_node() -> list[str]:
    return [sys.executable, "-m", "dicom_node.app.cli"]


@pytest.mark.slow
@pytest.mark.parametrize("orthanc_and_port", [False], indirect=True)
def test_retrieve_command_moves_study_to_running_node(
    tmp_path: Path, orthanc_and_port: tuple[Orthanc, int]
) -> None:
    orthanc, node_port = orthanc_and_port
    truth = write_study(tmp_path / "ct", accession="ACC-MOVE-3", series_description="Chest CT lung")
    study_id = orthanc.upload(truth.files)[0]["ParentStudy"]
    config = node_config(tmp_path, node_port, _pacs(orthanc), routes=[ROUTE])
    config_file = tmp_path / "node.yaml"
    config_file.write_text(yaml.safe_dump(config.model_dump(mode="json", by_alias=True)))
    with Node(config, runner=pipeline_runner(config)):
        proc = subprocess.run(
            [*_mmed_node(), "retrieve", "--config", str(config_file), "--accession", "ACC-MOVE-3",
             "--series-description", "lung", "--from", "pacs", "--method", "move", "--json",
             "--wait", "120"],
            check=False, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=180,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out = yaml.safe_load(proc.stdout)
        assert [j["state"] for j in out["jobs"]] == ["done"]
        assert out["pulled"] == {truth.series_uid: len(truth.files)}
        _check_results(orthanc, study_id, truth)


@pytest.mark.slow
@pytest.mark.parametrize("orthanc_and_port", [False], indirect=True)
def test_orthanc_queries_the_node_and_moves_its_seg(
    tmp_path: Path, orthanc_and_port: tuple[Orthanc, int]
) -> None:
    """Orthanc as the Q/R client: C-FIND on the node for the SEG series, C-MOVE it to itself."""
    orthanc, node_port = orthanc_and_port
    route = {**ROUTE, "send_to": []}  # results stay on the node until someone fetches them
    config = node_config(tmp_path, node_port, _pacs(orthanc), routes=[route])
    truth = write_study(tmp_path / "ct", accession="ACC-QR-ORTHANC")
    with Node(config, runner=pipeline_runner(config)) as node:
        assert storescu(node_port, truth.files).returncode == 0
        (job,) = wait_for(lambda: [j for j in node.jobs.all() if j.state.finished], timeout=60)
        assert job.state is JobState.DONE, job.error
        query = orthanc.post("/modalities/node/query", json.dumps({
            "Level": "Series", "Query": {"StudyInstanceUID": truth.study_uid, "Modality": "SEG"},
        }).encode(), "application/json")
        answers = orthanc.get(f"/queries/{query['ID']}/answers?expand&simplify")
        assert [a["Modality"] for a in answers] == ["SEG"]
        orthanc.post(f"/queries/{query['ID']}/answers/0/retrieve",
                     json.dumps({"TargetAet": ORTHANC_AET, "Synchronous": True}).encode(),
                     "application/json")
        (study_id,) = orthanc.get("/studies")
        (seg_series,) = _series_by_modality(orthanc, study_id).values()
        seg = _first_instance(orthanc, seg_series)
        assert seg.Modality == "SEG" and seg.StudyInstanceUID == truth.study_uid
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == truth.series_uid
