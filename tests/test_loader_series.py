"""The DICOM loader on generated CT series: ordering, rescale, transfer syntaxes, geometry, refusals."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from image_model.geometry import slice_thicknesses
from image_model.loader import LoadError, load_series
from image_model.volume import Volume
from testkit.phantoms import LUNG_HU, write_ct_phantom
from tests.dicom_validate import dciodvfy_errors

SMALL: dict[str, Any] = {"slices": 12, "rows": 48, "cols": 48, "pixel_spacing": 6.0, "slice_spacing": 10.0}


def _lung_voxels(volume_pixels: np.ndarray) -> np.ndarray:
    # Lungs are the only -850 HU region; with noise, (-950, -700) isolates them from air and tissue.
    return (volume_pixels > -950) & (volume_pixels < -700)


def _along_normal(volume: Volume) -> np.ndarray:
    o = np.asarray(volume.orientation)
    return volume.positions @ np.cross(o[:3], o[3:])


@pytest.mark.parametrize(
    "order",
    [
        {},
        {"reverse_order": True},
        {"shuffle_files": True, "shuffle_instance_numbers": True},
        {"reverse_order": True, "shuffle_files": True, "shuffle_instance_numbers": True},
    ],
    ids=["superior-first", "inferior-first", "shuffled", "reversed-shuffled"],
)
def test_slices_sorted_by_position_not_number_or_name(tmp_path: Path, order: dict) -> None:
    truth = write_ct_phantom(tmp_path, noise_hu=0.0, trachea=False, **SMALL, **order)
    volume = load_series(tmp_path)
    assert volume.shape == (12, 48, 48)
    assert np.all(np.diff(_along_normal(volume)) > 0)
    assert truth.positions is not None and truth.left_mask is not None and truth.right_mask is not None
    np.testing.assert_allclose(volume.positions, truth.positions, atol=1e-3)
    lungs = _lung_voxels(volume.pixels)
    np.testing.assert_array_equal(lungs, truth.left_mask | truth.right_mask)
    # datasets follow slice order and carry headers only
    ds_z = [float(ds.ImagePositionPatient[2]) for ds in volume.datasets]
    assert ds_z == sorted(ds_z)
    assert all("PixelData" not in ds for ds in volume.datasets)
    assert volume.spacing == (10.0, 6.0, 6.0)
    assert volume.modality == "CT"
    assert volume.meta["window_center"] == -600.0


@pytest.mark.parametrize(
    ("slope", "intercept"), [(1.0, -1024.0), (0.5, -1000.0), (1.0, 0.0), (2.0, -2048.0)]
)
def test_rescale_gives_hounsfield_units(tmp_path: Path, slope: float, intercept: float) -> None:
    write_ct_phantom(tmp_path, noise_hu=0.0, rescale_slope=slope, rescale_intercept=intercept, **SMALL)
    volume = load_series(tmp_path)
    # int16 when every modality value is an integer in its range (half of float32), else float32
    assert volume.pixels.dtype == (np.float32 if slope == 0.5 else np.int16)
    values = set(np.unique(volume.pixels).tolist())
    assert {-1000.0, 40.0, LUNG_HU} <= values
    signed = pydicom.dcmread(next(tmp_path.iterdir())).PixelRepresentation
    assert signed == (1 if intercept == 0.0 else 0)


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless, JPEGLSLossless])
def test_transfer_syntaxes_decode_identically(tmp_path: Path, syntax: str) -> None:
    write_ct_phantom(tmp_path / "plain", seed=3, **SMALL)
    write_ct_phantom(tmp_path / "coded", seed=3, transfer_syntax=syntax, **SMALL)
    assert str(pydicom.dcmread(next((tmp_path / "coded").iterdir())).file_meta.TransferSyntaxUID) == syntax
    np.testing.assert_array_equal(load_series(tmp_path / "plain").pixels, load_series(tmp_path / "coded").pixels)


def test_phantom_files_conform_to_ct_image_iod(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    for path in (truth.files[0], truth.files[-1]):
        assert dciodvfy_errors(path) == []


def test_duplicate_sop_instances_dropped(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    shutil.copy(truth.files[3], tmp_path / "again.dcm")
    shutil.copy(truth.files[5], tmp_path / "again2.dcm")
    volume = load_series(tmp_path)
    assert volume.shape[0] == 12
    assert volume.meta["duplicates_dropped"] == 2


def test_list_of_files_and_unreadable_file(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    junk = tmp_path / "notes.txt"
    junk.write_text("not DICOM")
    volume = load_series([*truth.files[:6], junk])
    assert volume.shape[0] == 6
    assert len(volume.meta["skipped_files"]) == 1


def test_missing_pixel_data_refused(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    for path in truth.files:
        ds = pydicom.dcmread(path)
        del ds.PixelData
        ds.save_as(path)
    with pytest.raises(LoadError, match="no pixel data"):
        load_series(tmp_path)


def test_one_instance_without_pixels_is_dropped(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    ds = pydicom.dcmread(truth.files[0])
    del ds.PixelData
    ds.save_as(truth.files[0])
    volume = load_series(tmp_path)
    assert volume.shape[0] == 11
    assert any("without pixel data" in n for n in volume.meta["notes"])


def _edit(path: Path, **changes: object) -> None:
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, "different orientations"),
        ({"FrameOfReferenceUID": generate_uid()}, "frames of reference"),
        ({"SeriesInstanceUID": generate_uid()}, "different series"),
        ({"ImagePositionPatient": None}, "lack ImagePositionPatient"),
        ({"PixelSpacing": [1.0, 1.0]}, "pixel spacing"),
    ],
    ids=["orientation", "frame-of-reference", "series", "position", "pixel-spacing"],
)
def test_inconsistent_series_refused(tmp_path: Path, changes: dict, reason: str) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    _edit(truth.files[4], **changes)
    with pytest.raises(LoadError, match=reason):
        load_series(tmp_path)


def test_mixed_sizes_refused(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path, **SMALL)
    other = write_ct_phantom(tmp_path / "big", **{**SMALL, "rows": 64, "cols": 64})
    target = tmp_path / "x.dcm"
    ds = pydicom.dcmread(other.files[0])
    ds.SeriesInstanceUID = pydicom.dcmread(next(tmp_path.glob("IM*.dcm"))).SeriesInstanceUID
    ds.FrameOfReferenceUID = pydicom.dcmread(next(tmp_path.glob("IM*.dcm"))).FrameOfReferenceUID
    ds.SOPInstanceUID = generate_uid()  # same seed -> same UIDs: make it a new instance
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    shutil.rmtree(tmp_path / "big")
    ds.save_as(target)
    with pytest.raises(LoadError, match="differ in size"):
        load_series(tmp_path)


def test_two_slices_at_one_position_refused(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    ds = pydicom.dcmread(truth.files[2])
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "phase2.dcm")
    with pytest.raises(LoadError, match="share a position"):
        load_series(tmp_path)


def test_positions_off_one_line_refused(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    ds = pydicom.dcmread(truth.files[6])
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [x + 5.0, y, z]
    ds.save_as(truth.files[6])
    with pytest.raises(LoadError, match="one line"):
        load_series(tmp_path)


def test_localizer_in_series_dropped(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    ds = pydicom.dcmread(truth.files[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(tmp_path / "scout.dcm")
    volume = load_series(tmp_path)
    assert volume.shape[0] == 12
    assert any("localizer" in note for note in volume.meta["notes"])


def test_uneven_spacing_recorded_and_thickness_keeps_volume(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path, drop_slices=[5], **SMALL)
    volume = load_series(tmp_path)
    assert volume.meta["uneven_spacing"] is True
    assert sorted(set(volume.meta["slice_gaps_mm"])) == [10.0, 20.0]
    assert volume.spacing[0] == pytest.approx(110.0 / 10)
    thickness = slice_thicknesses(volume.positions, np.asarray(volume.orientation), volume.spacing[0])
    assert thickness.sum() == pytest.approx(10.0 * 12)  # the series still spans 12 slabs
    assert thickness[4] == thickness[5] == 15.0


def test_even_spacing_not_flagged(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path, **SMALL)
    assert "uneven_spacing" not in load_series(tmp_path).meta


def test_gantry_tilt_spacing_along_normal(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path, gantry_tilt_deg=20.0, **SMALL)
    volume = load_series(tmp_path)
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(20.0, abs=0.01)
    assert volume.spacing[0] == pytest.approx(10.0 * np.cos(np.radians(20.0)), rel=1e-4)


def test_headers_build_a_highdicom_seg(tmp_path: Path) -> None:
    """Datasets without pixel data are enough for highdicom to build a SEG referencing them."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    truth = write_ct_phantom(tmp_path, **SMALL)
    volume = load_series(tmp_path)
    assert truth.left_mask is not None
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="Left lung",
        segmented_property_category=codes.SCT.Organ,
        segmented_property_type=codes.SCT.Lung,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="test", version="1", family=codes.cid7162.MorphologicalOperations
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=volume.datasets,
        pixel_array=truth.left_mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=hd.UID(),
        series_number=99,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    nonempty = int(truth.left_mask.any(axis=(1, 2)).sum())
    assert seg.NumberOfFrames == nonempty
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in volume.datasets}


