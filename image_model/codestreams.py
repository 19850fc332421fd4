"""What a compressed frame says about itself: the image size in its own codestream header, and
the shape of an RLE header. A decoder allocates from these, not from the DICOM header, so the
parse policy (parse_policy.py) checks them against Rows x Columns before anything is decoded
(PS3.5 A.4: encapsulated frames; G.5: the RLE header).
"""

from __future__ import annotations

import struct

RLE = "1.2.840.10008.1.2.5"
#: Compressed transfer syntaxes whose frames start with a JPEG / JPEG-LS / JPEG 2000 codestream.
JPEG_FAMILY_PREFIXES = ("1.2.840.10008.1.2.4.",)
#: Bytes of a compressed frame read to find its codestream header.
CODESTREAM_PEEK_BYTES = 64 * 1024
#: JPEG start-of-frame markers (ITU T.81 B.1.1.3) and JPEG-LS SOF55 (ITU T.87).
SOF_MARKERS = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7})
#: RLE: at most 15 segments (PS3.5 G.5), a 64-byte header.
RLE_HEADER_BYTES = 64
RLE_MAX_SEGMENTS = 15


def frame_size(data: bytes | memoryview) -> tuple[int, int] | None:
    """(columns, rows) a compressed frame declares in its own header, if ``data`` starts one."""
    if data[:2] == b"\xff\xd8":  # JPEG, JPEG-LS: the first SOFn (ITU T.81 B.2.2)
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return None
            marker = data[pos + 1]
            if marker == 0xFF:
                pos += 1
                continue
            length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            if marker in SOF_MARKERS:
                if pos + 9 > len(data):
                    return None
                rows = int.from_bytes(data[pos + 5 : pos + 7], "big")
                cols = int.from_bytes(data[pos + 7 : pos + 9], "big")
                return cols, rows
            pos += 2 + length
        return None
    if data[:4] == b"\xff\x4f\xff\x51" and len(data) >= 24:  # JPEG 2000 SOC + SIZ (ITU T.800 A.5.1)
        xsiz, ysiz, xosiz, yosiz = struct.unpack(">LLLL", data[8:24])
        return max(xsiz - xosiz, 0), max(ysiz - yosiz, 0)
    return None


def fragments_fault(
    buf: memoryview, fragments: list[tuple[int, int]], transfer_syntax: str, shape: tuple[int, int]
) -> str | None:
    """Why the frames ``(offset, length)`` of ``buf`` cannot be decoded within ``shape`` (rows,
    columns) of the DICOM header, or None."""
    rows, cols = shape
    if transfer_syntax == RLE:
        for offset, length in fragments:
            if length < RLE_HEADER_BYTES:
                continue  # a continuation fragment
            header = struct.unpack_from("<16L", buf, offset)
            segments, offsets = header[0], header[1 : 1 + min(header[0], RLE_MAX_SEGMENTS)]
            if segments > RLE_MAX_SEGMENTS or any(o > length for o in offsets) or list(offsets) != sorted(offsets):
                return "a malformed RLE header (PS3.5 G.5)"
        return None
    if not transfer_syntax.startswith(JPEG_FAMILY_PREFIXES):
        return None
    for offset, length in fragments:
        size = frame_size(buf[offset : offset + min(length, CODESTREAM_PEEK_BYTES)])
        if size is not None and size[0] * size[1] > rows * cols:
            return "a compressed frame declares more pixels than Rows x Columns"
    return None
