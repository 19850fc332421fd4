"""The planner settings reach the fallback: when the configured planner backend cannot answer,
the rules planner that takes over in a job is built from the same ``planner`` settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from config.loader import load_config
from dicom_node.jobs.pipeline import JobFailed, WorkerContext, run_job
from dicom_node.jobs.spec import JobSpec
from tests.qr_helpers import tool_registry, write_study
from tests.receive_helpers import free_port

INSTRUCTION = "Segment the lungs and measure their volumes."


def test_fallback_planner_is_built_from_the_planner_settings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    truth = write_study(tmp_path / "ct")
    no_model = tmp_path / "no-intent-model"
    config = load_config(overrides={"planner": {
        "backend": "openai", "endpoint": f"http://127.0.0.1:{free_port()}/v1", "model": "m",
        "retries": 0, "timeout_seconds": 5, "intent_model": str(no_model),
    }})
    ctx = WorkerContext(config=config, registry=tool_registry())
    spec = JobSpec(job_id="fallback", study_uid=truth.study_uid, series_uid=truth.series_uid,
                   series_dir=str(truth.files[0].parent), result_dir=str(tmp_path / "result"),
                   route="question", instruction=INSTRUCTION, planner="openai")
    caplog.set_level(logging.WARNING, logger="agent")
    try:
        run_job(spec, ctx)
    except JobFailed as exc:  # without its reader, the rules planner cannot read the instruction
        assert "read the instruction" in str(exc)
    assert "planner 'openai' unavailable" in caplog.text  # the fallback took over
    # It read the instruction with the configured encoder (none in that folder), not with the
    # packaged default a bare rules planner would load.
    assert f"cannot load the instruction reader (Path {no_model} not found)" in caplog.text
    assert ctx.fallback() is ctx.fallback()  # built once per worker
