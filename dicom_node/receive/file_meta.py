"""The File Meta Information of a received instance (PS3.10 7.1), encoded directly.

Every C-STORE is spooled as a Part 10 file: preamble, ``DICM``, the file meta group, then the
data set as the sender sent it. pynetdicom builds the group as a pydicom dataset and pydicom
encodes it (``event.file_meta`` and ``encode_file_meta``): about a third of a millisecond of the
interpreter per instance, for seven elements of which three change. The same bytes are packed
here: explicit VR little endian (PS3.10 7.1), UI values padded with NUL and SH with a space to
an even length (PS3.5 6.2), the group length first.

**Block padding.** The spool writes around the page cache in whole blocks (direct_io.py); a file
whose length is not a multiple of the block then has its last block padded and the file truncated
back, and that truncation makes the file system read the block just written back from the device
(to zero its tail) and write it again at the flush: ~0.15 ms per 512 KB instance of the durable
store's ~0.75 ms on the development box, one device round trip more on any. With ``block`` given,
the group instead ends with Private Information (0002,0102, PS3.10 Table 7.1-1) of as many zero
bytes as make the whole file a multiple of ``block``, under this node's Private Information
Creator UID (0002,0100). The data set is untouched; the meta group is the node's own and never
leaves it (a C-STORE carries no meta, PS3.7 9.3.1.1), and Private Information means something
only to the application its creator UID names (PS3.10 7.1): other readers pass over it.
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


#: Private Information Creator UID (0002,0100) of the block padding: this node's (a UID under
#: pydicom's root, derived from the name "mmedagent-node: spool file block padding").
PADDING_CREATOR_UID = "1.2.826.0.1.3680043.8.498.84293560035662656361452386823159957013"
_PADDING_CREATOR = _element(0x0100, b"UI", PADDING_CREATOR_UID.encode("ascii"))
#: Bytes the padding adds beyond its value: the creator element and the OB element's header.
_PADDING_OVERHEAD = len(_PADDING_CREATOR) + _LONG.size
#: The group length element (0002,0000) UL.
_GROUP_LENGTH_SIZE = _SHORT.size + 4


def encode_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                     *, block: int = 0, before: int = 0, after: int = 0) -> bytes:
    """The encoded file meta group. With ``block`` (a positive even number), padded (module
    docstring) so that ``before`` + the group + ``after`` is a multiple of ``block``: ``before``
    the bytes in front of it (preamble and ``DICM``), ``after`` the data set's length. Raises
    UnicodeEncodeError for a UID that is not ASCII (the caller then leaves the encoding to
    pydicom, as before)."""
    body = b"".join((
        _VERSION,
        _element(0x0002, b"UI", sop_class_uid.encode("ascii")),
        _element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
        _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
        _IMPLEMENTATION,
    ))
    if block > 0:
        value = -(before + _GROUP_LENGTH_SIZE + len(body) + _PADDING_OVERHEAD + after) % block
        if value % 2 == 0:  # an OB value has an even length (PS3.5 7.1.1); else: no padding
            body += _PADDING_CREATOR + _LONG.pack(_META_GROUP, 0x0102, b"OB", value) + bytes(value)
    return _SHORT.pack(_META_GROUP, 0x0000, b"UL", 4) + struct.pack("<I", len(body)) + body
