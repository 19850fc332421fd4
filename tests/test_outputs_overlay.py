"""Secondary-capture overlay fallback for destinations that refuse Segmentation Storage.

The real pipeline (loader, rules planner, CT lung tool, highdicom encoders) runs on a generated
CT phantom; the overlays are checked against the SEG it wrote (read back with highdicom), by
dciodvfy, and end to end: dcmtk storescu -> node -> two dcmtk storescp destinations, one with
``accepts_seg: false`` that must get the SR and the overlays but no SEG.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import SecondaryCaptureImageStorage

from config.loader import load_config
from config.schema import AppConfig, OutputConfig
from dicom_node.app.node import Node
from dicom_node.deliver.outbox import OUTBOX_FOLDER, DeliveryState, load_deliveries
from dicom_node.jobs.pipeline import OVERLAY_FOLDER, JobSpec, WorkerContext, run_job
from image_model.codes import concept
from image_model.findings import AlgorithmInfo, Segment, ToolOutput
from image_model.loader import load_series
from sr_templates.outputs import build_overlays
from testkit.phantoms import write_ct_phantom
from tests.dicom_validate import dciodvfy_errors
from tests.outbox_helpers import StoreSCP
from tests.receive_helpers import free_port, storescu, wait_for

INSTRUCTION = "Segment the lungs and measure their volumes."
OVERLAY_SERIES_NUMBER = 4321


def make_config(data_dir: Path, ports: dict[str, int] | None = None, node_port: int = 11112) -> AppConfig:
    """A node config with a SEG-capable ``pacs`` and a ``viewer`` that refuses SEG."""
    ports = ports or {"pacs": 4242, "viewer": 4243}
    return load_config(overrides={
        "node": {"port": node_port, "data_dir": str(data_dir), "series_quiet_seconds": 0.3},
        "destinations": {
            "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": ports["pacs"]},
            "viewer": {"ae_title": "VIEWER", "host": "127.0.0.1", "port": ports["viewer"],
                       "accepts_seg": False},
        },
        "routes": [{"name": "ct-lungs", "match": {"Modality": "CT"}, "instruction": INSTRUCTION,
                    "send_to": ["pacs", "viewer"]}],
        "output": {"overlay_series_number": OVERLAY_SERIES_NUMBER},
    })


def spec_for(series_dir: Path, result_dir: Path, destinations: list[str]) -> JobSpec:
    first = pydicom.dcmread(next(series_dir.glob("*.dcm")), stop_before_pixels=True)
    return JobSpec(
        job_id=result_dir.name, study_uid=str(first.StudyInstanceUID),
        series_uid=str(first.SeriesInstanceUID), series_dir=str(series_dir),
        result_dir=str(result_dir), route="ct-lungs", instruction=INSTRUCTION, planner="rules",
        destinations=destinations,
    )


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> WorkerContext:
    return WorkerContext.build(make_config(tmp_path_factory.mktemp("var")))


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct")
    write_ct_phantom(folder, slices=6, rows=48, cols=48, slice_spacing=8.0)
    return folder


@pytest.fixture(scope="module")
def job(ctx: WorkerContext, series: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result_dir = tmp_path_factory.mktemp("results") / "job-overlay"
    return run_job(spec_for(series, result_dir, ["pacs", "viewer"]), ctx).to_dict()


def overlay_paths(manifest: dict[str, Any]) -> list[Path]:
    (seg, overlays), = manifest["fallback_files"].items()
    assert Path(seg).name == "seg.dcm" and seg in manifest["files"]
    return [Path(p) for p in overlays]


def test_one_overlay_per_segmented_slice_matching_the_seg(job: dict[str, Any], series: Path) -> None:
    paths = overlay_paths(job)
    seg = hd.seg.segread(next(p for p in map(Path, job["files"]) if p.name == "seg.dcm"))
    segmented = {str(item.ReferencedSOPInstanceUID)
                 for frame in seg.PerFrameFunctionalGroupsSequence
                 for derivation in frame.DerivationImageSequence
                 for item in derivation.SourceImageSequence}
    sources = {str(ds.SOPInstanceUID): ds for ds in
               (pydicom.dcmread(p) for p in sorted(series.glob("*.dcm")))}
    assert 0 < len(paths) == len(segmented) < len(sources)  # the phantom's end slices have no lung
    assert [p.name for p in paths] == [f"{n:04d}.dcm" for n in range(1, len(paths) + 1)]
    assert all(p.parent.name == OVERLAY_FOLDER for p in paths)

    overlays = [pydicom.dcmread(p) for p in paths]
    assert [job["sop_instance_uids"][f"{OVERLAY_FOLDER}/{p.name}"] for p in paths] == [
        ds.SOPInstanceUID for ds in overlays]
    referenced = [str(ds.SourceImageSequence[0].ReferencedSOPInstanceUID) for ds in overlays]
    assert set(referenced) == segmented
    for ds, source_uid in zip(overlays, referenced, strict=True):
        source = sources[source_uid]
        assert ds.SOPClassUID == SecondaryCaptureImageStorage
        assert ds.ReferencedImageSequence[0].ReferencedSOPInstanceUID == source_uid
        assert ds.SourceImageSequence[0].PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
        assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientID == source.PatientID
        assert ds.PatientName == source.PatientName
        assert ds.SeriesInstanceUID == overlays[0].SeriesInstanceUID != source.SeriesInstanceUID
        assert ds.SeriesNumber == OVERLAY_SERIES_NUMBER
        assert ds.BurnedInAnnotation == "NO"
        for text in (ds.DerivationDescription, ds.ImageComments):
            assert text.startswith("mmed-node overlay of ") and "not for primary diagnosis" in text
            assert "Left lung" in text and "Right lung" in text
        assert ds.PhotometricInterpretation == "RGB" and ds.pixel_array.shape == (48, 48, 3)

        # Colour exactly where the SEG has the slice's mask; grey (R == G == B) elsewhere.
        mask = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source_uid], combine_segments=True).squeeze() > 0
        rgb = ds.pixel_array.astype(int)
        coloured = (rgb[..., 0] != rgb[..., 1]) | (rgb[..., 1] != rgb[..., 2])
        assert mask.any() and np.array_equal(coloured, mask)
        # The grey is the source slice windowed: brighter tissue stays brighter.
        hu = source.pixel_array * float(source.RescaleSlope) + float(source.RescaleIntercept)
        grey = rgb[..., 0][~mask]
        assert np.corrcoef(grey, hu[~mask])[0, 1] > 0.9


def test_every_overlay_passes_dciodvfy(job: dict[str, Any]) -> None:
    for path in overlay_paths(job):
        assert dciodvfy_errors(path) == [], path


def test_overlays_are_deterministic(ctx: WorkerContext, series: Path, job: dict[str, Any], tmp_path: Path) -> None:
    again = run_job(spec_for(series, tmp_path / "again", ["viewer"]), ctx).to_dict()
    first, second = overlay_paths(job), overlay_paths(again)
    assert [p.name for p in first] == [p.name for p in second]
    for a, b in zip(first, second, strict=True):
        da, db = pydicom.dcmread(a), pydicom.dcmread(b)
        assert (da.SOPInstanceUID, da.SeriesInstanceUID) == (db.SOPInstanceUID, db.SeriesInstanceUID)
        assert da.PixelData == db.PixelData


def test_no_overlays_when_every_destination_takes_seg(ctx: WorkerContext, series: Path, tmp_path: Path) -> None:
    manifest = run_job(spec_for(series, tmp_path / "pacs-only", ["pacs"]), ctx)
    assert manifest.fallback_files == {}
    assert not (tmp_path / "pacs-only" / OVERLAY_FOLDER).exists()
    assert [Path(f).name for f in manifest.files] == ["seg.dcm", "sr.dcm"]


def test_rerun_removes_overlays_it_no_longer_writes(ctx: WorkerContext, series: Path, tmp_path: Path) -> None:
    result_dir = tmp_path / "rerun"
    run_job(spec_for(series, result_dir, ["viewer"]), ctx)
    stale = result_dir / OVERLAY_FOLDER / "0099.dcm"
    shutil.copy(next((result_dir / OVERLAY_FOLDER).glob("*.dcm")), stale)
    manifest = run_job(spec_for(series, result_dir, ["viewer"]), ctx)
    assert not stale.exists()
    assert sorted(result_dir.joinpath(OVERLAY_FOLDER).glob("*.dcm")) == overlay_paths(manifest.to_dict())


@pytest.mark.parametrize("name", ["eCT_Supplemental.dcm", "RG1_UNCI.dcm"])
def test_overlays_of_real_enhanced_ct_and_cr(name: str, tmp_path: Path) -> None:
    """Enhanced CT: the overlay references the source frame it shows (Referenced Frame Number).
    CR (no image plane): the source's own Patient Orientation is kept."""
    source_path = get_testdata_file(name)
    assert source_path is not None, "pip install pydicom-data"
    volume = load_series([Path(source_path)])
    mask = np.zeros(volume.shape, dtype=bool)
    last = volume.shape[0] - 1
    mask[last, volume.shape[1] // 3: volume.shape[1] // 2, volume.shape[2] // 3: volume.shape[2] // 2] = True
    output = ToolOutput("test tool", AlgorithmInfo("test", "1"), {},
                        segments=[Segment("blob", concept("tissue"), concept("organ"), mask)])
    (image,) = build_overlays(volume, [output], OutputConfig())
    path = tmp_path / "overlay.dcm"
    image.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    reference = pydicom.dcmread(path).SourceImageSequence[0]
    source = volume.datasets[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID
    if volume.frame_numbers:
        assert reference.ReferencedFrameNumber == volume.frame_numbers[last]
    else:
        assert "ReferencedFrameNumber" not in reference
        assert list(image.PatientOrientation) == list(source.PatientOrientation)


def all_done(outbox_dir: Path, expected: int) -> bool:
    records = load_deliveries(outbox_dir)
    return len(records) == expected and all(d.state is DeliveryState.DONE for d in records)


@pytest.mark.slow
def test_destination_without_seg_receives_sr_and_overlays(tmp_path: Path) -> None:
    """storescu -> node -> outbox: the SEG-capable PACS gets SEG + SR, the viewer (a real dcmtk
    storescp configured accepts_seg: false) gets SR + overlays and no SEG."""
    ports = {"pacs": free_port(), "viewer": free_port()}
    peers = {name: StoreSCP(tmp_path / name, port, ae_title=name.upper()).start()
             for name, port in ports.items()}
    truth = write_ct_phantom(tmp_path / "ct", slices=6, rows=48, cols=48, slice_spacing=8.0)
    node = Node(make_config(tmp_path / "var", ports, free_port()))
    node.start()
    try:
        assert storescu(node.port, truth.files).returncode == 0
        try:
            (record,) = wait_for(lambda: [r for r in node.jobs.all() if r.state.finished], timeout=120)
        except AssertionError:
            raise AssertionError(f"no finished job: {[r.to_dict() for r in node.jobs.all()]}, "
                                 f"spool {[s.sop_uids for s in node.spool.scan()]}") from None
        manifest = json.loads(Path(record.manifest_path or "").read_text())
        overlays = overlay_paths(manifest)
        by_name = {Path(p).name: str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                   for p in manifest["files"]}
        overlay_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in overlays}
        wait_for(lambda: len(peers["viewer"].received()) >= 1 + len(overlays)
                 and len(peers["pacs"].received()) >= 2, timeout=60)
        outbox_dir = tmp_path / "var" / OUTBOX_FOLDER
        wait_for(lambda: all_done(outbox_dir, 2), timeout=30)
        deliveries = {d.destination: d for d in load_deliveries(outbox_dir)}
    finally:
        node.stop()
        for peer in peers.values():
            peer.stop()
    assert set(peers["pacs"].received()) == {by_name["seg.dcm"], by_name["sr.dcm"]}
    assert set(peers["viewer"].received()) == {by_name["sr.dcm"]} | overlay_uids
    assert set(deliveries) == {"pacs", "viewer"}
    viewer = deliveries["viewer"]
    seg_path = str(next(Path(p) for p in manifest["files"] if Path(p).name == "seg.dcm").resolve())
    assert viewer.replaced == {seg_path: [str(p.resolve()) for p in overlays]}
    assert "replaced by" in viewer.skipped[seg_path] and seg_path not in viewer.sent
    assert f"seg.dcm replaced by {len(overlays)} overlay image(s)" in viewer.summary()
    assert deliveries["pacs"].replaced == {} and not deliveries["pacs"].skipped
