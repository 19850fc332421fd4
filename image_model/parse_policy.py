"""The one parse policy: whether a DICOM dataset may be read at all, decided from its encoding
before any library parses it.

Every place that reads a header (the receive path, the Q/R index, the loader, dispatch) first
runs :func:`scan_dataset` or :func:`scan_file`. The scan walks the element structure without
recursion and without building values (PS3.5 7.1 data elements, 7.5 sequences and items, A.4
encapsulated pixel data) and refuses, with :class:`UnsafeDicom`, anything whose cost is not bounded
by :class:`ParseLimits`:

* a dataset larger than ``max_dataset_bytes`` (as encoded), or a Deflated Explicit VR Little
  Endian dataset (PS3.5 A.5) that inflates beyond ``max_inflated_bytes`` or by more than
  ``max_inflate_ratio`` (it is inflated in bounded steps and abandoned at the limit);
* sequences nested deeper than ``max_sequence_depth`` (pydicom reads nested sequences by
  recursion: 5000 levels exhaust the interpreter's stack), more than ``max_elements`` elements;
* lengths that run past the data or out of their sequence/item, items outside sequences,
  unbalanced delimiters, invalid VRs;
* pixel geometry (Rows x Columns x Samples per Pixel x Number of Frames, PS3.3 C.7.6.3) whose
  decoded samples, as the node holds them (float32, or Bits Allocated when wider), would take more
  than ``max_pixel_bytes``, and compressed frames whose own
  codestream header (JPEG SOF, JPEG 2000 SIZ, RLE header: PS3.5 A.4, G.5) declares more pixels than
  the DICOM header, since decoders allocate from the codestream.

Reasons name the limit or the fault, never a value read from the data (it may be patient data).
The scan reads a file through ``mmap`` and skips values it does not need, so pixel data is not
paged in. Values of wanted top-level elements come back raw (``ScanResult.values``).

This module imports nothing of ours; callers pass the limits in (the node builds them from
``node.limits`` in its config).
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.datadict import DicomDictionary
from pydicom.dataset import Dataset

from image_model.codestreams import fragments_fault

MiB = 1 << 20

#: Part 10 file: 128-byte preamble, then "DICM" (PS3.10 7.1).
PREAMBLE_LENGTH = 128
DICM_PREFIX = b"DICM"
#: Largest File Meta Information group accepted (it holds a few UIDs and AE titles).
MAX_META_BYTES = 64 * 1024
#: Inflated sizes below this are never refused for their ratio (a small dataset of zeros
#: compresses a thousandfold and costs nothing).
RATIO_FLOOR_BYTES = 1 * MiB

DEFLATED = "1.2.840.10008.1.2.1.99"
IMPLICIT_LITTLE = "1.2.840.10008.1.2"
EXPLICIT_BIG = "1.2.840.10008.1.2.2"

UNDEFINED = 0xFFFFFFFF
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA = 0x7FE00010, 0x7FE00008, 0x7FE00009
TRANSFER_SYNTAX_TAG = 0x00020010
ROWS, COLUMNS, SAMPLES, FRAMES, BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280002, 0x00280008, 0x00280100
GEOMETRY_TAGS = frozenset({ROWS, COLUMNS, SAMPLES, FRAMES, BITS_ALLOCATED})
#: (0008,0005) Specific Character Set: pydicom looks each term up as a codec name; a control
#: character (a NUL) makes it raise instead of falling back to the default repertoire. Printable
#: ASCII only (a valid CS is narrower, PS3.5 6.2; unknown names are the "bad charsets" tolerated).
SPECIFIC_CHARACTER_SET = 0x00080005
_CHARSET = re.compile(rb"[\x20-\x7e]*")
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
#: Every value representation of PS3.5 Table 6.2-1; two capitals that are none of them make pydicom
#: raise when the element is read.
KNOWN_VRS = LONG_VRS | frozenset({
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH", b"SL",
    b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
})
ITEM_TAG_LITTLE = b"\xfe\xff\x00\xe0"

_SEQ, _ITEM_FRAME = 0, 1
#: Bytes one decoded sample occupies in the loader's volume (float32).
WORKING_BYTES_PER_SAMPLE = 4


class UnsafeDicom(ValueError):
    """The data may not be parsed: it breaks a limit or is malformed. The message says which
    limit or fault, never a value from the data."""


@dataclass(frozen=True)
class ParseLimits:
    """What one dataset may cost to parse and decode. The node's ``node.limits`` config section
    has the same fields and defaults (config/schema.py); see README "Limits"."""

    max_dataset_bytes: int = 64 * MiB
    max_inflated_bytes: int = 64 * MiB
    max_inflate_ratio: float = 200.0
    max_pixel_bytes: int = 64 * MiB
    max_sequence_depth: int = 32
    max_elements: int = 250_000


@dataclass
class ScanResult:
    """What the scan learnt: raw values of the wanted top-level elements, sizes and counts."""

    transfer_syntax: str
    values: dict[int, bytes] = field(default_factory=dict)
    elements: int = 0
    depth: int = 0
    #: Size of the encoded dataset (after inflation for deflate).
    dataset_bytes: int = 0
    #: Decoded pixel size the header declares (None without pixel data).
    pixel_bytes: int | None = None

    def text(self, tag: int) -> str | None:
        """A wanted UI/CS/IS-like value as text (ASCII; padding removed), or None if absent."""
        raw = self.values.get(tag)
        return None if raw is None else raw.decode("ascii", "replace").rstrip("\x00 ")


def _sq_in_dictionary(tag: int) -> bool:
    entry = DicomDictionary.get(tag)
    return entry is not None and entry[0] == "SQ"


def _walk(
    buf: memoryview, implicit: bool, little: bool, limits: ParseLimits, wanted: frozenset[int], result: ScanResult
) -> list[tuple[int, int]]:
    """Walk every element of ``buf``; fill ``result``; return the encapsulated pixel data
    fragments ``(offset, length)`` (basic offset table excluded)."""
    end = len(buf)
    order = "<" if little else ">"
    tag_len = struct.Struct(order + "HHL")
    short_len = struct.Struct(order + "H")
    long_len = struct.Struct(order + "L")
    pos = 0
    depth = elements = 0
    fragments: list[tuple[int, int]] = []
    #: Open sequences and items: [kind, end offset (None: undefined length), implicit VR].
    stack: list[tuple[int, int | None, bool]] = []
    limit_end = end
    #: At the first element of a dataset (top level or item): pydicom decides there whether
    #: it is explicit or implicit VR whatever the transfer syntax says (an item of an explicit
    #: dataset may be implicit, PS3.5 6.2.2).
    at_start = True
    while True:
        while stack and stack[-1][1] is not None and pos >= stack[-1][1]:
            kind, frame_end, _ = stack.pop()
            if pos > frame_end:  # type: ignore[operator]
                raise UnsafeDicom("an element runs past the end of its sequence or item")
            depth -= kind == _SEQ
            limit_end = next((f[1] for f in reversed(stack) if f[1] is not None), end)
        if pos >= end:
            if stack:
                raise UnsafeDicom("the dataset ends inside a sequence")
            break
        if pos + 8 > limit_end:
            raise UnsafeDicom("truncated element header")
        group, elem, length = tag_len.unpack_from(buf, pos)
        tag = group << 16 | elem
        elements += 1
        if elements > limits.max_elements:
            raise UnsafeDicom(f"more than {limits.max_elements} data elements (node.limits.max_elements)")
        inner = stack[-1] if stack else None
        if group == 0xFFFE:
            pos += 8
            if tag == ITEM:
                if inner is None or inner[0] != _SEQ:
                    raise UnsafeDicom("an item outside a sequence")
                if length == UNDEFINED:
                    stack.append((_ITEM_FRAME, None, inner[2]))
                else:
                    if pos + length > limit_end:
                        raise UnsafeDicom("an item length runs past the data")
                    stack.append((_ITEM_FRAME, pos + length, inner[2]))
                    limit_end = pos + length
                at_start = True
            elif tag == ITEM_END and inner is not None and inner[0] == _ITEM_FRAME and inner[1] is None:
                stack.pop()
            elif tag == SEQUENCE_END and inner is not None and inner[0] == _SEQ and inner[1] is None:
                stack.pop()
                depth -= 1
            else:
                raise UnsafeDicom("an unbalanced item or sequence delimiter")
            continue
        if inner is not None and inner[0] == _SEQ:
            raise UnsafeDicom("a data element directly inside a sequence (items expected)")
        frame_implicit = inner[2] if inner is not None else implicit
        vr: bytes | None = None
        explicit_vr = False
        if not frame_implicit or (at_start and inner is None):
            vr = bytes(buf[pos + 4 : pos + 6])
            explicit_vr = 0x40 < vr[0] < 0x5B and 0x40 < vr[1] < 0x5B
            if at_start:
                frame_implicit = not explicit_vr
                if inner is None:
                    implicit = frame_implicit
                else:
                    stack[-1] = (inner[0], inner[1], frame_implicit)
        at_start = False
        if frame_implicit or not explicit_vr:
            # Implicit VR, or pydicom's per-element fallback for an explicit VR that is not two
            # capitals: read as implicit.
            vr = None
            length = long_len.unpack_from(buf, pos + 4)[0]
            pos += 8
        elif vr not in KNOWN_VRS:
            raise UnsafeDicom("an unknown value representation")
        elif vr in LONG_VRS:
            if pos + 12 > limit_end:
                raise UnsafeDicom("truncated element header")
            length = long_len.unpack_from(buf, pos + 8)[0]
            pos += 12
        else:
            length = short_len.unpack_from(buf, pos + 6)[0]
            pos += 8
        if length == UNDEFINED:
            if tag == PIXEL_DATA or vr in (b"OB", b"OW"):
                top_pixels = tag == PIXEL_DATA and not stack
                pos = _encapsulated(buf, pos, limit_end, tag_len, fragments if top_pixels else None)
                if top_pixels:
                    result.values.setdefault(PIXEL_DATA, b"")
                continue
            if vr in (None, b"SQ", b"UN"):
                depth += 1
                if depth > limits.max_sequence_depth:
                    raise UnsafeDicom(
                        f"sequences nested deeper than {limits.max_sequence_depth} (node.limits.max_sequence_depth)")
                result.depth = max(result.depth, depth)
                stack.append((_SEQ, None, frame_implicit or vr == b"UN"))
                continue
            raise UnsafeDicom("an undefined length on an element that is not a sequence")
        if pos + length > limit_end:
            raise UnsafeDicom("a value length runs past the data")
        is_sequence = vr == b"SQ"
        if not is_sequence and (vr is None or vr == b"UN") and length >= 8:
            is_sequence = _sq_in_dictionary(tag) or bytes(buf[pos : pos + 4]) == (
                ITEM_TAG_LITTLE if little or vr == b"UN" else b"\xff\xfe\xe0\x00")
        if is_sequence:
            depth += 1
            if depth > limits.max_sequence_depth:
                raise UnsafeDicom(
                    f"sequences nested deeper than {limits.max_sequence_depth} (node.limits.max_sequence_depth)")
            result.depth = max(result.depth, depth)
            if length:
                stack.append((_SEQ, pos + length, frame_implicit or vr == b"UN"))
                limit_end = pos + length
            else:
                depth -= 1
            continue
        if tag == SPECIFIC_CHARACTER_SET and vr not in (None, b"CS", b"UN"):
            # pydicom decodes it by its VR: a number where a charset name belongs makes every
            # later read of the file raise (found by the fuzzer).
            raise UnsafeDicom("Specific Character Set encoded with a VR other than CS (PS3.6)")
        if not stack and (tag in wanted or tag in GEOMETRY_TAGS or tag == SPECIFIC_CHARACTER_SET):
            result.values[tag] = bytes(buf[pos : pos + length])
        if not stack and tag in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA):
            result.values.setdefault(tag, b"")
        pos += length
    result.elements = elements
    return fragments


def _encapsulated(
    buf: memoryview, pos: int, limit_end: int, tag_len: struct.Struct, fragments: list[tuple[int, int]] | None
) -> int:
    """Walk encapsulated items (PS3.5 A.4) from ``pos``; return the offset after the delimiter."""
    index = 0
    while True:
        if pos + 8 > limit_end:
            raise UnsafeDicom("encapsulated data without its sequence delimiter")
        group, elem, length = tag_len.unpack_from(buf, pos)
        tag = group << 16 | elem
        pos += 8
        if tag == SEQUENCE_END:
            return pos
        if tag != ITEM or length == UNDEFINED or pos + length > limit_end:
            raise UnsafeDicom("a malformed encapsulated fragment")
        if fragments is not None and index > 0:  # item 0 is the basic offset table
            fragments.append((pos, length))
        index += 1
        pos += length


# ---- pixel geometry -------------------------------------------------------------------------


def _us(result: ScanResult, tag: int, little: bool, default: int | None) -> int | None:
    raw = result.values.get(tag)
    if raw is None or len(raw) < 2:
        return default
    return int.from_bytes(raw[:2], "little" if little else "big")


def _frames(result: ScanResult) -> int:
    text = result.text(FRAMES)
    if not text:
        return 1
    try:
        value = int(text.split("\\")[0].strip() or "1")
    except ValueError:
        raise UnsafeDicom("Number of Frames is not an integer") from None
    if value < 0:
        raise UnsafeDicom("Number of Frames is negative")
    return max(value, 1)


def _check_geometry(result: ScanResult, little: bool, limits: ParseLimits) -> tuple[int, int] | None:
    """Declared decoded size against ``max_pixel_bytes``; returns (rows, columns) of an image."""
    has_pixels = any(t in result.values for t in (PIXEL_DATA, FLOAT_PIXEL_DATA, DOUBLE_PIXEL_DATA))
    if not has_pixels:
        return None
    rows, cols = _us(result, ROWS, little, 0), _us(result, COLUMNS, little, 0)
    samples = _us(result, SAMPLES, little, 1)
    bits = _us(result, BITS_ALLOCATED, little, 8)
    assert rows is not None and cols is not None and samples is not None and bits is not None
    # The size the node works with: every sample becomes a float32 (the loader's volume), 64-bit
    # float data stays 64-bit.
    pixel_bytes = rows * cols * samples * _frames(result) * max(WORKING_BYTES_PER_SAMPLE, (bits + 7) // 8)
    result.pixel_bytes = pixel_bytes
    if pixel_bytes > limits.max_pixel_bytes:
        raise UnsafeDicom(
            f"the header declares {pixel_bytes} bytes of decoded pixels "
            f"(node.limits.max_pixel_bytes is {limits.max_pixel_bytes})")
    return rows, cols


# ---- entry points ----------------------------------------------------------------------------


def _inflate(data: memoryview, limits: ParseLimits) -> bytearray:
    """Inflate a deflated dataset (PS3.5 A.5: raw deflate) in bounded steps (the buffer itself is
    returned: a bytes copy would hold the inflated dataset twice)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    ceiling = limits.max_inflated_bytes
    ratio_cap = max(RATIO_FLOOR_BYTES, int(limits.max_inflate_ratio * len(data)))
    out = bytearray()
    pending = bytes(data)
    step = 4 * MiB
    try:
        while True:
            chunk = inflater.decompress(pending, step)
            out += chunk
            if len(out) > ceiling:
                raise UnsafeDicom(
                    f"the deflated dataset inflates beyond {ceiling} bytes (node.limits.max_inflated_bytes)")
            if len(out) > ratio_cap:
                raise UnsafeDicom(
                    f"the deflated dataset inflates more than {limits.max_inflate_ratio:g} times "
                    "(node.limits.max_inflate_ratio)")
            pending = inflater.unconsumed_tail
            if not pending and not chunk:
                break
            if inflater.eof:
                break
    except zlib.error:
        raise UnsafeDicom("the deflated dataset is not a valid deflate stream") from None
    if not inflater.eof:
        # pydicom's reader inflates in one call, which refuses a stream without its final block.
        raise UnsafeDicom("the deflated dataset ends before its deflate stream does")
    out += inflater.flush()
    return out


