"""Native 16-bit grayscale pixel data to a numpy plane, without pydicom's pixel handlers.

Almost every CT slice a PACS sends is one frame of 16-bit grayscale samples in a native
little-endian transfer syntax (Implicit or Explicit VR Little Endian, PS3.5 A.1 and A.2): its
Pixel Data value is the plane itself, row by row (PS3.5 8.1.1). pydicom's ``pixel_array`` gets
there too, but through its general decoding path (the pixel module's values looked up and
validated, a decoder chosen), some milliseconds per instance, seconds over a long series. This
module reads that one case with ``np.frombuffer`` and gives the values pydicom gives: bits above
Bits Stored cleared for unsigned samples, signed samples sign-extended from Bits Stored (two's
complement, PS3.5 8.1.1 and PS3.3 C.7.6.3.1). Anything else, or a value that is not plain,
returns None and the caller decodes through pydicom.
"""
from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset

#: Implicit VR Little Endian (PS3.5 A.1) and Explicit VR Little Endian (PS3.5 A.2.1).
NATIVE_LITTLE_ENDIAN = frozenset({"1.2.840.10008.1.2", "1.2.840.10008.1.2.1"})
GRAYSCALE = frozenset({"MONOCHROME1", "MONOCHROME2"})


def native_plane(ds: Dataset) -> np.ndarray | None:
    """The single frame of ``ds`` as uint16 (Pixel Representation 0) or int16 (1), as pydicom's
    ``pixel_array`` would give it; None when ``ds`` is not a native little-endian, single-frame,
    16-bit grayscale image whose Pixel Data holds exactly its rows x columns samples."""
    transfer_syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if transfer_syntax not in NATIVE_LITTLE_ENDIAN or "PixelData" not in ds:
        return None
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        allocated, stored, high = int(ds.BitsAllocated), int(ds.BitsStored), int(ds.HighBit)
        signed = int(ds.PixelRepresentation)
        single = int(ds.get("NumberOfFrames", 1) or 1) == 1 and int(ds.get("SamplesPerPixel", 1) or 1) == 1
        photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    except (AttributeError, TypeError, ValueError):
        return None
    if not (single and allocated == 16 and 1 <= stored <= 16 and high == stored - 1 and signed in (0, 1)):
        return None
    data = ds.PixelData
    if photometric not in GRAYSCALE or not isinstance(data, bytes) or len(data) != rows * cols * 2:
        return None
    plane = np.frombuffer(data, dtype="<u2").reshape(rows, cols).astype(np.uint16)  # a writable copy
    unused = 16 - stored
    if signed:
        if unused:
            plane <<= np.uint16(unused)  # the sign bit to the top (uint16: wraps, well defined)
        values = plane.view(np.int16)
        if unused:
            values >>= np.int16(unused)  # arithmetic shift: sign-extends
        return values
    if unused:
        plane &= np.uint16((1 << stored) - 1)
    return plane
