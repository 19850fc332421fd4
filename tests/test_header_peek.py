"""The header walk of ``image_model.header_peek`` finds what pydicom finds, or says it cannot tell;
the routing check's slice places read through it equal those read through pydicom."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from image_model.header_peek import PEEK_BYTES, peek_elements
from tools.lung_coverage import UNKNOWN, _peeked_place, _read_place

TAGS = (0x00080008, 0x00200032, 0x00200037, 0x00280008)
#: pydicom's own test files: explicit and implicit VR, big endian, JPEG 2000, deflated, RT.
PYDICOM_FILES = ["CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm",
                 "JPEG2000.dcm", "image_dfl.dcm", "rtplan.dcm", "emri_small.dcm", "SC_rgb.dcm"]


def _slice_with_sequences(path: Path, syntax: str) -> Path:
    """A CT slice whose header has nested sequences of undefined length before its position (as
    pydicom writes them), an empty sequence, and a value after the wanted tags."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    inner = Dataset()
    inner.ReferencedSOPClassUID = ds.SOPClassUID
    inner.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    outer = Dataset()
    outer.CodeValue, outer.CodingSchemeDesignator, outer.CodeMeaning = "1", "99X", "x"
    outer.ReferencedImageSequence = Sequence([inner, inner])
    ds.ReferencedImageSequence = Sequence([inner])
    ds.ProcedureCodeSequence = Sequence([outer])
    ds.DerivationCodeSequence = Sequence([])
    ds.ImagePositionPatient = [-12.5, 3, 1e2]
    ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)
    return path


def _expected(path: Path) -> dict[int, bytes]:
    """The wanted elements' raw values as pydicom reads them (before it decodes any)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {int(tag): bytes(raw.value) for tag, raw in ds._dict.items() if int(tag) in TAGS}


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_peek_walks_nested_sequences_to_the_values_pydicom_reads(tmp_path: Path, syntax: str) -> None:
    path = _slice_with_sequences(tmp_path / "slice.dcm", syntax)
    assert b"\xff\xff\xff\xff" in path.read_bytes()  # undefined lengths: the walk goes through items
    peeked = peek_elements(path, TAGS)
    assert peeked is not None
    assert peeked == _expected(path)
    assert set(peeked) == {0x00080008, 0x00200032, 0x00200037}  # no Number of Frames in the file
    assert _peeked_place(path) == _read_place(path)


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_peek_agrees_with_pydicom_or_cannot_tell(name: str) -> None:
    path = Path(get_testdata_file(name))
    peeked = peek_elements(path, TAGS)
    if peeked is not None:
        assert peeked == _expected(path)
    place = _peeked_place(path)
    assert place is UNKNOWN or place == _read_place(path) or (np.isinf(place) and np.isinf(_read_place(path)))


def test_peek_cannot_tell_rather_than_guess(tmp_path: Path) -> None:
    source = _slice_with_sequences(tmp_path / "slice.dcm", ExplicitVRLittleEndian)
    data = source.read_bytes()
    cut = tmp_path / "cut.dcm"  # ends inside the nested sequences
    cut.write_bytes(data[: data.index(b"\x20\x00\x32\x00") - 40])
    assert peek_elements(cut, TAGS) is None
    no_preamble = tmp_path / "raw.dcm"
    no_preamble.write_bytes(data[132:])
    assert peek_elements(no_preamble, TAGS) is None
    long_header = tmp_path / "long.dcm"  # the position lies beyond what is read
    ds = pydicom.dcmread(source)
    ds.private_block(0x0019, "LEAN TEST", create=True).add_new(0x10, "OB", b"\0" * PEEK_BYTES)
    ds.save_as(long_header)
    assert peek_elements(long_header, TAGS) is None
    assert _peeked_place(long_header) is UNKNOWN
