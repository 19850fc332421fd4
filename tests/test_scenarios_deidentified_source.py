"""End-user scenario: a de-identified source (Patient Identity Removed = YES) that does not say
how it was de-identified, as pydicom-data's real CT slice ``693_UNCI.dcm`` (CQ500). highdicom
copies the flag into the SEG, SR and overlays, where it makes De-identification Method a Type 1C
requirement (PS3.3 C.7.1.1): the outputs must still pass dciodvfy with zero errors."""
from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from config.schema import OutputConfig
from sr_templates.outputs import build_outputs, build_overlays
from sr_templates.source import UNSTATED_DEIDENTIFICATION
from tests.dicom_validate import dciodvfy_errors
from tests.outputs_helpers import classification_output, load_volume, two_lung_output, write_ct_series

CFG = OutputConfig(seg_series_number=77, sr_series_number=78, pipeline_version="9.9")
METHOD_ERRORS = ("DeidentificationMethod",)


def _method_errors(path: Path) -> list[str]:
    return [e for e in dciodvfy_errors(path) if any(k in e for k in METHOD_ERRORS)]


def test_real_deidentified_slice_sr_has_no_method_error(tmp_path: Path) -> None:
    source = Path(get_testdata_file("693_UNCI.dcm"))
    assert pydicom.dcmread(source, stop_before_pixels=True).PatientIdentityRemoved == "YES"
    volume = load_volume([source])
    (sr,) = build_outputs(volume, [classification_output()], "A CT slice.", CFG, "What is this?", "rules")
    path = tmp_path / "sr.dcm"
    sr.save_as(path)
    # The source itself lacks FrameOfReferenceUID and Laterality; none of that reaches an SR.
    assert dciodvfy_errors(path) == []
    assert pydicom.dcmread(path).PatientIdentityRemoved == "YES"  # the flag is kept, not dropped


def test_seg_sr_overlay_of_a_deidentified_series(tmp_path: Path) -> None:
    volume = load_volume(write_ct_series(tmp_path / "ct", PatientIdentityRemoved="YES"))
    outputs = [two_lung_output(volume)]
    seg, sr = build_outputs(volume, outputs, "Both lungs.", CFG, "Segment the lungs.", "rules")
    overlay = build_overlays(volume, outputs, CFG)[0]
    for name, ds in (("seg", seg), ("sr", sr), ("overlay", overlay)):
        path = tmp_path / f"{name}.dcm"
        ds.save_as(path)
        assert dciodvfy_errors(path) == [], name
        back = pydicom.dcmread(path)
        # Stated by the object as highdicom built it (from a completed copy of the source header);
        # highdicom's SC copies neither the flag nor the method.
        if name != "overlay":
            assert (back.PatientIdentityRemoved, back.DeidentificationMethod) == ("YES", UNSTATED_DEIDENTIFICATION)
    assert all("DeidentificationMethod" not in ds for ds in volume.datasets)  # the source is untouched


def test_a_stated_method_is_copied_as_it_is(tmp_path: Path) -> None:
    volume = load_volume(write_ct_series(
        tmp_path / "ct", PatientIdentityRemoved="YES", DeidentificationMethod="Basic Profile"))
    for ds in build_outputs(volume, [two_lung_output(volume)], "x", CFG, "y", "rules"):
        assert ds.DeidentificationMethod == "Basic Profile", ds.Modality
