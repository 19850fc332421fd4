"""CT lung segmentation refuses, with a reason, what it cannot measure correctly."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file

from image_model.loader import load_series
from testkit.phantoms import write_ct_phantom
from tools.base import ToolRefused
from tools.ct_lung import CTLungSegmentation

SMALL: dict[str, Any] = {"slices": 16, "rows": 64, "cols": 64, "pixel_spacing": 5.0, "slice_spacing": 10.0}


def _refusal(source: Path) -> str:
    with pytest.raises(ToolRefused) as info:
        CTLungSegmentation().run(load_series(source), {})
    return str(info.value)


@pytest.mark.parametrize("orientation", ["coronal", "sagittal"])
def test_non_axial_refused(tmp_path: Path, orientation: str) -> None:
    write_ct_phantom(tmp_path, orientation=orientation, **SMALL)
    assert "axial" in _refusal(tmp_path)


def test_single_slice_refused(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    assert "at least 3 slices" in _refusal(truth.files[8])


def test_not_ct_refused(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    for path in truth.files:
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    assert "needs a CT series" in _refusal(tmp_path)


def test_cr_refused() -> None:
    path = get_testdata_file("RG1_UNCI.dcm")
    assert path is not None
    assert "CR" in _refusal(Path(path))


def test_no_lungs_refused(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path, lungs=False, trachea=False, **SMALL)
    assert "no lungs found" in _refusal(tmp_path)


def test_values_not_in_hounsfield_units_refused(tmp_path: Path) -> None:
    truth = write_ct_phantom(tmp_path, **SMALL)
    for path in truth.files:  # drop the rescale: stored values (all >= 0) are read as HU
        ds = pydicom.dcmread(path)
        ds.RescaleIntercept = "0"
        ds.save_as(path)
    assert "no air" in _refusal(tmp_path)


def test_bad_parameters_refused(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path, **SMALL)
    with pytest.raises(ToolRefused, match="bad parameters"):
        CTLungSegmentation().run(load_series(tmp_path), {"lung_threshold_hu": 50})