def scan_dataset(
    data: bytes | bytearray | memoryview | mmap.mmap,
    transfer_syntax: str,
    limits: ParseLimits,
    wanted: Iterable[int] = (),
) -> ScanResult:
    """Check one encoded dataset (no file meta) in ``transfer_syntax`` against ``limits``.

    Raises :class:`UnsafeDicom`. ``wanted``: tags (ints) of top-level elements whose raw values
    are returned; Rows, Columns, Samples per Pixel, Number of Frames and Bits Allocated always are.
    """
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    if len(view) > limits.max_dataset_bytes:
        raise UnsafeDicom(
            f"a dataset of {len(view)} bytes (node.limits.max_dataset_bytes is {limits.max_dataset_bytes})")
    ts = transfer_syntax.rstrip("\x00 ")
    if ts == DEFLATED:
        view = memoryview(_inflate(view, limits))
    result = ScanResult(ts, dataset_bytes=len(view))
    implicit, little = ts == IMPLICIT_LITTLE, ts != EXPLICIT_BIG
    try:
        fragments = _walk(view, implicit, little, limits, frozenset(wanted), result)
        charset = result.values.get(SPECIFIC_CHARACTER_SET, b"").rstrip(b"\x00 ")
        if not _CHARSET.fullmatch(charset):
            raise UnsafeDicom("Specific Character Set holds control or non-ASCII characters (PS3.5 6.2)")
        shape = _check_geometry(result, little, limits)
        if shape is not None and fragments:
            why = fragments_fault(view, fragments, ts, shape)
            if why is not None:
                raise UnsafeDicom(why)
    except struct.error:
        raise UnsafeDicom("truncated element header") from None
    return result


