"""A series the route's tools cannot handle ends as a failed job with a readable reason (issue 2:
"a CR sent to the CT route"), instead of an SR that only says "cannot"; an ask the series can
serve is still answered."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from config.loader import load_config
from dicom_node.jobs.pipeline import JobFailed, JobSpec, WorkerContext, run_job

LUNGS = "Segment the lungs and measure their volumes."


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    var = tmp_path_factory.mktemp("var")
    return WorkerContext.build(load_config(overrides={"node": {"data_dir": str(var)}}))


@pytest.fixture(scope="module")
def cr_series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cr")
    shutil.copy(str(get_testdata_file("RG1_UNCI.dcm")), folder / "cr.dcm")
    return folder


def spec(series: Path, result: Path, instruction: str) -> JobSpec:
    return JobSpec(job_id=result.name, study_uid="1.2.3", series_uid="1.2.3.4", series_dir=str(series),
                   result_dir=str(result), route="ct-lungs", instruction=instruction, planner="rules")


def test_cr_sent_to_the_ct_lung_route_fails_with_the_reason(ctx: WorkerContext, cr_series: Path,
                                                            tmp_path: Path) -> None:
    with pytest.raises(JobFailed, match=r"no available tool can .*lung.* for this CR series"):
        run_job(spec(cr_series, tmp_path / "job", LUNGS), ctx)
    assert not (tmp_path / "job" / "sr.dcm").exists()


def test_an_ask_the_cr_can_serve_is_still_answered(ctx: WorkerContext, cr_series: Path,
                                                    tmp_path: Path) -> None:
    manifest = run_job(spec(cr_series, tmp_path / "job", "Describe this image."), ctx)
    assert manifest.answer and not manifest.errors
    assert (tmp_path / "job" / "sr.dcm").exists()
