"""Tool masks -> one BINARY DICOM Segmentation (PS3.3 A.51) built by highdicom.

OHIF overlays a SEG only when it references the source series and each frame's source image
(ReferencedSeriesSequence, per-frame DerivationImageSequence); highdicom writes both when it is
given the source datasets, so every source instance is passed in (``Volume.datasets``). Empty
frames are omitted (frames = slices x segments), and segments with an empty mask are left out
altogether so segment numbers stay contiguous.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from config.schema import OutputConfig
from image_model.findings import AlgorithmInfo, Segment
from image_model.measure import pixel_spacing_known
from image_model.volume import Volume
from sr_templates.charset import character_set_for, charset_kwargs, source_charset
from sr_templates.equipment import CONTENT_LABEL, Equipment
from sr_templates.identity import OutputIdentity
from sr_templates.seg.content import EncodedSegment, encode_segments, segment_description
from sr_templates.source import source_headers

SERIES_DESCRIPTION = "MMedAgent segmentation"
CONTENT_DESCRIPTION = "Segments produced by the MMedAgent node tools"
ASSUMED_SPACING_DESCRIPTION = "MMedAgent segments; source pixel spacing unknown, 1 mm assumed"


class Segmentation(hd.seg.Segmentation):
    """highdicom's Segmentation, completed for projection sources (CR/DX) with no Frame of
    Reference: the General Image module then requires Patient Orientation (Type 2C, PS3.3
    C.7.6.1.1.1), which highdicom 0.28 does not write. The SEG frame is the source's pixel matrix,
    so the source's row/column directions apply; Type 2 allows it empty when the source has none.
    """

    def __init__(self, source_images: Sequence[Dataset], **kwargs: Any) -> None:
        super().__init__(source_images=source_images, **kwargs)
        if "FrameOfReferenceUID" not in self and "PatientOrientation" not in self:
            self.PatientOrientation = source_images[0].get("PatientOrientation", "")


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
    union = np.zeros(volume.shape, dtype=bool)
    for mask in masks:
        if np.logical_and(union, mask).any():
            return np.stack(masks, axis=-1)
        union |= mask
    labels = np.zeros(volume.shape, dtype=np.uint8 if len(masks) < 256 else np.uint16)
    for item, mask in zip(encoded, masks, strict=True):
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


def pixel_measures(volume: Volume) -> dict[str, Any]:
    """The shared Pixel Measures of a SEG on a source without a Frame of Reference (a CR or DX).

    highdicom copies Pixel Measures from a source with a Frame of Reference, and writes none for
    one without, leaving the SEG's Shared Functional Groups item empty, which viewers cannot read
    (OHIF reads ``SharedFunctionalGroupsSequence[0].PixelMeasuresSequence``; highdicom's own
    reader needs its Pixel Spacing). So the SEG states the spacing the loader used: Pixel Spacing,
    else Imager Pixel Spacing (PS3.3 10.7.1.3); with none usable, the 1 mm the loader assumed,
    which the SEG's Content Description then says (:func:`content_description`) and the SR never
    uses for a size (it counts pixels). Slice Thickness (Type 1C there, but required by readers
    such as highdicom's) is the source's, else the loader's nominal 1 mm: a projection has none.
    Plane orientation and position need a Frame of Reference (PS3.3 C.7.6.16.2.3-4), so a source
    without one gets neither.
    """
    if "FrameOfReferenceUID" in volume.datasets[0]:
        return {}
    dz, dy, dx = volume.spacing
    return {"pixel_measures": hd.PixelMeasuresSequence(pixel_spacing=(dy, dx), slice_thickness=dz)}


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
    seg = Segmentation(
        source_images=source_headers(volume),
        pixel_array=_pixel_array(volume, encoded),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
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
        series_description=SERIES_DESCRIPTION,
        omit_empty_frames=True,
        **pixel_measures(volume),
        **charset_kwargs(charset),
    )
    return seg, encoded
