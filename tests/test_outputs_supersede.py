"""Late instances: the re-run's SR names the SR it replaces (Predecessor Documents Sequence,
PS3.3 C.17.2.3), and a re-run over an unchanged instance set reproduces the same UIDs.

The real pipeline runs on a generated CT phantom: first on 4 slices, then on the same series
with a fifth; then end to end through the node (storescu sends 4, then the late one).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pydicom
import pytest

from config.loader import load_config
from config.schema import AppConfig
from dicom_node.app.node import Node
from dicom_node.jobs.manifest import Manifest
from dicom_node.jobs.pipeline import SR_FILE, JobSpec, WorkerContext, run_job
from dicom_node.jobs.store import JobRecord, JobState
from testkit.phantoms import write_ct_phantom
from tests.dicom_validate import dciodvfy_errors
from tests.receive_helpers import free_port, storescu, wait_for

INSTRUCTION = "Segment the lungs and measure their volumes."


def make_config(data_dir: Path, node_port: int = 11112) -> AppConfig:
    return load_config(overrides={
        "node": {"port": node_port, "data_dir": str(data_dir), "series_quiet_seconds": 0.3},
        "routes": [{"name": "ct-lungs", "match": {"Modality": "CT"}, "instruction": INSTRUCTION,
                    "send_to": []}],
    })


def spec_for(series_dir: Path, result_dir: Path, supersedes: list[str] | None = None) -> JobSpec:
    first = pydicom.dcmread(next(series_dir.glob("*.dcm")), stop_before_pixels=True)
    return JobSpec(
        job_id=result_dir.name, study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID), series_dir=str(series_dir),
        result_dir=str(result_dir), route="ct-lungs", instruction=INSTRUCTION, planner="rules",
        supersedes=supersedes or [],
    )


def result_uids(manifest: Manifest) -> dict[str, str]:
    """File name -> SOP Instance UID, read from the written files (not the manifest's claim)."""
    return {Path(p).name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
            for p in manifest.files}


def predecessors(sr_path: Path) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance) of every Predecessor Documents item of an SR."""
    ds = pydicom.dcmread(sr_path)
    return [(str(study.StudyInstanceUID), str(series.SeriesInstanceUID), str(item.ReferencedSOPInstanceUID))
            for study in ds.get("PredecessorDocumentsSequence", [])
            for series in study.ReferencedSeriesSequence
            for item in series.ReferencedSOPSequence]


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    return WorkerContext.build(make_config(tmp_path_factory.mktemp("var")))


@pytest.fixture(scope="module")
def slices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same series twice: its first 4 slices, and all 5 (a late instance arrived)."""
    root = tmp_path_factory.mktemp("ct")
    truth = write_ct_phantom(root / "all", slices=5, rows=48, cols=48, slice_spacing=10.0)
    four = root / "four"
    four.mkdir()
    for path in truth.files[:4]:
        shutil.copy(path, four)
    return four, root / "all"


def test_late_instance_sr_names_the_earlier_sr(ctx: WorkerContext, slices: tuple[Path, Path], tmp_path: Path) -> None:
    four, five = slices
    first = run_job(spec_for(four, tmp_path / "first"), ctx)
    first_sr = tmp_path / "first" / SR_FILE
    second = run_job(spec_for(five, tmp_path / "second", [str(first_sr)]), ctx)
    second_sr = tmp_path / "second" / SR_FILE

    old, new = result_uids(first), result_uids(second)
    assert set(old) == set(new) == {"seg.dcm", "sr.dcm"}
    assert not set(old.values()) & set(new.values())  # new instance set: new UIDs
    first_ds = pydicom.dcmread(first_sr)
    assert predecessors(second_sr) == [
        (str(first_ds.StudyInstanceUID), str(first_ds.SeriesInstanceUID), old["sr.dcm"])]
    assert pydicom.dcmread(second_sr).PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0] \
        .ReferencedSOPSequence[0].ReferencedSOPClassUID == first_ds.SOPClassUID
    assert predecessors(first_sr) == []
    assert second.supersedes == [{"sop_instance_uid": old["sr.dcm"],
                                     "series_uid": str(first_ds.SeriesInstanceUID)}]
    for path in (first_sr, second_sr):
        assert dciodvfy_errors(path) == [], path

    # Determinism: the first instance set again gives the first job's UIDs again.
    again = run_job(spec_for(four, tmp_path / "again"), ctx)
    assert result_uids(again) == old


