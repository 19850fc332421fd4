"""The DICOM loader on real files from pydicom-data: enhanced CT/MR, JPEG 2000, CR, single CT slice."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from image_model.loader import LoadError, load_series


def _file(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom-data lacks {name}")
    return Path(path)


def test_enhanced_ct_frames_ordered_along_normal() -> None:
    volume = load_series(_file("eCT_Supplemental.dcm"))
    assert volume.shape == (2, 512, 512)
    assert volume.modality == "CT"
    assert len(volume.datasets) == 1 and "PixelData" not in volume.datasets[0]
    # Orientation (-1,0,0,0,1,0): the normal is -z, so ascending along it means descending z.
    assert volume.orientation == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    assert volume.positions[:, 2].tolist() == [-149.0, -159.0]
    assert volume.frame_numbers == [2, 1]
    assert (volume.meta["window_center"], volume.meta["window_width"]) == (49.0, 102.0)  # Frame VOI LUT
    assert volume.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    # Per-frame Pixel Value Transformation (intercept -1024) applied: air reads about -1024 HU.
    assert volume.pixels.min() == pytest.approx(-1024.0)
    raw = pydicom.dcmread(_file("eCT_Supplemental.dcm")).pixel_array
    np.testing.assert_array_equal(volume.pixels[0], raw[1].astype(np.float32) - 1024.0)


def test_enhanced_mr_without_plane_positions_is_flagged() -> None:
    volume = load_series(_file("emri_small.dcm"))
    assert volume.shape == (10, 64, 64)
    assert volume.modality == "MR"
    assert volume.frame_numbers == list(range(1, 11))
    assert "geometry" in volume.meta
    raw = pydicom.dcmread(_file("emri_small.dcm")).pixel_array
    np.testing.assert_array_equal(volume.pixels, raw.astype(np.float32))


def test_jpeg2000_cr_decodes_to_the_uncompressed_pixels() -> None:
    compressed = load_series(_file("RG1_J2KR.dcm"))
    reference = load_series(_file("RG1_UNCR.dcm"))
    assert compressed.shape == (1, 1955, 1841)
    np.testing.assert_array_equal(compressed.pixels, reference.pixels)


def test_cr_loads_as_one_slice_with_monochrome1_flag() -> None:
    volume = load_series(_file("RG1_UNCI.dcm"))
    assert volume.shape == (1, 1955, 1841)
    assert volume.modality == "CR"
    assert not volume.is_3d
    assert volume.meta["monochrome1"] is True
    assert "pixel_spacing_source" in volume.meta  # ImagerPixelSpacing is 0 here: spacing assumed
    assert volume.pixels.max() > volume.pixels.min()


def test_single_ct_slice_in_hounsfield_units() -> None:
    volume = load_series(_file("693_UNCI.dcm"))
    assert volume.shape == (1, 512, 512)
    assert volume.spacing == pytest.approx((5.0, 0.478516, 0.478516))
    assert volume.meta["pixel_padding_value"] == -2000
    raw = pydicom.dcmread(_file("693_UNCI.dcm")).pixel_array  # signed 14-bit, intercept -1024
    np.testing.assert_array_equal(volume.pixels[0], raw.astype(np.float32) - 1024.0)


def test_non_image_instance_refused(tmp_path: Path) -> None:
    ds = pydicom.dcmread(_file("RG1_UNCI.dcm"))
    del ds.PixelData
    path = tmp_path / "noimage.dcm"
    ds.save_as(path)
    with pytest.raises(LoadError, match="no pixel data"):
        load_series(path)


def test_nothing_readable_refused(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("hello")
    with pytest.raises(LoadError, match="no readable DICOM"):
        load_series(tmp_path)
    with pytest.raises(LoadError, match="does not exist"):
        load_series(tmp_path / "missing")


def test_enhanced_ct_headers_build_a_seg_referencing_frames() -> None:
    """Pixel data is dropped from the kept header; highdicom still builds a SEG whose frame
    references follow ``frame_numbers`` (slice 0 of the volume is source frame 2 here)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    volume = load_series(_file("eCT_Supplemental.dcm"))
    mask = np.zeros(volume.shape, dtype=bool)
    mask[0, 100:200, 100:200] = True
    by_frame = np.zeros_like(mask)
    by_frame[np.asarray(volume.frame_numbers) - 1] = mask
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="region",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="test", version="1", family=codes.cid7162.MorphologicalOperations
        ),
    )
    seg = hd.seg.Segmentation(
        source_images=volume.datasets,
        pixel_array=by_frame,
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
    assert seg.NumberOfFrames == 1
    source = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert int(source.ReferencedFrameNumber) == volume.frame_numbers[0] == 2
