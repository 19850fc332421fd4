"""The loader's own read of native 16-bit grayscale Pixel Data gives pydicom's values exactly,
and leaves every other case to pydicom."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from image_model.native_pixels import native_plane


def _image(transfer_syntax: str, signed: int, stored: int, allocated: int = 16) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 7, 9, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = allocated, stored, stored - 1, signed
    ds.PhotometricInterpretation = "MONOCHROME2"
    # Every bit pattern, high bits above Bits Stored included (a sender may leave them set).
    raw = np.random.default_rng(stored + signed).integers(0, 2**allocated, 63)
    ds.PixelData = raw.astype("<u2" if allocated == 16 else "u1").tobytes() + (b"\0" if allocated == 8 else b"")
    return ds


@pytest.mark.parametrize(
    ("transfer_syntax", "signed", "stored"),
    list(itertools.product([ImplicitVRLittleEndian, ExplicitVRLittleEndian], [0, 1], [8, 12, 15, 16])),
)
def test_native_plane_equals_pydicom(transfer_syntax: str, signed: int, stored: int) -> None:
    ds = _image(transfer_syntax, signed, stored)
    plane, expected = native_plane(ds), ds.pixel_array
    assert plane is not None and plane.dtype == expected.dtype
    assert np.array_equal(plane, expected)
    plane[0, 0] = 1  # writable, like pydicom's


def test_other_images_are_left_to_pydicom() -> None:
    assert native_plane(_image(ExplicitVRBigEndian, 1, 12)) is None
    assert native_plane(_image(RLELossless, 1, 12)) is None
    assert native_plane(_image(ExplicitVRLittleEndian, 0, 8, allocated=8)) is None
    colour = _image(ExplicitVRLittleEndian, 0, 16)
    colour.PhotometricInterpretation = "RGB"
    assert native_plane(colour) is None
    short = _image(ExplicitVRLittleEndian, 1, 16)
    short.PixelData = short.PixelData[:-2]
    assert native_plane(short) is None
    odd_high_bit = _image(ExplicitVRLittleEndian, 1, 12)
    odd_high_bit.HighBit = 15
    assert native_plane(odd_high_bit) is None