def test_unreadable_or_foreign_predecessors_are_left_out(
    ctx: WorkerContext, slices: tuple[Path, Path], tmp_path: Path
) -> None:
    five = slices[1]
    missing = tmp_path / "never-written" / SR_FILE
    not_dicom = tmp_path / "junk.dcm"
    not_dicom.write_bytes(b"not a dicom file")
    foreign = tmp_path / "foreign.dcm"  # readable DICOM, but of another study
    ds = pydicom.dcmread(next(five.glob("*.dcm")))
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(foreign)
    manifest = run_job(spec_for(five, tmp_path / "job", [str(missing), str(not_dicom), str(foreign)]), ctx)
    assert manifest.supersedes == []
    sr = tmp_path / "job" / SR_FILE
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(sr)
    assert dciodvfy_errors(sr) == []


def test_old_job_specs_without_supersedes_still_load() -> None:
    """A spec as an older node wrote it (no ``supersedes`` key) loads, superseding nothing."""
    old: dict[str, Any] = {
        "job_id": "j", "study_uid": "1.2", "series_uid": "1.2.3", "series_dir": "/s",
        "result_dir": "/r", "route": "ct-lungs", "instruction": INSTRUCTION, "planner": "rules",
        "tools": None, "destinations": [], "attempt": 1,
    }
    assert JobSpec.from_dict(old).supersedes == []


def test_failed_superseded_job_hands_on_its_own_predecessor(tmp_path: Path) -> None:
    """Versions 1 (done) <- 2 (failed) <- 3: job 3's SR names version 1's SR; a job of another
    route on the same series is never a predecessor."""
    node = Node(make_config(tmp_path / "var"), use_default_outbox=False)

    def save(job_id: str, state: JobState, route: str = "ct-lungs", supersedes: tuple[str, ...] = ()) -> None:
        node.jobs.save(JobRecord(
            job_id, "1.2", "1.2.3", state, route, fingerprint=job_id, instance_count=1,
            result_dir=str(tmp_path / job_id), supersedes=list(supersedes)))

    save("v1", JobState.DONE)
    save("v2", JobState.FAILED, supersedes=("v1", "other-route"))
    save("other-route", JobState.DONE, route="ct-other")
    assert node.job_service._predecessor_reports(["v2"], "ct-lungs") == [str(tmp_path / "v1" / SR_FILE)]
    assert node.job_service._predecessor_reports(["v1"], "ct-lungs") == [str(tmp_path / "v1" / SR_FILE)]
    assert node.job_service._predecessor_reports(["other-route"], "ct-lungs") == []


@pytest.mark.slow
def test_node_late_instance_job_supersedes_the_first_sr(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path / "ct", slices=5, rows=48, cols=48, slice_spacing=10.0)
    node = Node(make_config(tmp_path / "var", free_port()), use_default_outbox=False)
    node.start()
    try:
        assert storescu(node.port, truth.files[:4]).returncode == 0
        (first,) = wait_for(lambda: [r for r in node.jobs.all() if r.state is JobState.DONE], timeout=120)
        assert storescu(node.port, truth.files[4:]).returncode == 0
        (second,) = wait_for(lambda: [r for r in node.jobs.all()
                                      if r.state is JobState.DONE and r.job_id != first.job_id], timeout=120)
    finally:
        node.stop()
    assert second.instance_count == 5 and second.supersedes == [first.job_id]
    assert second.spec is not None and second.spec.supersedes == [str(Path(first.result_dir or "") / SR_FILE)]
    old = json.loads(Path(first.manifest_path or "").read_text())
    new_sr = Path(second.result_dir or "") / SR_FILE
    assert [uid for _, _, uid in predecessors(new_sr)] == [old["sop_instance_uids"]["sr.dcm"]]
    assert dciodvfy_errors(new_sr) == []


def test_route_and_question_get_their_own_uids_and_a_rerun_the_same(
    ctx: WorkerContext, slices: tuple[Path, Path], tmp_path: Path
) -> None:
    """Output identity = instance set + pipeline version + the job's route and instruction: a
    second route, or a question about a routed series, must not overwrite the routed result."""
    _, series = slices
    base = spec_for(series, tmp_path / "a")
    routed = result_uids(run_job(base, ctx))
    again = result_uids(run_job(JobSpec.from_dict({**base.to_dict(), "result_dir": str(tmp_path / "b")}), ctx))
    other_route = result_uids(run_job(JobSpec.from_dict(
        {**base.to_dict(), "route": "ct-lungs-research", "result_dir": str(tmp_path / "c")}), ctx))
    question = result_uids(run_job(JobSpec.from_dict(
        {**base.to_dict(), "instruction": "How big are the lungs?", "result_dir": str(tmp_path / "d")}), ctx))
    assert again == routed
    assert set(other_route.values()).isdisjoint(routed.values())
    assert set(question.values()).isdisjoint(routed.values())
    assert set(question.values()).isdisjoint(other_route.values())
