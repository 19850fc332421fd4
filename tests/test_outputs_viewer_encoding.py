"""What viewers need from our SEG and SR, checked on the objects as written (issue 13, encoders):
read back with highdicom/pydicom, validated by dciodvfy (no error, no warning of our own) and
round-tripped through dcmqi (3D Slicer's converter). Sources: the CT lung phantom through the real
lung tool, pydicom-data's Enhanced CT, its chest CR (Pixel Spacing 0\\0) and the same CR carrying
Imager Pixel Spacing as a DX would."""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage

from config.schema import OutputConfig
from image_model.codes import concept, segment_codes, text_role, unit
from image_model.findings import AlgorithmInfo, Box, LabelScore, ToolOutput
from image_model.loader import load_series
from image_model.measure import mask_size
from image_model.volume import Volume
from sr_templates.outputs import build_outputs
from sr_templates.seg.palette import colours_for
from sr_templates.source import assumed_plane_frame_of_reference
from sr_templates.sr.outline import outline, polygon_area
from testkit.phantoms import write_ct_phantom
from tests.dicom_validate import dciodvfy_errors, dciodvfy_own_warnings
from tests.outputs_helpers import CORNERSTONE_PREFIX, drawn_findings
from tools.ct_lung import CTLungSegmentation

CFG = OutputConfig(seg_series_number=61, sr_series_number=62, manufacturer="test", pipeline_version="1.0")
AI = AlgorithmInfo("test model", "0.1", concept("artificial_intelligence"))
IMAGER_SPACING = (0.143, 0.139)
#: Concept names of the Image Library (DCM 111028) and its groups (DCM 126200).
IMAGE_LIBRARY, IMAGE_LIBRARY_GROUP = "111028", "126200"


@dataclass
class Written:
    volume: Volume
    source: Path
    outputs: list[ToolOutput]
    seg: Path
    sr: Path


def _write(volume: Volume, source: Path, outputs: list[ToolOutput], folder: Path) -> Written:
    folder.mkdir(parents=True, exist_ok=True)
    seg, sr = build_outputs(volume, outputs, "Done.", CFG, "Find and measure.", "rules")
    seg.save_as(folder / "seg.dcm")
    sr.save_as(folder / "sr.dcm")
    return Written(volume, source, outputs, folder / "seg.dcm", folder / "sr.dcm")


