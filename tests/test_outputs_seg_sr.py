"""SEG and SR outputs: built from real masks on a real (small) CT series, written, read back with
highdicom, and checked by dciodvfy."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from config.schema import OutputConfig
from dicom_node.receive.assembly import SeriesTracker
from image_model.codes import concept, text_role, unit
from image_model.findings import Measurement, Segment, ToolOutput
from image_model.fingerprint import instance_set_fingerprint
from image_model.volume import Volume
from sr_templates.coded import coded
from sr_templates.identity import OutputIdentity
from sr_templates.outputs import build_outputs, identity_for
from sr_templates.seg import build_seg
from sr_templates.sr import build_sr
from testkit.phantoms import write_ct_phantom
from tests.dicom_validate import dciodvfy_errors
from tests.outputs_helpers import (
    ALGORITHM,
    classification_output,
    detection_output,
    load_volume,
    two_lung_output,
    write_ct_series,
)

CFG = OutputConfig(seg_series_number=77, sr_series_number=78, manufacturer="ACME AI", pipeline_version="9.9")
INSTRUCTION = "Segment the lungs and measure their volumes."
ANSWER = "The right lung measures about 1.4 mL and the left lung about 1.4 mL."


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    return load_volume(write_ct_series(tmp_path_factory.mktemp("ct")))


@pytest.fixture(scope="module")
def written(ct: Volume, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    outputs = [two_lung_output(ct), detection_output(3), classification_output()]
    datasets = build_outputs(ct, outputs, ANSWER, CFG, INSTRUCTION, "rules")
    out = tmp_path_factory.mktemp("out")
    seg_path, sr_path = out / "seg.dcm", out / "sr.dcm"
    datasets[0].save_as(seg_path)
    datasets[1].save_as(sr_path)
    return {"outputs": outputs, "seg_path": seg_path, "sr_path": sr_path, "datasets": datasets}


def _uids(volume: Volume) -> list[str]:
    return [str(ds.SOPInstanceUID) for ds in volume.datasets]


def test_identity_is_derived_from_instance_set_and_version() -> None:
    uids = [f"1.2.826.0.1.3680043.8.498.{i}" for i in range(1, 6)]
    a = OutputIdentity.derive("1.2.3", uids, "0.1.0", 9901, 9902)
    again = OutputIdentity.derive("1.2.3", list(reversed(uids)) + uids[:2], "0.1.0", 9901, 9902)
    assert a == again  # order and duplicate deliveries do not matter: a re-run replaces
    late = OutputIdentity.derive("1.2.3", uids + ["1.2.826.0.1.3680043.8.498.99"], "0.1.0", 9901, 9902)
    bumped = OutputIdentity.derive("1.2.3", uids, "0.2.0", 9901, 9902)
    other_series = OutputIdentity.derive("1.2.4", uids, "0.1.0", 9901, 9902)
    for changed in (late, bumped, other_series):
        assert changed.seg_instance_uid != a.seg_instance_uid
        assert changed.sr_series_uid != a.sr_series_uid
    kinds = {a.seg_series_uid, a.seg_instance_uid, a.sr_series_uid, a.sr_instance_uid}
    assert len(kinds) == 4
    for uid in kinds:
        assert len(uid) <= 64 and uid.startswith("2.25.") and not uid[5:].startswith("0")
        assert pydicom.uid.UID(uid).is_valid
    assert a.fingerprint == instance_set_fingerprint(uids) != late.fingerprint


def test_output_identity_follows_the_instance_set_the_node_tracked(tmp_path: Path) -> None:
    """The node keys a series' jobs by the fingerprint its tracker computes from arrivals; the
    outputs derive their UIDs from the instances the loader read. Both must name the same set:
    arrivals out of order and twice give the identity of the loaded series, and a late instance
    gives the tracker and the outputs a new fingerprint together."""
    paths = write_ct_series(tmp_path / "ct", slices=4)
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    clock = [0.0]
    tracker = SeriesTracker(quiet_seconds=1.0, require_release=True, clock=lambda: clock[0])

    def arrive(ds: pydicom.Dataset) -> None:
        tracker.instance_received(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, "assoc-1")

    for ds in (headers[2], headers[0], headers[2], headers[1]):  # out of order, one twice
        arrive(ds)
    tracker.association_ended("assoc-1")
    clock[0] = 5.0
    (due,) = tracker.due()
    first = identity_for(load_volume(paths[:3]), CFG)
    assert due.fingerprint == first.fingerprint

    tracker.mark_processed(due.study_uid, due.series_uid, due.fingerprint, ("job-1",))
    arrive(headers[3])  # a late instance
    tracker.association_ended("assoc-1")
    clock[0] = 10.0
    (late,) = tracker.due()
    second = identity_for(load_volume(paths), CFG)
    assert late.fingerprint == second.fingerprint != first.fingerprint
    assert second.sr_instance_uid != first.sr_instance_uid


def test_seg_read_back_matches_masks_and_references(ct: Volume, written: dict) -> None:
    seg_path: Path = written["seg_path"]
    assert dciodvfy_errors(seg_path) == []
    seg = hd.seg.segread(seg_path)
    lungs = written["outputs"][0]
    right, _empty, left = lungs.segments
    ident = identity_for(ct, CFG)

    assert seg.SeriesInstanceUID == ident.seg_series_uid and seg.SOPInstanceUID == ident.seg_instance_uid
    assert seg.SeriesNumber == 77 and seg.Manufacturer == "ACME AI"
    assert seg.SoftwareVersions == "9.9" and seg.ManufacturerModelName
    assert seg.SegmentationType == "BINARY"
    # The empty segment is dropped: two segments, numbered in output order.
    assert list(seg.get_segment_numbers()) == [1, 2]
    for number, segment in ((1, right), (2, left)):
        desc = seg.get_segment_description(number)
        assert desc.segment_label == segment.label
        assert desc.segmented_property_type.value == segment.type.value
        assert desc.segmented_property_category.value == segment.category.value
        assert desc.anatomic_regions[0].value == concept("lung").value
        algo = desc.algorithm_identification[0]
        assert algo.AlgorithmName == ALGORITHM.name and algo.AlgorithmVersion == ALGORITHM.version
        assert algo.AlgorithmFamilyCodeSequence[0].CodeValue == ALGORITHM.family.value

    # Frames = non-empty (slice, segment) pairs only.
    nonempty = sum(int(s.mask[z].any()) for s in (right, left) for z in range(ct.shape[0]))
    assert seg.NumberOfFrames == nonempty < ct.shape[0] * 2

    # OHIF needs the series-level and the per-frame source references.
    source_uids = _uids(ct)
    refd = seg.ReferencedSeriesSequence[0]
    assert refd.SeriesInstanceUID == ct.series_instance_uid
    assert {i.ReferencedSOPInstanceUID for i in refd.ReferencedInstanceSequence} == set(source_uids)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        src = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert src.ReferencedSOPInstanceUID in source_uids
        assert src.PurposeOfReferenceCodeSequence[0].CodeValue  # "Source image for image processing"

    # Masks come back voxel for voxel, looked up by source instance.
    pixels = seg.get_pixels_by_source_instance(source_uids, segment_numbers=[1, 2])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), right.mask)
    np.testing.assert_array_equal(pixels[..., 1].astype(bool), left.mask)


def test_sr_read_back_has_measurements_boxes_findings_and_answer(ct: Volume, written: dict) -> None:
    sr_path: Path = written["sr_path"]
    assert dciodvfy_errors(sr_path) == []
    sr = hd.sr.srread(sr_path)
    seg = written["datasets"][0]
    ident = identity_for(ct, CFG)
    assert isinstance(sr, hd.sr.Comprehensive3DSR)
    assert sr.SOPInstanceUID == ident.sr_instance_uid and sr.SeriesNumber == 78
    report = sr.content
    assert isinstance(report, hd.sr.MeasurementReport)

    device = report.get_observer_contexts(observer_type=pydicom.sr.codedict.codes.DCM.Device)
    assert device and device[0].observer_identifying_attributes.manufacturer_name == "ACME AI"

    volumetric = report.get_volumetric_roi_measurement_groups()
    assert len(volumetric) == 2
    right, _, left = written["outputs"][0].segments
    for group, number, segment in zip(volumetric, (1, 2), (right, left)):
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.referenced_segment_numbers == [number] or ref.referenced_segment_numbers == number
        assert group.finding_type.value == segment.type.value
        values = {m.name.value: (m.value, m.unit.value) for m in group.get_measurements()}
        for m in segment.measurements:
            value, unit_value = values[m.name.value]
            assert value == pytest.approx(m.value, rel=1e-6) and unit_value == m.unit.value
        assert values[concept("volume").value][1] == unit("mL").value

    # Every finding is drawn: the segments' outlines and the box as Cornerstone tools (TID 1501,
    # their numbers INFERRED FROM the region), the tool's labels and the answer on the whole image.
    planar = {g.tracking_identifier: g for g in report.get_planar_roi_measurement_groups()}
    assert sorted(planar) == ["BiomedClip", "MMedAgent answer"]
    drawn = {g.tracking_identifier: g for g in report.get_image_measurement_groups()}
    prefix = "Cornerstone3DTools@^0.1.0:"
    assert sorted(drawn) == [prefix + "PlanarFreehandROI:Left lung", prefix + "PlanarFreehandROI:Right lung",
                             prefix + "RectangleROI:nodule"]
    for group in volumetric:
        assert drawn[prefix + "PlanarFreehandROI:" + group.tracking_identifier].tracking_uid == group.tracking_uid
    # The box, on a CT with a Frame of Reference: SCOORD3D in patient mm, on slice 3's plane.
    ((region,),) = [m.referenced_coordinates for m in drawn[prefix + "RectangleROI:nodule"].get_measurements()]
    assert region.ValueType == "SCOORD3D" and region.ReferencedFrameOfReferenceUID == ct.datasets[0].FrameOfReferenceUID
    cols, rows = ct.shape[2], ct.shape[1]
    corners = np.array([[0.25 * cols, 0.25 * rows], [0.75 * cols, 0.25 * rows], [0.75 * cols, 0.5 * rows],
                        [0.25 * cols, 0.5 * rows], [0.25 * cols, 0.25 * rows]])
    _, dy, dx = ct.spacing
    expected = ct.positions[3] + (corners[:, :1] - 0.5) * dx * np.array([1.0, 0, 0]) \
        + (corners[:, 1:] - 0.5) * dy * np.array([0, 1.0, 0])  # axial: rows along +x, columns along +y
    np.testing.assert_allclose(region.value, expected)

    texts = {
        item.TextValue: item.ConceptNameCodeSequence[0].CodeValue
        for group in report.get_planar_roi_measurement_groups()
        for item in group[0].ContentSequence if item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS"
    }
    # Free text is named by role (codes.json text_roles); the answer as OHIF's displayed "Comment".
    assert texts[ANSWER] == text_role("answer").value == "121106"
    assert texts[INSTRUCTION] == text_role("instruction").value
    assert texts["chest CT (score 0.88)"] == text_role("label").value
    assert texts["Zero-shot classification: chest CT."] == text_role("tool_text").value

    evidence = {e.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for series in s.ReferencedSeriesSequence for e in series.ReferencedSOPSequence}
    assert set(_uids(ct)) | {seg.SOPInstanceUID} <= evidence


def test_rerun_gives_same_uids_and_new_instance_new_ones(ct: Volume, written: dict) -> None:
    outputs = written["outputs"]
    first = build_outputs(ct, outputs, ANSWER, CFG, INSTRUCTION, "rules")
    assert [d.SOPInstanceUID for d in first] == [d.SOPInstanceUID for d in written["datasets"]]
    fewer = dataclasses.replace(ct, pixels=ct.pixels[1:], positions=ct.positions[1:], datasets=ct.datasets[1:])
    moved = [dataclasses.replace(s, mask=s.mask[1:]) for s in outputs[0].segments]
    second = build_outputs(
        fewer, [dataclasses.replace(outputs[0], segments=moved)], ANSWER, CFG, INSTRUCTION, "rules"
    )
    assert {d.SOPInstanceUID for d in second}.isdisjoint(d.SOPInstanceUID for d in first)


def test_seg_is_none_without_masks_and_sr_still_valid(ct: Volume, tmp_path: Path) -> None:
    empty = Segment("none", concept("tissue"), concept("lung"), np.zeros(ct.shape, dtype=bool))
    ident = identity_for(ct, CFG)
    assert build_seg(ct, [empty], ALGORITHM, ident, CFG) == (None, [])
    outputs = [ToolOutput("ct lung segmentation", ALGORITHM, {}, segments=[empty])]
    (sr,) = build_outputs(ct, outputs, "No lungs found.", CFG, INSTRUCTION, "rules")
    sr.save_as(tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups() == []


def test_laterality_is_nested_in_the_type_and_headers_without_pixels_suffice(ct: Volume, tmp_path: Path) -> None:
    """A generic type + laterality encodes the laterality as a type modifier (CID 244); the SEG
    needs only the source headers (Volume.datasets may carry no pixel data)."""
    headers = []
    for ds in ct.datasets:
        copy = ds.copy()
        copy.pop("PixelData", None)  # the node's loader may already keep headers only
        headers.append(copy)
    bare = dataclasses.replace(ct, datasets=headers)
    mask = np.zeros(ct.shape, dtype=bool)
    mask[2:4, 4:10, 4:10] = True
    segment = Segment("Lung", concept("anatomical_structure"), concept("lung"), mask,
                      laterality=concept("left"))
    seg, _ = build_seg(bare, [segment], ALGORITHM, identity_for(ct, CFG), CFG)
    assert seg is not None
    seg.save_as(tmp_path / "seg.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    back = hd.seg.segread(tmp_path / "seg.dcm")
    # PS3.3 C.8.20.2: the modifier sits inside the Segmented Property Type item, not beside it.
    segment_item = back.SegmentSequence[0]
    assert "SegmentedPropertyTypeModifierCodeSequence" not in segment_item
    modifier = segment_item.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
    assert modifier.CodeValue == concept("left").value
    assert back.NumberOfFrames == 2


def test_build_sr_without_numbering_matches_build_outputs(ct: Volume, written: dict, tmp_path: Path) -> None:
    seg = written["datasets"][0]
    sr = build_sr(ct, written["outputs"], ANSWER, seg, identity_for(ct, CFG), CFG, INSTRUCTION, "rules")
    sr.save_as(tmp_path / "sr.dcm")
    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    assert [g.tracking_identifier for g in groups] == ["Right lung", "Left lung"]


def test_lung_phantom_masks_round_trip(tmp_path: Path) -> None:
    """The spine's case: the CT lung phantom (helper module testkit/phantoms.py), its true lung
    masks as the tool result, SEG + SR written and read back, volumes preserved."""
    truth = write_ct_phantom(tmp_path / "ct", slices=16, rows=48, cols=48)
    volume = load_volume(truth.files)
    segments = []
    for side, mask, ml in (("right", truth.right_mask, truth.right_lung_voxel_ml),
                           ("left", truth.left_mask, truth.left_lung_voxel_ml)):
        segments.append(Segment(
            label=f"{side.capitalize()} lung", category=concept("anatomical_structure"),
            type=concept(f"{side}_lung"), mask=mask, anatomic_region=concept("lung"),
            laterality=concept(side), measurements=[
                dataclasses.replace(_VOLUME, value=ml),
            ],
        ))
    outputs = [ToolOutput("ct lung segmentation", ALGORITHM, {}, segments=segments)]
    datasets = build_outputs(volume, outputs, "Both lungs segmented.", CFG, INSTRUCTION, "rules")
    for name, ds in zip(("seg.dcm", "sr.dcm"), datasets):
        ds.save_as(tmp_path / name)
        assert dciodvfy_errors(tmp_path / name) == []
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    pixels = seg.get_pixels_by_source_instance(_uids(volume), segment_numbers=[1, 2]).astype(bool)
    np.testing.assert_array_equal(pixels[..., 0], truth.right_mask)
    np.testing.assert_array_equal(pixels[..., 1], truth.left_mask)
    report = hd.sr.srread(tmp_path / "sr.dcm").content
    volumes = [g.get_measurements(name=coded(concept("volume")))[0].value
               for g in report.get_volumetric_roi_measurement_groups()]
    assert volumes == pytest.approx([truth.right_lung_voxel_ml, truth.left_lung_voxel_ml], rel=1e-6)


_VOLUME = Measurement(concept("volume"), 0.0, unit("mL"))


def test_non_ascii_answer_switches_output_to_utf8(tmp_path: Path) -> None:
    """A Latin-1 source and an answer/label outside its repertoire: both outputs declare UTF-8,
    keep the patient name and the text intact, and stay dciodvfy-clean."""
    volume = load_volume(write_ct_series(tmp_path / "ct", SpecificCharacterSet="ISO_IR 100",
                                         PatientName="Müller^Jürgen"))
    output = two_lung_output(volume)
    output.segments[0].label = "Rechte Lunge (ü)"
    answer = "Volumen ≥ 5 mL — 肺"
    for i, ds in enumerate(build_outputs(volume, [output], answer, CFG, "Segment – lungs", "rules")):
        ds.save_as(tmp_path / f"{i}.dcm")
        assert dciodvfy_errors(tmp_path / f"{i}.dcm") == []
        back = pydicom.dcmread(tmp_path / f"{i}.dcm")
        assert back.SpecificCharacterSet == "ISO_IR 192" and str(back.PatientName) == "Müller^Jürgen"
    assert hd.seg.segread(tmp_path / "0.dcm").get_segment_description(1).segment_label == "Rechte Lunge (ü)"
    report = hd.sr.srread(tmp_path / "1.dcm").content
    texts = [item.TextValue for group in report.get_planar_roi_measurement_groups()
             for item in group[0].ContentSequence if item.ValueType == "TEXT"]
    assert answer in texts


def test_ascii_outputs_keep_the_source_character_set(ct: Volume, written: dict) -> None:
    for ds in written["datasets"]:
        assert ds.get("SpecificCharacterSet") == ct.datasets[0].get("SpecificCharacterSet")


def test_box_on_a_volume_must_name_its_slice(ct: Volume) -> None:
    with pytest.raises(ValueError, match="slice_index"):
        build_outputs(ct, [detection_output(None)], "x", CFG, INSTRUCTION, "rules")
    with pytest.raises(ValueError, match="outside"):
        build_outputs(ct, [detection_output(ct.shape[0])], "x", CFG, INSTRUCTION, "rules")


def test_overlapping_segments_are_kept_apart(ct: Volume, tmp_path: Path) -> None:
    """Overlapping masks (a lesion inside an organ) cannot share a label map: each segment keeps
    its own frames and the SEG says SegmentsOverlap YES."""
    organ = np.zeros(ct.shape, dtype=bool)
    organ[2:6, 4:20, 4:20] = True
    lesion = np.zeros(ct.shape, dtype=bool)
    lesion[3:5, 8:12, 8:12] = True
    segments = [
        Segment("Organ", concept("anatomical_structure"), concept("lung"), organ),
        Segment("Lesion", concept("morphologically_abnormal_structure"),
                concept("morphologically_abnormal_structure"), lesion),
    ]
    seg, _ = build_seg(ct, segments, ALGORITHM, identity_for(ct, CFG), CFG)
    assert seg is not None
    seg.save_as(tmp_path / "seg.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == []
    back = hd.seg.segread(tmp_path / "seg.dcm")
    assert back.SegmentsOverlap == "YES" and back.NumberOfFrames == 4 + 2
    pixels = back.get_pixels_by_source_instance(_uids(ct), segment_numbers=[1, 2]).astype(bool)
    np.testing.assert_array_equal(pixels[..., 0], organ)
    np.testing.assert_array_equal(pixels[..., 1], lesion)
