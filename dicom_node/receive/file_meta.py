"""The File Meta Information of a received instance (PS3.10 7.1), encoded directly.

Every C-STORE is spooled as a Part 10 file: preamble, ``DICM``, the file meta group, then the
data set as the sender sent it. pynetdicom builds the group as a pydicom dataset and pydicom
encodes it (``event.file_meta`` and ``encode_file_meta``): about a third of a millisecond of the
interpreter per instance, for seven elements of which three change. The same bytes are packed
here: explicit VR little endian (PS3.10 7.1), UI values padded with NUL and SH with a space to
an even length (PS3.5 6.2), the group length first.
"""

from __future__ import annotations

import struct

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

_SHORT = struct.Struct("<HH2sH")  # tag, VR, 16-bit length (PS3.5 Table 7.1-2)
_LONG = struct.Struct("<HH2s2xI")  # tag, VR, reserved, 32-bit length (OB)
_META_GROUP = 0x0002


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    if len(value) % 2:
        value += b" " if vr == b"SH" else b"\0"
    if vr == b"OB":
        return _LONG.pack(_META_GROUP, element, vr, len(value)) + value
    return _SHORT.pack(_META_GROUP, element, vr, len(value)) + value


#: File Meta Information Version (0002,0001), Implementation Class UID (0002,0012) and Version
#: Name (0002,0013): the same for every instance (pynetdicom's, as its encoder writes them).
_VERSION = _element(0x0001, b"OB", b"\x00\x01")
_IMPLEMENTATION = _element(0x0012, b"UI", PYNETDICOM_IMPLEMENTATION_UID.encode("ascii")) + _element(
    0x0013, b"SH", PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii")
)


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """The encoded file meta group. Raises UnicodeEncodeError for a UID that is not ASCII (the
    caller then leaves the encoding to pydicom, as before)."""
    body = b"".join((
        _VERSION,
        _element(0x0002, b"UI", sop_class_uid.encode("ascii")),
        _element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
        _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
        _IMPLEMENTATION,
    ))
    return _SHORT.pack(_META_GROUP, 0x0000, b"UL", 4) + struct.pack("<I", len(body)) + body
