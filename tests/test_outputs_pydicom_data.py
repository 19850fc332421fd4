"""SEG/SR outputs on real files from pydicom-data: an Enhanced CT (multi-frame source, frames
referenced per frame) and a chest CR (projection image: no Frame of Reference, zero PixelSpacing
in the source)."""
from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from config.schema import OutputConfig
from image_model.codes import concept
from image_model.findings import Segment, ToolOutput
from image_model.loader import load_series
from image_model.measure import mask_size
from image_model.volume import Volume
from sr_templates.outputs import build_outputs
from sr_templates.source import assumed_plane_frame_of_reference
from tests.dicom_validate import dciodvfy_errors
from tests.outputs_helpers import ALGORITHM, detection_output, drawn_findings

CFG = OutputConfig()


def _load(name: str) -> Volume:
    return load_series([Path(get_testdata_file(name))])


def _blob(volume: Volume, slice_index: int) -> Segment:
    mask = np.zeros(volume.shape, dtype=bool)
    mask[slice_index, 100:180, 150:260] = True
    return Segment(
        label="Blob", category=concept("morphologically_abnormal_structure"),
        type=concept("morphologically_abnormal_structure"), mask=mask,
        measurements=[mask_size(mask, volume)],
    )


def _write(datasets: list, out: Path) -> list[Path]:
    paths = []
    for i, ds in enumerate(datasets):
        paths.append(out / f"{i}.dcm")
        ds.save_as(paths[-1])
    return paths


def test_enhanced_ct_seg_references_source_frames(tmp_path: Path) -> None:
    volume = _load("eCT_Supplemental.dcm")
    assert volume.frame_numbers, "loader should present the enhanced CT as frames"
    slice_index = 0
    frame = volume.frame_numbers[slice_index]  # the loader orders frames spatially
    outputs = [ToolOutput("MedSAM", ALGORITHM, {}, segments=[_blob(volume, slice_index)]),
               detection_output(slice_index)]
    seg_path, sr_path = _write(build_outputs(volume, outputs, "One blob.", CFG, "Find blobs.", "rules"), tmp_path)
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []

    seg = hd.seg.segread(seg_path)
    source = volume.datasets[0]
    assert seg.NumberOfFrames == 1  # the other source frame is empty and omitted
    ref = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert int(ref.ReferencedFrameNumber) == frame
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    back = seg.get_pixels_by_source_frame(source.SOPInstanceUID, [frame], segment_numbers=[1])
    np.testing.assert_array_equal(back[0, ..., 0].astype(bool), outputs[0].segments[0].mask[slice_index])

    report = hd.sr.srread(sr_path).content
    drawn = drawn_findings(report)
    # The segment's outline is a SCOORD on its source frame; the box a SCOORD3D (the enhanced CT
    # has a Frame of Reference), on the frame's plane.
    blob, outline_region = drawn["Blob"]
    source_item = outline_region.ContentSequence[0].ReferencedSOPSequence[0]
    assert source_item.ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert list(map(int, np.atleast_1d(source_item.ReferencedFrameNumber))) == [frame]
    _, box = drawn["nodule"]
    assert box.ValueType == "SCOORD3D" and box.ReferencedFrameOfReferenceUID == source.FrameOfReferenceUID
    normal = np.cross(volume.orientation[:3], volume.orientation[3:])
    np.testing.assert_allclose(box.value @ normal, volume.positions[slice_index] @ normal)
    (volumetric,) = report.get_volumetric_roi_measurement_groups()
    assert volumetric.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert volumetric.tracking_uid == blob.tracking_uid


def test_chest_cr_box_and_mask(tmp_path: Path) -> None:
    volume = _load("RG1_UNCI.dcm")
    cr = volume.datasets[0]
    outputs = [ToolOutput("MedSAM", ALGORITHM, {}, segments=[_blob(volume, 0)]), detection_output(None)]
    seg_path, sr_path = _write(build_outputs(volume, outputs, "A box.", CFG, "Locate it.", "rules"), tmp_path)
    assert dciodvfy_errors(seg_path) == []
    assert dciodvfy_errors(sr_path) == []
    assert "PixelSpacing" in cr  # the source's zero spacing was not removed from the caller's dataset

    seg = hd.seg.segread(seg_path)
    # No plane in the patient: the SEG lies on its assumed image plane (sr_templates.source).
    assert seg.FrameOfReferenceUID == assumed_plane_frame_of_reference(volume)
    assert "PatientOrientation" not in seg  # Type 2C: not required once the frames have a plane

    report = hd.sr.srread(sr_path).content
    box, region = drawn_findings(report)["nodule"]
    rows, cols = int(cr.Rows), int(cr.Columns)
    assert region.ValueType == "SCOORD"  # no Frame of Reference: image coordinates
    np.testing.assert_allclose(region.value[0], [0.25 * cols, 0.25 * rows])
    np.testing.assert_allclose(region.value[2], [0.75 * cols, 0.5 * rows])
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == cr.SOPInstanceUID
    # Pixel spacing is unknown for this CR, so the box's area is in pixels, never in made-up mm2.
    (area,) = box.get_measurements()
    assert area.unit.value == "{pixels}" and area.value == pytest.approx(0.5 * cols * 0.25 * rows)
