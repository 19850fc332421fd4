"""The parse policy (image_model/parse_policy.py), header normalisation and the loader's tolerance
of junk values (header_values.py, loader.py) and log escaping (dicom_node/logsafe.py) on real
files and crafted bytes, without a node."""

from __future__ import annotations

import logging
import struct
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from config.schema import NodeConfig
from dicom_node.limits import parse_limits
from dicom_node.logsafe import EscapingFilter, printable, uid
from image_model.header_values import normalise_header
from image_model.parse_policy import ParseLimits, UnsafeDicom, scan_dataset, scan_file
from testkit.crafted import ct_dataset, deeply_nested, part10, rle_bomb
from testkit.dicom_wire import encode_dataset

LIMITS = ParseLimits()


def test_config_and_policy_defaults_agree() -> None:
    assert parse_limits(NodeConfig()) == ParseLimits()


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                                  "MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "JPEG2000.dcm",
                                  "emri_small.dcm", "eCT_Supplemental.dcm", "RG1_J2KR.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "liver.dcm", "image_dfl.dcm", "rtplan.dcm", "693_UNCI.dcm"])
def test_real_files_pass(name: str) -> None:
    path = Path(str(get_testdata_file(name)))
    result = scan_file(path, LIMITS)
    assert result.elements > 10
    pydicom.dcmread(path)  # and pydicom reads them as well


def test_depth_elements_and_geometry_are_bounded() -> None:
    _, nested = deeply_nested(33)
    with pytest.raises(UnsafeDicom, match="nested deeper than 32"):
        scan_dataset(nested, "1.2.840.10008.1.2.1", LIMITS)
    assert scan_dataset(deeply_nested(32)[1], "1.2.840.10008.1.2.1", LIMITS).depth == 32
    with pytest.raises(UnsafeDicom, match="max_elements"):
        scan_dataset(encode_dataset(ct_dataset()), "1.2.840.10008.1.2.1", ParseLimits(max_elements=10))
    _, bomb = rle_bomb(8192, 4096)
    with pytest.raises(UnsafeDicom, match="max_pixel_bytes"):
        scan_dataset(bomb, "1.2.840.10008.1.2.5", LIMITS)


def test_structure_faults_are_refused_without_echoing_values() -> None:
    body = encode_dataset(ct_dataset(PatientName="Secret^Name"))
    for broken in (body[:-7], body + b"\x08\x00", body.replace(b"OW", b"\x00\x01", 1)):
        with pytest.raises(UnsafeDicom) as caught:
            scan_dataset(broken, "1.2.840.10008.1.2.1", LIMITS)
        assert "Secret" not in str(caught.value)


def test_deflate_limits() -> None:
    plain = encode_dataset(ct_dataset())
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    fine = packer.compress(plain) + packer.flush()
    assert scan_dataset(fine, "1.2.840.10008.1.2.1.99", LIMITS).dataset_bytes == len(plain)
    with pytest.raises(UnsafeDicom, match="max_inflated_bytes"):
        scan_dataset(fine, "1.2.840.10008.1.2.1.99", ParseLimits(max_inflated_bytes=len(plain) - 1))
    cut = plain.index(struct.pack("<HH", 0x7FE0, 0x0010))
    zeros = (struct.pack("<HH", 0x0029, 0x0010) + b"LO\x04\x00FUZZ" + struct.pack("<HH", 0x0029, 0x1000)
             + b"OB\x00\x00" + struct.pack("<L", 8 << 20) + bytes(8 << 20))
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = packer.compress(plain[:cut] + zeros + plain[cut:]) + packer.flush()
    with pytest.raises(UnsafeDicom, match="max_inflate_ratio"):
        scan_dataset(bomb, "1.2.840.10008.1.2.1.99", LIMITS)
    # The whole dataset but no final deflate block (found by the fuzzer): pydicom's reader
    # raises on it, so the policy refuses it at receive instead of routing failing later.
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    unfinished = packer.compress(plain) + packer.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(zlib.error):
        zlib.decompress(unfinished, -zlib.MAX_WBITS)
    with pytest.raises(UnsafeDicom, match="ends before its deflate stream"):
        scan_dataset(unfinished, "1.2.840.10008.1.2.1.99", LIMITS)


def test_a_specific_character_set_pydicom_cannot_look_up_is_refused(tmp_path: Path) -> None:
    """(0008,0005) with a NUL inside (found by the fuzzer): pydicom raises reading the file, so
    the policy refuses it; an unknown but printable name is tolerated (pydicom falls back)."""
    ds = ct_dataset()
    ds.SpecificCharacterSet = "ISO 2022 IB 87"
    assert scan_dataset(encode_dataset(ds), "1.2.840.10008.1.2.1", LIMITS)
    body = encode_dataset(ds).replace(b"ISO 2022 IB 87", b"ISO\x002022 IB 87")
    path = tmp_path / "nul.dcm"
    path.write_bytes(part10(ds, body, "1.2.840.10008.1.2.1"))
    with pytest.raises(ValueError, match="null"):
        pydicom.dcmread(path, stop_before_pixels=True)
    with pytest.raises(UnsafeDicom, match="Specific Character Set"):
        scan_dataset(body, "1.2.840.10008.1.2.1", LIMITS)


