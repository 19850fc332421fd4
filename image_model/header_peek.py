"""A few top-level values read from the start of a DICOM file, without parsing the rest of it.

A check that needs one or two values from every instance of a series (the routing thorax check:
where each slice lies, to choose the slices it loads) would otherwise pay pydicom's full header
parse per file, ~2-6 ms for a real CT's few hundred elements: seconds for a 1000-slice series,
all of it between the series' quiet period and its job. This walk costs a small fraction of that.

It follows the encoding of PS3.10 7.1 (a 128-byte preamble, ``DICM``, the File Meta group in
explicit VR little endian) and PS3.5 7.1 (each element: tag, the VR in explicit syntaxes, the
length; an undefined length closed by delimitation items, PS3.5 7.5; ``UN`` of undefined length
holding implicit VR, PS3.5 6.2.2). It reads at most :data:`PEEK_BYTES` and answers ``None``,
"cannot tell", on anything it does not handle: no preamble, a big-endian or deflated syntax, tags
out of ascending order, a value running past the bytes read, sequences nested deeper than
:data:`MAX_DEPTH`. The caller then reads the file the usual way: the peek is only a shortcut and
never decides anything pydicom would decide differently.
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from pathlib import Path

#: At most this much of a file is read; a header longer than that is read the usual way.
PEEK_BYTES = 64 * 1024
#: Deepest nesting of undefined-length sequences walked through.
MAX_DEPTH = 8
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
#: Explicit VR big endian (retired) and deflated explicit VR little endian: not walked.
UNHANDLED_SYNTAXES = frozenset({"1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"})
#: VRs whose explicit encoding has two reserved bytes and a 4-byte length (PS3.5 Table 7.1-1).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
UNDEFINED_LENGTH = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
META_GROUP = 0x0002
TRANSFER_SYNTAX_UID = 0x00020010
_U16 = struct.Struct("<HH")
_U32 = struct.Struct("<I")


class _CannotTell(Exception):
    """The walk met something it does not handle."""


def peek_elements(path: Path, tags: Iterable[int]) -> dict[int, bytes] | None:
    """The raw values (bytes as stored) of those of ``tags`` (``0xGGGGEEEE``, top level of the
    data set, not the File Meta group) the file holds; a tag missing from the answer is not in
    the file. ``None`` when the walk cannot tell (see the module docstring)."""
    wanted = set(tags)
    with open(path, "rb") as f:
        data = f.read(PEEK_BYTES)
    whole_file = len(data) < PEEK_BYTES
    try:
        if data[128:132] != b"DICM":
            return None
        offset, syntax = _file_meta(data, 132)
        if syntax in UNHANDLED_SYNTAXES:
            return None
        explicit = syntax != IMPLICIT_VR_LITTLE_ENDIAN
        found: dict[int, bytes] = {}
        previous, last = -1, max(wanted)
        while offset < len(data):
            tag, vr, length, offset = _element_header(data, offset, explicit)
            if tag <= previous or tag >> 16 == 0xFFFE:
                return None  # out of order (a later element might be one wanted), or a stray item
            previous = tag
            if tag > last:
                return found
            if length == UNDEFINED_LENGTH:
                offset = _skip_items(data, offset, explicit and vr != b"UN", 1)
                continue
            end = offset + length
            if end > len(data):
                return None
            if tag in wanted:
                found[tag] = data[offset:end]
            offset = end
        return found if whole_file and offset == len(data) else None
    except (_CannotTell, struct.error):
        return None


def _file_meta(data: bytes, offset: int) -> tuple[int, str]:
    """Past the File Meta group (explicit VR little endian): the data set's offset and syntax."""
    syntax = None
    while _U16.unpack_from(data, offset)[0] == META_GROUP:
        tag, _vr, length, offset = _element_header(data, offset, explicit=True)
        if length == UNDEFINED_LENGTH or offset + length > len(data):
            raise _CannotTell
        if tag == TRANSFER_SYNTAX_UID:
            syntax = data[offset : offset + length].rstrip(b"\0 ").decode("ascii", "replace")
        offset += length
    if syntax is None:
        raise _CannotTell
    return offset, syntax


def _element_header(data: bytes, offset: int, explicit: bool) -> tuple[int, bytes, int, int]:
    """(tag, VR or b"", value length, offset of the value) of the element at ``offset``."""
    group, element = _U16.unpack_from(data, offset)
    tag = (group << 16) | element
    if group == 0xFFFE or not explicit:  # items and delimiters never carry a VR
        return tag, b"", _U32.unpack_from(data, offset + 4)[0], offset + 8
    vr = data[offset + 4 : offset + 6]
    if len(vr) != 2 or not vr.isalpha() or not vr.isupper():
        raise _CannotTell
    if vr in LONG_VRS:
        return tag, vr, _U32.unpack_from(data, offset + 8)[0], offset + 12
    return tag, vr, _U16.unpack_from(data, offset + 6)[0], offset + 8


def _skip_items(data: bytes, offset: int, explicit: bool, depth: int) -> int:
    """Past the items of an undefined-length value, to after its Sequence Delimitation Item."""
    if depth > MAX_DEPTH:
        raise _CannotTell
    while True:
        tag, _vr, length, offset = _element_header(data, offset, explicit)
        if tag == SEQUENCE_END:
            return offset
        if tag != ITEM:
            raise _CannotTell
        if length != UNDEFINED_LENGTH:
            offset += length
            continue
        while True:  # an item of undefined length: its elements, to its Item Delimitation Item
            tag, vr, length, offset = _element_header(data, offset, explicit)
            if tag == ITEM_END:
                break
            if length == UNDEFINED_LENGTH:
                offset = _skip_items(data, offset, explicit and vr != b"UN", depth + 1)
            else:
                offset += length
            if offset > len(data):
                raise _CannotTell
