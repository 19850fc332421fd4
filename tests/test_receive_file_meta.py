"""The directly packed File Meta Information (dicom_node/receive/file_meta.py) is byte for byte
what pynetdicom and pydicom encode for the same instance."""

from __future__ import annotations

import pytest
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.dsutils import create_file_meta
from pynetdicom.dsutils import encode_file_meta as pydicom_encoded

from dicom_node.receive.file_meta import encode_file_meta


@pytest.mark.parametrize("sop_instance", ["1.2.3", "1.2.34", "2.25.3312312312312312312312312312312312312"])
@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, JPEG2000Lossless])
def test_same_bytes_as_pydicom(sop_instance: str, syntax: str) -> None:
    expected = pydicom_encoded(create_file_meta(sop_class_uid=CTImageStorage, sop_instance_uid=UID(sop_instance),
                                                transfer_syntax=UID(syntax)))
    assert encode_file_meta(CTImageStorage, sop_instance, syntax) == expected


def test_a_uid_that_is_not_ascii_is_left_to_the_caller() -> None:
    with pytest.raises(UnicodeEncodeError):
        encode_file_meta(CTImageStorage, "1.2.\u00e9", ExplicitVRLittleEndian)
