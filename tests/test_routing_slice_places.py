"""The routing thorax check places each instance along its slice normal from the parse policy's
scan of the file (raw values, no pydicom parse); the places equal those pydicom reads, or the
file is read through pydicom when a value is not plain."""
from __future__ import annotations

import math
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from tools.lung_coverage import MULTIFRAME, UNKNOWN, _place, _read_place, _scanned_place

#: pydicom's own test files: explicit and implicit VR, big endian, JPEG 2000, deflated, RT, SC.
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                 "JPEG2000.dcm", "image_dfl.dcm", "rtplan.dcm", "emri_small.dcm", "SC_rgb.dcm"]


def _slice(path: Path, syntax: str, **values: object) -> Path:
    """A CT slice with nested sequences of undefined length (as pydicom writes them) before its
    position, and ``values`` set."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    inner = Dataset()
    inner.ReferencedSOPClassUID, inner.ReferencedSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    outer = Dataset()
    outer.CodeValue, outer.CodingSchemeDesignator, outer.CodeMeaning = "1", "99X", "x"
    outer.ReferencedImageSequence = Sequence([inner, inner])
    ds.ReferencedImageSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([outer])
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _same(a: float | None, b: float | None) -> bool:
    return a == b or (a is not None and b is not None and math.isinf(a) and math.isinf(b))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_scanned_places_equal_pydicom_through_nested_sequences(tmp_path: Path, syntax: str) -> None:
    plain = _slice(tmp_path / "plain.dcm", syntax, ImagePositionPatient=[-12.5, 3, 1e2])
    assert b"\xff\xff\xff\xff" in plain.read_bytes()  # undefined lengths: the scan walks the items
    assert _scanned_place(plain) == _read_place(plain) == pytest.approx(100.0)
    localizer = _slice(tmp_path / "localizer.dcm", syntax, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    assert _scanned_place(localizer) is None and _read_place(localizer) is None
    frames = _slice(tmp_path / "frames.dcm", syntax, NumberOfFrames=3)
    assert _scanned_place(frames) == _read_place(frames) == MULTIFRAME
    # A value pydicom reads its own way (spaces inside the value): pydicom decides.
    odd = pydicom.dcmread(plain)
    raw = b"-12.5\\ 3\\100"
    odd._dict[Tag(0x00200032)] = RawDataElement(Tag(0x00200032), "DS", len(raw), raw, 0, False, True)
    odd.save_as(tmp_path / "odd.dcm")
    odd = tmp_path / "odd.dcm"
    assert _scanned_place(odd) is UNKNOWN and _place(odd) == _read_place(odd)


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_scanned_places_agree_with_pydicom(name: str) -> None:
    path = Path(get_testdata_file(name))
    scanned = _scanned_place(path)
    assert scanned is UNKNOWN or _same(scanned, _read_place(path))
    assert _same(_place(path), _read_place(path))


def test_a_file_the_parse_policy_refuses_is_left_out(tmp_path: Path) -> None:
    path = _slice(tmp_path / "slice.dcm", ExplicitVRLittleEndian)
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"  # ends inside the nested sequences
    cut.write_bytes(data[: data.index(b"\x20\x00\x32\x00") - 40])
    assert _place(cut) is None
