"""The dashboard's previews of a job with a detection (dicom_node/app/dashboard/preview.py): the
SR's box, encoded by sr_templates as SCOORD3D in patient coordinates on a CT, is projected back
onto its source slice and drawn there; the lungs' outlines in the same SR are not (the SEG draws
them). The SEG and SR are the encoders' real output for a phantom; the job around them is a
record pointing at the files, as the node leaves them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

from config.schema import OutputConfig
from dicom_node.app.dashboard.preview import BOX_RGB, PREVIEW_FOLDER, build_previews
from dicom_node.jobs.pipeline import SEG_FILE, SR_FILE
from dicom_node.jobs.spec import JobSpec
from dicom_node.jobs.store import JobRecord, JobState
from image_model.codes import concept
from image_model.findings import AlgorithmInfo, Box, ToolOutput
from image_model.loader import load_series
from sr_templates.outputs import build_outputs
from testkit.phantoms import write_ct_phantom
from tools.ct_lung import CTLungSegmentation

CFG = OutputConfig(seg_series_number=61, sr_series_number=62, manufacturer="test", pipeline_version="1.0")
AI = AlgorithmInfo("test model", "0.1", concept("artificial_intelligence"))
#: The box: columns 16-32 and rows 16-32 of the 64 x 64 slice 5 (x0, y0, x1, y1 of 0-1).
BOX, BOX_SLICE = (0.25, 0.25, 0.5, 0.5), 5


def test_a_detection_box_is_drawn_on_its_slice(tmp_path: Path) -> None:
    series_dir = tmp_path / "spool"
    truth = write_ct_phantom(tmp_path / "in", slices=16, rows=64, cols=64)
    series_dir.mkdir()
    for path in truth.files:  # the spool's names: <SOP Instance UID>.dcm
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        path.rename(series_dir / f"{uid}.dcm")
    volume = load_series(series_dir)
    lungs = CTLungSegmentation().run(volume, {"image": "<imagepath>"})
    boxes = ToolOutput("grounding dino", AI, {}, boxes=[Box("nodule", 0.9, BOX, BOX_SLICE)])
    result_dir = tmp_path / "results"
    result_dir.mkdir()
    seg, sr = build_outputs(volume, [lungs, boxes], "One nodule.", CFG, "Find nodules.", "rules")
    seg.save_as(result_dir / SEG_FILE)
    sr.save_as(result_dir / SR_FILE)
    spec = JobSpec(job_id="ab" * 12, study_uid=str(sr.StudyInstanceUID),
                   series_uid=str(volume.datasets[0].SeriesInstanceUID), series_dir=str(series_dir),
                   result_dir=str(result_dir), route="ct-lungs", instruction="Find nodules.",
                   planner="rules")
    record = JobRecord(job_id=spec.job_id, study_uid=spec.study_uid, series_uid=spec.series_uid,
                       state=JobState.DONE, route="ct-lungs", fingerprint="f", instance_count=16,
                       result_dir=str(result_dir), spec=spec)

    previews = build_previews(record)
    box_slice_uid = str(volume.datasets[BOX_SLICE].SOPInstanceUID)
    with_box = [p for p in previews.previews if p.boxes]
    assert [(p.sop_uid, p.boxes) for p in with_box] == [(box_slice_uid, 1)], previews
    assert not previews.notes and {s.label for s in previews.segments} == {"Left lung", "Right lung"}
    rgb = np.asarray(Image.open(result_dir / PREVIEW_FOLDER / with_box[0].file).convert("RGB"))
    drawn = (rgb == BOX_RGB).all(axis=-1)
    rows, cols = np.nonzero(drawn)
    # The outline runs along the box's edges, one pixel wide at this size (+-1 for rounding).
    assert abs(rows.min() - 16) <= 1 and abs(rows.max() - 32) <= 1
    assert abs(cols.min() - 16) <= 1 and abs(cols.max() - 32) <= 1
    assert not drawn[20:29, 20:29].any(), "the box's inside is left as it was"
    # Only the box: the lungs' outlines in the SR are not drawn as boxes on other slices.
    for preview in previews.previews:
        if preview is not with_box[0]:
            other = np.asarray(Image.open(result_dir / PREVIEW_FOLDER / preview.file).convert("RGB"))
            assert not (other == BOX_RGB).all(axis=-1).any()
    # A second look reads the cache (same files), a changed SR renders again.
    assert build_previews(record) == previews
    stamp = (result_dir / PREVIEW_FOLDER / "index.json").stat().st_mtime_ns
    sr.save_as(result_dir / SR_FILE)
    build_previews(record)
    assert (result_dir / PREVIEW_FOLDER / "index.json").stat().st_mtime_ns != stamp