def part10_meta(view: memoryview) -> tuple[str, int]:
    """(Transfer Syntax UID, offset of the dataset) from a Part 10 stream (PS3.10 7.1)."""
    if len(view) < PREAMBLE_LENGTH + 4 or bytes(view[PREAMBLE_LENGTH : PREAMBLE_LENGTH + 4]) != DICM_PREFIX:
        raise UnsafeDicom("not a DICOM Part 10 file (no DICM prefix after the preamble)")
    pos = start = PREAMBLE_LENGTH + 4
    syntax = ""
    while pos + 8 <= len(view) and view[pos : pos + 2] == b"\x02\x00":
        elem = int.from_bytes(view[pos + 2 : pos + 4], "little")
        vr = bytes(view[pos + 4 : pos + 6])
        if vr in LONG_VRS:
            length, head = int.from_bytes(view[pos + 8 : pos + 12], "little"), 12
        else:
            length, head = int.from_bytes(view[pos + 6 : pos + 8], "little"), 8
        if length == UNDEFINED or pos + head + length > len(view) or pos + head + length - start > MAX_META_BYTES:
            raise UnsafeDicom("malformed File Meta Information (PS3.10 7.1)")
        if (0x0002 << 16 | elem) == TRANSFER_SYNTAX_TAG:
            syntax = bytes(view[pos + head : pos + head + length]).decode("ascii", "replace").rstrip("\x00 ")
        pos += head + length
    return syntax or "1.2.840.10008.1.2.1", pos


