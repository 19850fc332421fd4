"""Crafted DICOM instances for the hostile-input tests, the fuzzer and bench_hostile: a small
valid CT and what an attacker builds from it (deflate and RLE bombs, deep nesting), encoded
byte by byte where pydicom would refuse to write them."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from testkit.dicom_wire import encode_dataset

MB = 1 << 20


def ct_image(pixels: np.ndarray, modality: str = "CT", **values: Any) -> Dataset:
    """One single-frame CT-like image of 16-bit ``pixels`` (no file meta); ``values`` override
    attributes (new UIDs by default)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = "Test^Receive"
    ds.PatientID = "RX-1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def ct_dataset(rows: int = 16, cols: int = 16, **values: Any) -> Dataset:
    """A small valid CT image (no file meta); ``values`` override attributes."""
    pixels = np.arange(rows * cols, dtype=np.uint32).reshape(rows, cols) % 4000
    return ct_image(pixels, **{"PatientName": "Hostile^Test", "PatientID": "HOSTILE-1", **values})


def deflate_bomb(inflated_bytes: int) -> tuple[Dataset, bytes]:
    """A small CT whose Deflated Explicit VR LE encoding inflates to about ``inflated_bytes``:
    a private OB element of zeros (PS3.5 A.5: the whole dataset is deflated)."""
    ds = ct_dataset()
    plain = encode_dataset(ds, ExplicitVRLittleEndian)
    cut = plain.index(struct.pack("<HH", 0x7FE0, 0x0010))
    private = struct.pack("<HH", 0x0029, 0x0010) + b"LO" + struct.pack("<H", 8) + b"HOSTILE "
    private += struct.pack("<HH", 0x0029, 0x1000) + b"OB" + bytes(2) + struct.pack("<L", inflated_bytes)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [deflater.compress(plain[:cut] + private)]
    zeros = bytes(16 * MB)
    left = inflated_bytes
    while left:
        n = min(left, len(zeros))
        out.append(deflater.compress(zeros[:n]))
        left -= n
    out.append(deflater.compress(plain[cut:]))
    out.append(deflater.flush())
    return ds, b"".join(out)


def rle_bomb(rows: int = 65535, cols: int = 16384, **values: Any) -> tuple[Dataset, bytes]:
    """An RLE Lossless CT of a few hundred bytes declaring ``rows`` x ``cols`` 16-bit pixels
    (PS3.5 G.3: two segments per 16-bit sample, each holding a few replicate runs)."""
    ds = ct_dataset(**values)
    ds.Rows, ds.Columns = rows, cols
    del ds.PixelData
    segment = bytes([0x81, 0x00]) * 200  # replicate runs of zeros
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    frame = header + segment + segment
    encap = struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # empty basic offset table
    encap += struct.pack("<HHL", 0xFFFE, 0xE000, len(frame)) + frame
    encap += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    body = encode_dataset(ds, ExplicitVRLittleEndian)
    body += struct.pack("<HH", 0x7FE0, 0x0010) + b"OB" + bytes(2) + struct.pack("<L", 0xFFFFFFFF) + encap
    return ds, body


def deeply_nested(depth: int = 5000, **values: Any) -> tuple[Dataset, bytes]:
    """A CT with an undefined-length sequence nested ``depth`` deep after (0020,000E): in
    (0040,0275) Request Attributes Sequence, between the header and the pixel data."""
    ds = ct_dataset(**values)
    plain = encode_dataset(ds, ExplicitVRLittleEndian)
    cut = plain.index(struct.pack("<HH", 0x7FE0, 0x0010))
    open_one = (struct.pack("<HH", 0x0040, 0x0275) + b"SQ" + bytes(2) + struct.pack("<L", 0xFFFFFFFF)
                + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF))
    close_one = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return ds, plain[:cut] + open_one * depth + close_one * depth + plain[cut:]


def part10(ds: Dataset, body: bytes, transfer_syntax: str) -> bytes:
    """A Part 10 file around an encoded dataset ``body`` (as the spool stores one)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta)
    return bytes(128) + b"DICM" + fp.getvalue() + body