def test_colour_slices_become_bt601_luminance(tmp_path: Path) -> None:
    """An RGB series (secondary capture of a screen, a photo) is loaded as one luminance plane
    per slice (ITU-R BT.601 weights)."""
    write_ct_phantom(tmp_path, slices=2, rows=16, cols=16)
    rng = np.random.default_rng(3)
    expected = []
    for path in sorted(tmp_path.glob("*.dcm")):
        ds = pydicom.dcmread(path)
        rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated = ds.BitsStored = 8
        ds.HighBit, ds.PixelRepresentation = 7, 0
        for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "WindowCenter", "WindowWidth"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.PixelData = rgb.tobytes()
        ds.save_as(path)
        expected.append((float(ds.ImagePositionPatient[2]), rgb.astype(np.float64) @ [0.299, 0.587, 0.114]))
    vol = load_series(tmp_path)
    want = np.stack([plane for _, plane in sorted(expected)])
    assert vol.pixels.shape == want.shape
    np.testing.assert_allclose(np.asarray(vol.pixels, dtype=np.float64), want, atol=1e-3)


@pytest.mark.parametrize(("dtype", "slope", "intercept"), [
    (np.uint16, 1.0, -32768.0),  # stored values past int16's range, result inside it
    (np.uint16, 1.0, -1024.0), (np.int16, 2.0, -2048.0), (np.int32, 3.0, -70000.0), (np.uint8, 1.0, 40000.0),
])
def test_int16_modality_values_are_exact_or_refused(dtype: Any, slope: float, intercept: float) -> None:
    """int16 modality values are computed without a wider copy: exact whenever every result lies
    in int16's range, and not used (None: float32 instead) otherwise."""
    from image_model.loader import _int16_values

    info = np.iinfo(dtype)
    stored = np.random.default_rng(1).integers(max(info.min, -5000), min(info.max, 65000), (32, 32),
                                               dtype=dtype, endpoint=True)
    exact = stored.astype(np.int64) * int(slope) + int(intercept)
    values = _int16_values(stored, slope, intercept)
    if exact.min() < -32768 or exact.max() > 32767:
        assert values is None
    else:
        assert values is not None and values.dtype == np.int16
        assert np.array_equal(values.astype(np.int64), exact)