def scan_part10(data: bytes | bytearray | memoryview | mmap.mmap, limits: ParseLimits, wanted: Iterable[int] = ()) -> ScanResult:
    """:func:`scan_dataset` for a Part 10 stream: preamble, file meta, then the dataset."""
    view = memoryview(data).cast("B") if not isinstance(data, memoryview) else data
    syntax, offset = part10_meta(view)
    return scan_dataset(view[offset:], syntax, limits, wanted)


def scan_file(path: Path, limits: ParseLimits, wanted: Iterable[int] = ()) -> ScanResult:
    """:func:`scan_part10` for a file, read through ``mmap`` (values it skips are not read)."""
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        if size > limits.max_dataset_bytes + MAX_META_BYTES + PREAMBLE_LENGTH + 4:
            raise UnsafeDicom(f"a file of {size} bytes (node.limits.max_dataset_bytes is {limits.max_dataset_bytes})")
        if size == 0:
            raise UnsafeDicom("an empty file")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            # The reason travels as text: an exception's traceback would keep views of the map
            # alive past its close.
            reason = None
            view = memoryview(mapped)
            try:
                result = scan_part10(view, limits, wanted)
            except UnsafeDicom as exc:
                reason = str(exc)
            finally:
                view.release()
    if reason is not None:
        raise UnsafeDicom(reason)
    return result


def read_checked(
    path: Path,
    limits: ParseLimits,
    *,
    stop_before_pixels: bool = False,
    specific_tags: list[str] | None = None,
    defer_size: int | None = None,
) -> Dataset:
    """Read a file with pydicom once :func:`scan_file` found it within ``limits``. Values longer
    than ``defer_size`` bytes are read from the file when first used (pydicom's deferred read).

    Raises :class:`UnsafeDicom`, also for what pydicom refuses that the policy let through (a
    disagreement: the exception's type is named, never its message, which may quote a value);
    OSError as it comes."""
    scan_file(path, limits)
    try:
        return dcmread(path, stop_before_pixels=stop_before_pixels, specific_tags=specific_tags, defer_size=defer_size)
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom's refusal, whatever its type
        raise UnsafeDicom(f"pydicom cannot read the file ({type(exc).__name__})") from None
