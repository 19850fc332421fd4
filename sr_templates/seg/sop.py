"""Tool masks -> one DICOM Segmentation (PS3.3 A.51) built by highdicom.

OHIF overlays a SEG only when it references the source series and each frame's source image
(ReferencedSeriesSequence, per-frame DerivationImageSequence); highdicom writes both when it is
given the source datasets, so every source instance is passed in (``Volume.datasets``). Empty
frames are omitted (frames = slices x segments), and segments with an empty mask are left out
altogether so segment numbers stay contiguous. A projection image (CR, DX) is given to highdicom
on an assumed image plane (:func:`sr_templates.source.assumed_plane_header`), so its SEG has the
plane orientation, position and pixel measures every viewer reads.

The Segmentation Type is BINARY, one bit per pixel, except where that encoding trips a reader:
see :func:`segmentation_type`.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np

from config.schema import OutputConfig
from image_model.findings import AlgorithmInfo, Segment
from image_model.measure import pixel_spacing_known
from image_model.volume import Volume
from sr_templates.charset import character_set_for, charset_kwargs, source_charset
from sr_templates.equipment import CONTENT_LABEL, Equipment
from sr_templates.identity import OutputIdentity
from sr_templates.seg.content import EncodedSegment, encode_segments, segment_description
from sr_templates.source import seg_source_headers

SERIES_DESCRIPTION = "MMedAgent segmentation"
CONTENT_DESCRIPTION = "Segments produced by the MMedAgent node tools"
ASSUMED_SPACING_DESCRIPTION = "MMedAgent segments; source pixel spacing unknown, 1 mm assumed"
#: Content Creator's Name (Type 2, PS3.3 C.10.9 Content Identification Macro): the node is no
#: person, so the value is empty but present (dcmqi warns when it is absent).
CONTENT_CREATOR_NAME = ""
#: A FRACTIONAL SEG's Maximum Fractional Value (PS3.3 C.8.20.2.3): 1 means "fully occupied", so the
#: stored values are the mask's own 0 and 1 (dcmqi writes them unchanged, as for a BINARY SEG).
MAX_FRACTIONAL_VALUE = 1


class Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, its Pixel Data padded as PS3.5 7.1.1 says.

    A value of odd length is padded to even with one NULL byte (00H). highdicom 0.28 pads Pixel
    Data with the character "0" (30H) instead. For a BINARY SEG the byte lies after the last
    pixel's bit and readers skip it; a single-frame FRACTIONAL SEG of an odd pixel count
    (:func:`segmentation_type`) hands its readers the whole value as the frame, and OHIF counts
    the pad byte as one more pixel, of value 48, neither 0 nor the maximum, and refuses the SEG
    as truly fractional. So the constructor ends by correcting highdicom's pad byte to NULL: the
    one byte past the frames' own length, nothing else.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        frames_bytes = -(-int(self.NumberOfFrames) * int(self.Rows) * int(self.Columns) * int(self.BitsAllocated) // 8)
        if frames_bytes % 2 and len(self.PixelData) == frames_bytes + 1:
            self.PixelData = self.PixelData[:frames_bytes] + b"\x00"


def _segment_array(volume: Volume, encoded: Sequence[EncodedSegment]) -> np.ndarray:
    """The masks as one array in volume slice order: a label map (slices, rows, cols) holding
    segment numbers when no two segments share a voxel, else a (slices, rows, cols, segments)
    bool stack. Both encode the same BINARY frames; the label map is the smaller one and spares
    highdicom its per-voxel overlap check (seconds on a 512x512x100 volume)."""
    for item in encoded:
        if item.segment.mask.shape != volume.shape:
            raise ValueError(
                f"segment {item.segment.label!r}: mask shape {item.segment.mask.shape} "
                f"!= volume shape {volume.shape}"
            )
    masks = [np.asarray(item.segment.mask, dtype=bool) for item in encoded]
    labels = np.zeros(volume.shape, dtype=np.uint8 if len(masks) < 256 else np.uint16)
    for item, mask in zip(encoded, masks, strict=True):
        if labels[mask].any():  # a voxel already taken: segments overlap
            del labels
            return np.stack(masks, axis=-1)
        labels[mask] = item.segment_number
    return labels


def _pixel_array(volume: Volume, encoded: Sequence[EncodedSegment]) -> np.ndarray:
    """The segment array with frames in the source's frame order.

    Single-frame series: one frame per source instance, in ``volume.datasets`` order (= slice
    order). Multi-frame source: highdicom wants one frame per *source frame*, so each slice's mask
    goes to its ``frame_numbers`` position and unused source frames stay empty (then omitted).
    """
    array = _segment_array(volume, encoded)
    if not volume.frame_numbers:
        return array
    n_frames = int(volume.datasets[0].NumberOfFrames)
    frames = np.zeros((n_frames, *array.shape[1:]), dtype=array.dtype)
    frames[np.asarray(volume.frame_numbers) - 1] = array
    return frames


def frame_count(encoded: Sequence[EncodedSegment]) -> int:
    """Frames of the SEG: one per segment and slice where that segment has a pixel (the others
    are omitted)."""
    return sum(int(np.any(item.segment.mask.reshape(len(item.segment.mask), -1), axis=1).sum()) for item in encoded)


def segmentation_type(volume: Volume, encoded: Sequence[EncodedSegment]) -> hd.seg.SegmentationTypeValues:
    """BINARY, unless its packed Pixel Data would be an odd number of bytes: then FRACTIONAL.

    A BINARY SEG packs its frames' pixels one bit each, end to end (PS3.5 8.1.1), and a value of
    odd length is padded to even (PS3.5 7.1.1). Cornerstone's SEG reader (@cornerstonejs/adapters
    5.6.8, what OHIF 3.13 uses) accepts only the unpadded length and refuses the object, so any
    BINARY SEG whose frames x rows x columns / 8 rounds up to an odd count does not open there:
    a single-frame CR of 1955 x 1841 pixels is one. Such a SEG is written FRACTIONAL (OCCUPANCY,
    Maximum Fractional Value 1): one byte per pixel holding the mask's 0 or 1, the same segments
    and frames, valid for every reader of PS3.3 C.8.20.2.3, and read by OHIF, Cornerstone (which
    takes a fractional SEG whose values are all 0 or the maximum as binary) and dcmqi alike.
    """
    _, rows, cols = volume.shape
    packed_bytes = -(-frame_count(encoded) * rows * cols // 8)
    if packed_bytes % 2:
        return hd.seg.SegmentationTypeValues.FRACTIONAL
    return hd.seg.SegmentationTypeValues.BINARY


def content_description(volume: Volume) -> str:
    """Content Description (LO, 64 characters): what the SEG holds, and that its pixel spacing is
    assumed when the source has none."""
    if pixel_spacing_known(volume):
        return CONTENT_DESCRIPTION
    return ASSUMED_SPACING_DESCRIPTION


def build_seg(
    volume: Volume,
    segments: Sequence[Segment],
    algorithm: AlgorithmInfo | Sequence[AlgorithmInfo],
    identity: OutputIdentity,
    output_cfg: OutputConfig,
) -> tuple[Segmentation | None, list[EncodedSegment]]:
    """Build the SEG (None when no segment has a voxel set) and say which segment got which
    number and colour (the SR and the overlays need it).

    ``algorithm`` is either the one algorithm behind every segment, or one per segment (in the
    same order) when the segments come from several tools.
    """
    algorithms = [algorithm] * len(segments) if isinstance(algorithm, AlgorithmInfo) else list(algorithm)
    encoded = encode_segments(segments, algorithms)
    if not encoded:
        return None, []
    equipment = Equipment.from_config(output_cfg)
    charset = character_set_for(
        (text for item in encoded for text in (item.segment.label, item.algorithm.name, item.algorithm.version)),
        source_charset(volume),
    )
    kind = segmentation_type(volume, encoded)
    fractional: dict[str, Any] = {}
    if kind == hd.seg.SegmentationTypeValues.FRACTIONAL:
        fractional = {"fractional_type": hd.seg.SegmentationFractionalTypeValues.OCCUPANCY,
                      "max_fractional_value": MAX_FRACTIONAL_VALUE}
    seg = Segmentation(
        source_images=seg_source_headers(volume),
        pixel_array=_pixel_array(volume, encoded),
        segmentation_type=kind,
        segment_descriptions=[segment_description(item) for item in encoded],
        series_instance_uid=identity.seg_series_uid,
        series_number=identity.seg_series_number,
        sop_instance_uid=identity.seg_instance_uid,
        instance_number=1,
        manufacturer=equipment.manufacturer,
        manufacturer_model_name=equipment.model_name,
        software_versions=equipment.software_versions,
        device_serial_number=equipment.serial_number,
        content_label=CONTENT_LABEL,
        content_description=content_description(volume),
        content_creator_name=CONTENT_CREATOR_NAME,
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
        **fractional,
        **charset_kwargs(charset),
    )
    return seg, encoded