def _every_kind(volume: Volume, label: str, box_slice: int | None) -> list[ToolOutput]:
    """One output of each kind the tools produce: a coded mask with its size (MedSAM, organ 3d),
    a box (grounding), labels and text (classification, report, retrieval)."""
    mask = np.zeros(volume.shape, dtype=bool)
    z = box_slice or 0
    _, rows, cols = volume.shape
    mask[z, rows // 4 : rows // 2, cols // 3 : cols // 2] = True
    mask[z, rows // 3, cols // 3 - 2 : cols // 3] = True  # a second piece, off the main one
    segment = segment_codes(label).segment(label, mask, [mask_size(mask, volume)])
    return [
        ToolOutput("MedSAM", AI, {}, segments=[segment]),
        ToolOutput("grounding dino", AI, {}, boxes=[Box("nodule", 0.8, (0.1, 0.2, 0.3, 0.35), box_slice)]),
        ToolOutput("BiomedClip", AI, {}, labels=[LabelScore("chest X-ray", 0.9)], text="A chest image."),
    ]


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Written:
    root = tmp_path_factory.mktemp("ct")
    write_ct_phantom(root / "in", slices=16, rows=64, cols=64)
    volume = load_series(root / "in")
    lungs = CTLungSegmentation().run(volume, {"image": "<imagepath>"})
    boxes = ToolOutput("grounding dino", AI, {}, boxes=[Box("nodule", 0.9, (0.25, 0.25, 0.5, 0.5), 5)])
    return _write(volume, next((root / "in").iterdir()), [lungs, boxes], root / "out")


@pytest.fixture(scope="module")
def enhanced_ct(tmp_path_factory: pytest.TempPathFactory) -> Written:
    source = Path(get_testdata_file("eCT_Supplemental.dcm"))
    volume = load_series([source])
    return _write(volume, source, _every_kind(volume, "liver lesion", 1), tmp_path_factory.mktemp("ect"))


@pytest.fixture(scope="module")
def cr(tmp_path_factory: pytest.TempPathFactory) -> Written:
    source = Path(get_testdata_file("RG1_UNCI.dcm"))
    volume = load_series([source])
    return _write(volume, source, _every_kind(volume, "right lung", None), tmp_path_factory.mktemp("cr"))


@pytest.fixture(scope="module")
def dx(tmp_path_factory: pytest.TempPathFactory) -> Written:
    """The chest CR as a detector image states its size: Imager Pixel Spacing, no Pixel Spacing."""
    root = tmp_path_factory.mktemp("dx")
    ds = pydicom.dcmread(get_testdata_file("RG1_UNCI.dcm"))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = list(IMAGER_SPACING)
    ds.save_as(root / "dx.dcm")
    volume = load_series([root / "dx.dcm"])
    return _write(volume, root / "dx.dcm", _every_kind(volume, "left lung", None), root / "out")


SOURCES = ("ct", "enhanced_ct", "cr", "dx")


@pytest.mark.parametrize("name", SOURCES)
def test_dciodvfy_no_error_and_no_warning_of_our_own(name: str, request: pytest.FixtureRequest) -> None:
    written: Written = request.getfixturevalue(name)
    for path in (written.seg, written.sr):
        assert dciodvfy_errors(path) == [], path.name
        assert dciodvfy_own_warnings(path, written.source) == [], path.name


def test_laterality_nested_in_the_type_and_colours_by_code(ct: Written, tmp_path: Path) -> None:
    seg = hd.seg.segread(ct.seg)
    items = {str(item.SegmentLabel): item for item in seg.SegmentSequence}
    assert sorted(items) == ["Left lung", "Right lung"]
    colours = {}
    for label, item in items.items():
        assert "SegmentedPropertyTypeModifierCodeSequence" not in item  # not at segment level
        type_item = item.SegmentedPropertyTypeCodeSequence[0]
        assert type_item.CodeMeaning == "Lung"
        (side,) = type_item.SegmentedPropertyTypeModifierCodeSequence
        assert side.CodeValue == concept(label.split()[0].lower()).value
        colours[label] = tuple(item.RecommendedDisplayCIELabValue)
    assert colours["Left lung"] != colours["Right lung"]
    # The same organ gets the same colour in another study (another phantom, other UIDs).
    other = tmp_path / "other"
    write_ct_phantom(other, slices=12, rows=64, cols=64, seed=3)
    volume = load_series(other)
    (seg_again, _) = build_outputs(volume, [CTLungSegmentation().run(volume, {})], "x", CFG, "y", "rules")
    again = {str(i.SegmentLabel): tuple(i.RecommendedDisplayCIELabValue) for i in seg_again.SegmentSequence}
    assert seg_again.StudyInstanceUID != seg.StudyInstanceUID and again == colours


def test_abnormality_side_is_nested_in_its_region(enhanced_ct: Written) -> None:
    item = hd.seg.segread(enhanced_ct.seg).SegmentSequence[0]
    assert item.SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Lesion"
    assert "SegmentedPropertyTypeModifierCodeSequence" not in item.SegmentedPropertyTypeCodeSequence[0]
    assert item.AnatomicRegionSequence[0].CodeMeaning == "Liver"


def test_overlay_colours_are_the_seg_colours(ct: Written) -> None:
    from sr_templates.outputs import build_overlays

    segments = ct.outputs[0].segments
    expected = [c.rgb for c in colours_for(segments)]
    seg = hd.seg.segread(ct.seg)
    written = [hd.color.CIELabColor.from_dicom_value(tuple(i.RecommendedDisplayCIELabValue)).to_rgb()
               for i in seg.SegmentSequence]
    assert written == expected
    overlay = build_overlays(ct.volume, ct.outputs, CFG)[0]
    pixels = overlay.pixel_array.reshape(-1, 3)
    assert any(tuple(int(v) for v in p) in set(expected) for p in pixels)  # outlines drawn in SEG colours


@pytest.mark.parametrize("name,spacing", [("cr", (1.0, 1.0)), ("dx", IMAGER_SPACING)])
def test_2d_seg_lies_on_the_assumed_image_plane(name: str, spacing: tuple[float, float],
                                               request: pytest.FixtureRequest) -> None:
    """A projection image's SEG: its own Frame of Reference (derived from the source series, not
    the source's), rows along x and columns along y, every frame at the origin, the pixel size
    the source states; the real alignment is the per-frame reference to the source image."""
    written: Written = request.getfixturevalue(name)
    seg = hd.seg.segread(written.seg)
    source = pydicom.dcmread(written.source, stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == assumed_plane_frame_of_reference(written.volume)
    assert seg.FrameOfReferenceUID != source.get("FrameOfReferenceUID")
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == pytest.approx(spacing)
    for frame in seg.PerFrameFunctionalGroupsSequence:
        assert [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient] == [0, 0, 0]
        (derivation,) = frame.DerivationImageSequence
        assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    # The CR states no spacing: the SEG says its 1 mm is assumed.
    assert ("assumed" in seg.ContentDescription) == (name == "cr")


@pytest.mark.parametrize("name", ["cr", "dx"])
def test_odd_packed_length_is_fractional_with_a_null_pad(name: str, request: pytest.FixtureRequest) -> None:
    """1955 x 1841 pixels pack to an odd number of bytes: the SEG is FRACTIONAL (OCCUPANCY, 0/1),
    its odd Pixel Data padded with a NULL byte (PS3.5 7.1.1), its pixels the mask's."""
    written: Written = request.getfixturevalue(name)
    seg = hd.seg.segread(written.seg)
    assert seg.SegmentationType == "FRACTIONAL" and seg.SegmentationFractionalType == "OCCUPANCY"
    assert int(seg.MaximumFractionalValue) == 1 and seg.BitsAllocated == 8
    assert len(seg.PixelData) % 2 == 0 and seg.PixelData[-1:] == b"\x00"
    mask = written.outputs[0].segments[0].mask
    pixels = seg.get_pixels_by_source_instance([str(written.volume.datasets[0].SOPInstanceUID)], segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0], mask)


def test_even_packed_length_stays_binary(ct: Written) -> None:
    assert hd.seg.segread(ct.seg).SegmentationType == "BINARY"


def _library_uids(sr: hd.sr.Comprehensive3DSR) -> list[str]:
    (library,) = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == IMAGE_LIBRARY]
    return [
        str(image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
        for group in library.ContentSequence if group.ConceptNameCodeSequence[0].CodeValue == IMAGE_LIBRARY_GROUP
        for image in group.ContentSequence if image.ValueType == "IMAGE"
    ]


def _region_uids(sr: hd.sr.Comprehensive3DSR, volume: Volume) -> set[str]:
    """The source images the report's regions lie on (SCOORD: referenced; SCOORD3D: by plane)."""
    uids = set()
    normal = np.cross(volume.orientation[:3], volume.orientation[3:])
    for _, region in drawn_findings(sr.content).values():
        if region.ValueType == "SCOORD":
            uids.add(str(region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID))
        else:
            z = int(np.argmin(np.abs(volume.positions @ normal - region.value[0] @ normal)))
            uids.add(str((volume.datasets[0] if volume.frame_numbers else volume.datasets[z]).SOPInstanceUID))
    return uids


@pytest.mark.parametrize("name", SOURCES)
def test_sr_has_an_image_library_of_the_images_it_draws_on(name: str, request: pytest.FixtureRequest) -> None:
    written: Written = request.getfixturevalue(name)
    sr = hd.sr.srread(written.sr)
    library = _library_uids(sr)
    assert len(library) == len(set(library)) and set(library) == _region_uids(sr, written.volume)
    assert set(library) <= {str(ds.SOPInstanceUID) for ds in written.volume.datasets}


def _comments(group: hd.sr.MeasurementsAndQualitativeEvaluations) -> list[str]:
    """The group's Comment (DCM 121106) TEXT items, in order."""
    return [str(i.TextValue) for i in group[0].ContentSequence
            if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == text_role("summary").value]


def test_every_segment_is_drawn_on_its_largest_slice(ct: Written) -> None:
    """Each TID 1411 group (the segment reference and its numbers) has a TID 1501 twin with the
    same tracking UID, drawn as Cornerstone's PlanarFreehandROI: its Area (and the statistics of
    the pixels inside) INFERRED FROM a SCOORD outlining the segment on its largest slice, its
    first Comment naming the segment's values."""
    report = hd.sr.srread(ct.sr).content
    drawn = drawn_findings(report)
    segments = {s.label: s for s in ct.outputs[0].segments}
    for group in report.get_volumetric_roi_measurement_groups():
        twin, _ = drawn[group.tracking_identifier]
        assert twin.tracking_identifier == CORNERSTONE_PREFIX + "PlanarFreehandROI:" + group.tracking_identifier
        assert twin.tracking_uid == group.tracking_uid
        segment = segments[group.tracking_identifier]
        mask = segment.mask
        z = int(np.argmax(mask.reshape(len(mask), -1).sum(axis=1)))
        area, *inside = twin.get_measurements()
        (region,) = area.referenced_coordinates
        assert area.name.meaning == "Area" and region.ValueType == "SCOORD" and region.GraphicType == "POLYLINE"
        assert region.RelationshipType == "INFERRED FROM"
        assert all(m.referenced_coordinates == [region] for m in inside)
        ref = region.ContentSequence[0].ReferencedSOPSequence[0]
        assert ref.ReferencedSOPInstanceUID == ct.volume.datasets[z].SOPInstanceUID
        points = region.value
        np.testing.assert_array_equal(points, outline(mask[z]))
        # The outline encloses exactly the slice's largest piece of the mask, holes filled.
        labels, _ = ndimage.label(mask[z])
        largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
        filled = ndimage.binary_fill_holes(largest)
        assert polygon_area(points) == filled.sum()
        # The pixel values inside the outline, as a viewer measures the drawn region (in HU).
        hu = ct.volume.pixels[z][filled]
        assert {m.name.meaning: m.value for m in inside} == pytest.approx(
            {"Mean": hu.mean(), "Standard Deviation": hu.std(), "Minimum": hu.min(), "Maximum": hu.max()})
        assert {m.unit.value for m in inside} == {unit("HU").value}
        _, dy, dx = ct.volume.spacing
        assert area.value == pytest.approx(polygon_area(points) * dy * dx) and area.unit.value == "mm2"
        volume_ml = segment.measurements[0].value
        assert _comments(twin)[0] == f"{segment.label}: Volume {volume_ml:.6g} mL; " \
            f"Mean {segment.measurements[1].value:.6g} Hounsfield unit"


@pytest.mark.parametrize(
    "name,area_unit,note",
    [("ct", "mm2", None), ("cr", "{pixels}", "pixel spacing unknown"), ("dx", "mm2", "Imager Pixel Spacing")],
)
def test_units_are_physical_only_when_the_spacing_is_known(
    name: str, area_unit: str, note: str | None, request: pytest.FixtureRequest
) -> None:
    written: Written = request.getfixturevalue(name)
    report = hd.sr.srread(written.sr).content
    box, _ = drawn_findings(report)["nodule"]
    (area,) = box.get_measurements()
    assert area.unit.value == area_unit
    comments = _comments(box)
    assert comments[0].startswith("nodule (score 0.") and area_unit.strip("{}") in comments[0]
    assert any(note in c for c in comments) if note else not any("spacing" in c for c in comments)
    if name != "ct":
        (volumetric,) = report.get_volumetric_roi_measurement_groups()
        (size,) = volumetric.get_measurements()
        assert size.name.value == concept("area").value
        assert size.unit.value == (unit("pixels") if name == "cr" else unit("mm2")).value


def test_boxes_in_patient_coordinates_where_there_is_a_frame_of_reference(ct: Written, cr: Written) -> None:
    ct_box, region = drawn_findings(hd.sr.srread(ct.sr).content)["nodule"]
    assert ct_box.tracking_identifier == CORNERSTONE_PREFIX + "RectangleROI:nodule"
    assert region.ValueType == "SCOORD3D"
    assert region.ReferencedFrameOfReferenceUID == ct.volume.datasets[0].FrameOfReferenceUID
    np.testing.assert_allclose(region.value[:, 2], ct.volume.positions[5][2])  # on slice 5's plane (axial)
    assert ct_box.finding_type.meaning == "Nodule"
    _, cr_region = drawn_findings(hd.sr.srread(cr.sr).content)["nodule"]
    assert cr_region.ValueType == "SCOORD"


def _dcmqi(tool: str, *args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which(tool)
    assert exe, f"{tool} (PyPI dcmqi) is not installed"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, check=False)


def test_dcmqi_reads_sides_colours_and_measurements(ct: Written, tmp_path: Path) -> None:
    """3D Slicer's converter: laterality from the modifier nested in the type, colours from
    Recommended Display CIELab Value, and the SR's volumes by segment."""
    proc = _dcmqi("segimage2itkimage", "--inputDICOM", str(ct.seg), "--outputDirectory", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    meta = json.loads((tmp_path / "meta.json").read_text())
    read = {s[0]["SegmentLabel"]: s[0] for s in meta["segmentAttributes"]}
    expected = dict(zip((s.label for s in ct.outputs[0].segments), colours_for(ct.outputs[0].segments)))
    for label, attrs in read.items():
        assert attrs["SegmentedPropertyTypeModifierCodeSequence"]["CodeMeaning"] == label.split()[0]
        assert np.allclose(attrs["recommendedDisplayRGBValue"], expected[label].rgb, atol=1)
    proc = _dcmqi("tid1500reader", "--inputDICOM", str(ct.sr), "--outputMetadata", str(tmp_path / "sr.json"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    groups = json.loads((tmp_path / "sr.json").read_text())["Measurements"]
    volumes = {g["TrackingIdentifier"]: float(i["value"]) for g in groups if "ReferencedSegment" in g
               for i in g["measurementItems"] if i["quantity"]["CodeMeaning"] == "Volume"}
    truth = {s.label: s.measurements[0].value for s in ct.outputs[0].segments}
    assert volumes == pytest.approx(truth, rel=1e-6)
    sides = {g["TrackingIdentifier"].rpartition(":")[2]: g["Laterality"]["CodeMeaning"] for g in groups
             if "Laterality" in g}
    assert sides == {"Left lung": "Left", "Right lung": "Right"}


def test_a_report_without_regions_still_has_a_library(ct: Written, tmp_path: Path) -> None:
    labels = ToolOutput("BiomedClip", AI, {}, labels=[LabelScore("chest CT", 0.9)])
    (sr,) = build_outputs(ct.volume, [labels], "A chest CT.", CFG, "What is this?", "rules")
    sr.save_as(tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    # The key slice of a report without regions is the series' middle slice.
    middle = ct.volume.datasets[ct.volume.shape[0] // 2]
    assert _library_uids(hd.sr.srread(tmp_path / "sr.dcm")) == [str(middle.SOPInstanceUID)]
