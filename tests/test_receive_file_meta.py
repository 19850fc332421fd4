"""The directly packed File Meta Information (dicom_node/receive/file_meta.py) is byte for byte
what pynetdicom and pydicom encode for the same instance; padded to whole blocks, it still reads."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dsutils import encode_file_meta as pydicom_encoded

from dicom_node.receive.direct_io import ALIGNMENT
from dicom_node.receive.file_meta import PADDING_CREATOR_UID, encode_file_meta
from dicom_node.receive.handlers import StoreRequest, spool_parts


@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "2.25.3312312312312312312312312312312312312"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
def test_same_bytes_as_pydicom(sop_instance: str, syntax: str) -> None:
    expected = pydicom_encoded(create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=UID(sop_instance),
                                                transfer_syntax=UID(syntax)))
    assert encode_file_meta(CTImageStorage, sop_instance, syntax) == expected


def test_a_uid_that_is_not_ascii_is_left_to_the_caller() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_file_meta(CTImageStorage, "1.2.\u00e9", ExplicitVRLittleEndian)


@pytest.mark.parametrize("data_set_length", [0, 2, 4094, 4096, 525_000, 525_002])
def test_block_padding_makes_the_file_whole_blocks(data_set_length: int) -> None:
    plain = encode_file_meta(CTImageStorage, "1.2.34", ExplicitVRLittleEndian)
    padded = encode_file_meta(CTImageStorage, "1.2.34", ExplicitVRLittleEndian, block=4096, before=132,
                              after=data_set_length)
    assert (132 + len(padded) + data_set_length) % 4096 == 0
    # The same elements first (group length aside), then the creator and the padding.
    assert padded[12:].startswith(plain[12:]) and PADDING_CREATOR_UID.encode() in padded
    assert len(padded) <= len(plain) + 4096 + 100


def test_a_padded_file_reads_back_with_the_data_set_untouched(tmp_path: Path) -> None:
    """pydicom and dcmtk read the padded group (Private Information, PS3.10 Table 7.1-1) and the
    data set after it as it was."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID, ds.PatientID = CTImageStorage, "1.2.34", "X"
    ds.Rows = 4
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False  # explicit VR little endian, no meta
    write_dataset(buffer, ds)
    data_set = buffer.getvalue()
    meta = encode_file_meta(CTImageStorage, "1.2.34", ExplicitVRLittleEndian, block=4096, before=132,
                            after=len(data_set))
    path = tmp_path / "padded.dcm"
    path.write_bytes(bytes(128) + b"DICM" + meta + data_set)
    assert path.stat().st_size % 4096 == 0
    read = dcmread(path)
    assert read.file_meta.PrivateInformationCreatorUID == PADDING_CREATOR_UID
    assert set(read.file_meta.PrivateInformation) == {0}
    assert read.PatientID == "X" and read.Rows == 4 and read.SOPInstanceUID == "1.2.34"
    dump = subprocess.run(["/usr/bin/dcmdump", "-q", str(path)], capture_output=True, text=True, check=True)
    assert "(0002,0100)" in dump.stdout and "(0010,0020)" in dump.stdout and not dump.stderr


def test_an_odd_total_is_not_padded() -> None:
    """An OB value has an even length: a data set of odd length (malformed) gets none."""
    plain = encode_file_meta(CTImageStorage, "1.2.34", ExplicitVRLittleEndian)
    assert encode_file_meta(CTImageStorage, "1.2.34", ExplicitVRLittleEndian, block=4096, before=132,
                            after=1) == plain


def test_the_spool_gets_whole_blocks_only_when_it_writes_direct() -> None:
    """handlers.spool_parts: padded for a spool writing around the page cache (no truncation
    there), the group as pydicom encodes it otherwise."""
    data_set = bytes(525_000)
    request = StoreRequest(dataset=data_set, transfer_syntax=ExplicitVRLittleEndian, sop_class_uid=CTImageStorage,
                           sop_instance_uid="1.2.34", calling_ae="A", called_ae="B", association="x", address="y")
    direct = spool_parts(request, whole_blocks=True)
    buffered = spool_parts(request, whole_blocks=False)
    assert sum(len(part) for part in direct) % ALIGNMENT == 0 and direct[2] is data_set
    assert buffered[1] == encode_file_meta(CTImageStorage, "1.2.34", ExplicitVRLittleEndian)
    assert sum(len(part) for part in buffered) % ALIGNMENT != 0