def test_a_specific_character_set_with_a_numeric_vr_is_refused(tmp_path: Path) -> None:
    """(0008,0005) written with VR US (found by the 100 000-case fuzz run after 86 000 cases):
    the receive scan accepted it, pydicom decoded the name as a number and every later read
    raised a TypeError, so the acknowledged instance was quarantined at dispatch."""
    ds = ct_dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    plain = encode_dataset(ds)
    body = plain.replace(b"\x08\x00\x05\x00CS\x0a\x00ISO_IR 100", b"\x08\x00\x05\x00US\x02\x00IS")
    assert body != plain
    path = tmp_path / "us.dcm"
    path.write_bytes(part10(ds, body, "1.2.840.10008.1.2.1"))
    with pytest.raises(TypeError):
        pydicom.dcmread(path, stop_before_pixels=True)
    with pytest.raises(UnsafeDicom, match="Specific Character Set"):
        scan_dataset(body, "1.2.840.10008.1.2.1", LIMITS)


def test_codestream_larger_than_the_header_is_refused(tmp_path: Path) -> None:
    """A JPEG 2000 frame whose SIZ marker declares more pixels than Rows x Columns."""
    source = Path(str(get_testdata_file("RG1_J2KR.dcm")))
    raw = bytearray(source.read_bytes())
    siz = raw.index(b"\xff\x4f\xff\x51")
    raw[siz + 8 : siz + 16] = struct.pack(">LL", 60000, 60000)
    (tmp_path / "big.dcm").write_bytes(raw)
    with pytest.raises(UnsafeDicom, match="more pixels than Rows x Columns"):
        scan_file(tmp_path / "big.dcm", LIMITS)


def test_part10_file_round_trip(tmp_path: Path) -> None:
    ds = ct_dataset()
    path = tmp_path / "x.dcm"
    path.write_bytes(part10(ds, encode_dataset(ds), "1.2.840.10008.1.2.1"))
    result = scan_file(path, LIMITS, wanted=[0x00080018])
    assert result.text(0x00080018) == ds.SOPInstanceUID
    assert result.pixel_bytes == 16 * 16 * 4  # as float32 samples


def test_header_values_are_normalised_in_place() -> None:
    ds = Dataset()
    ds.PatientName = "Doe^John\nX"
    ds.PatientBirthDate = "19010203"
    ds.StudyTime = "123045"
    ds.PatientSex = "F"
    ds.StudyDescription = "D" * 70
    item = Dataset()
    item.CodeMeaning = "bad\x07bell"
    ds.ProcedureCodeSequence = [item]
    # Values pydicom refuses to set are written as they come from files: raw.
    for keyword, text in (("PatientBirthDate", "1901-02-03"), ("StudyTime", "12:30:45"), ("PatientSex", "female")):
        ds[keyword].value = text
    changed = normalise_header(ds)
    assert changed == ["CodeMeaning", "PatientBirthDate", "PatientName", "PatientSex", "StudyDescription",
                       "StudyTime"]
    assert (ds.PatientBirthDate, ds.StudyTime, ds.PatientSex) == ("19010203", "123045", "F")
    assert str(ds.PatientName) == "Doe^JohnX" and len(ds.StudyDescription) == 64
    assert normalise_header(ds) == []


def test_log_escaping() -> None:
    assert printable("a\nb\x1b") == "a\\x0ab\\x1b"
    assert uid("1.2.3") == "1.2.3" and uid("1.2\nX") == "<invalid UID, 5 characters>"
    record = logging.LogRecord("pynetdicom.utils", logging.ERROR, __file__, 1,
                               "Invalid 'UID' value '%s' - bad", ("1.2\nSECRET",), None)
    EscapingFilter().filter(record)
    assert "SECRET" not in record.getMessage() and "\n" not in record.getMessage()


def test_loader_leaves_out_an_instance_with_unreadable_values(tmp_path: Path) -> None:
    """One instance's junk header values (a Rescale Slope that is no number, a Window Center of
    'abc') neither crash the load nor fail the series."""
    from image_model.loader import load_series
    from tests.receive_helpers import make_ct_series

    files = make_ct_series(tmp_path, 4)
    for path, (keyword, junk) in zip(files[:2], (("RescaleSlope", b"x1"), ("WindowCenter", b"abc")), strict=True):
        ds = pydicom.dcmread(path)
        setattr(ds, keyword, "12345")
        ds.save_as(path)
        path.write_bytes(path.read_bytes().replace(b"12345 ", junk.ljust(6)))
    volume = load_series(tmp_path)
    assert volume.shape[0] == 3
    assert volume.meta["skipped_files"] == ["an instance with an unreadable RescaleSlope"]
