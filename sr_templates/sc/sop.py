"""Secondary-capture overlays: the fallback for destinations that reject Segmentation Storage.

Some PACS refuse the Segmentation Storage SOP class (PS3.4 B.5). For them the node sends, instead
of the SEG, one Secondary Capture Image (PS3.3 A.8.1) per source slice that has mask pixels: the
slice windowed to grey, each segment as a translucent colour fill with an opaque outline. The
images form a new derived series in the source study; every image points back to its source
slice (Referenced Image Sequence and Source Image Sequence, PS3.3 C.7.6.1 / C.12.4) and says in
Derivation Description and Image Comments that it is an overlay not meant for primary diagnosis.

No text is drawn into the pixels (the colour legend is written in Image Comments), so Burned In
Annotation is NO unless the source slice itself has burned-in text. UIDs are derived from the
output identity, so a re-run over the same instances yields the same overlay UIDs.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as std_codes
from pydicom.uid import ExplicitVRLittleEndian

from config.schema import OutputConfig
from image_model.volume import Volume
from sr_templates.charset import character_set_for, charset_kwargs, source_charset
from sr_templates.equipment import Equipment
from sr_templates.identity import OutputIdentity
from sr_templates.sc.render import grey_window, render_slice, to_grey
from sr_templates.seg import EncodedSegment
from sr_templates.source import source_header

SERIES_DESCRIPTION = "MMedAgent overlay (not for diagnosis)"
#: Appended to every overlay's Derivation Description and Image Comments.
DISCLAIMER = "not for primary diagnosis"
#: Derivation Description is ST: at most 1024 characters (PS3.5 Table 6.2-1).
MAX_ST_LENGTH = 1024
BURNED_IN_YES, BURNED_IN_NO = "YES", "NO"


@dataclass(frozen=True)
class SliceReference:
    """The source image (and frame, for a multi-frame source) one overlay was made from."""

    sop_class_uid: str
    sop_instance_uid: str
    frame_number: int | None = None

    def item(self, purpose: CodedConcept | None = None) -> Dataset:
        """An Image SOP Instance Reference Macro item (PS3.3 Table 10-3)."""
        ds = Dataset()
        ds.ReferencedSOPClassUID = self.sop_class_uid
        ds.ReferencedSOPInstanceUID = self.sop_instance_uid
        if self.frame_number is not None:
            ds.ReferencedFrameNumber = self.frame_number
        if purpose is not None:
            ds.PurposeOfReferenceCodeSequence = [purpose]
        return ds


class OverlayImage(hd.sc.SCImage):
    """highdicom's SC image, completed with the General Image / General Reference attributes that
    tie a derived image to its source (PS3.3 C.7.6.1, C.12.4), which SCImage has no argument for:
    Referenced and Source Image Sequences, Derivation Description and Code (CID 7203),
    Image Comments and Burned In Annotation; and the source's body part and image laterality.

    Laterality (General Series, Type 2C, PS3.3 C.7.3.1) is required when the body part is paired
    and no Image Laterality is sent; when the source names neither a body part nor a laterality
    the pairing is unknown, so it is written empty (Type 2: "unknown")."""

    def __init__(
        self,
        *args: Any,
        source: SliceReference,
        derivation_description: str,
        image_comments: str,
        burned_in_annotation: bool,
        body_part_examined: str | None = None,
        image_laterality: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        if body_part_examined:
            self.BodyPartExamined = body_part_examined
        if image_laterality:
            self.ImageLaterality = image_laterality
        if "Laterality" not in self and not image_laterality and not body_part_examined:
            self.Laterality = ""
        self.ReferencedImageSequence = [source.item()]
        self.SourceImageSequence = [
            source.item(CodedConcept(*std_codes.DCM.SourceImageForImageProcessingOperation))
        ]
        self.DerivationDescription = derivation_description[:MAX_ST_LENGTH]
        self.DerivationCodeSequence = [CodedConcept(*std_codes.DCM.SegmentationImageDerivation)]
        self.ImageComments = image_comments
        self.BurnedInAnnotation = BURNED_IN_YES if burned_in_annotation else BURNED_IN_NO


# --------------------------------------------------------------------------- geometry / references


def _axis_letter(cosines: Sequence[float]) -> str:
    """The patient direction (PS3.3 C.7.6.1.1.1, LPS: +x L, +y P, +z H) nearest a direction."""
    axis = int(np.argmax(np.abs(cosines)))
    positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return positive if cosines[axis] > 0 else negative


def patient_orientation(volume: Volume) -> tuple[str, str]:
    """Patient Orientation of the overlays (the source's pixel matrix, so the source's row and
    column directions): the source's own value when it has one, else the nearest patient axis of
    each image direction (an oblique plane is named by its dominant axis)."""
    given = volume.datasets[0].get("PatientOrientation")
    if given is not None and len(given) == 2 and all(str(v) in {"A", "P", "R", "L", "H", "F"} for v in given):
        return str(given[0]), str(given[1])
    row, col = volume.orientation[:3], volume.orientation[3:]
    return _axis_letter(row), _axis_letter(col)


def slice_reference(volume: Volume, index: int) -> SliceReference:
    if volume.frame_numbers:
        ds = volume.datasets[0]
        return SliceReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID), volume.frame_numbers[index])
    ds = volume.datasets[index]
    return SliceReference(str(ds.SOPClassUID), str(ds.SOPInstanceUID))


def _source_of(volume: Volume, index: int) -> Dataset:
    return volume.datasets[0] if volume.frame_numbers else volume.datasets[index]


def _laterality_kwargs(ds: Dataset) -> dict[str, Any]:
    """The source's body part and lateralities (General Series / General Image), when valid."""
    out: dict[str, Any] = {}
    if ds.get("BodyPartExamined"):
        out["body_part_examined"] = str(ds.BodyPartExamined)
    if str(ds.get("Laterality", "")) in {"R", "L"}:
        out["laterality"] = str(ds.Laterality)
    if str(ds.get("ImageLaterality", "")) in {"R", "L", "U", "B"}:
        out["image_laterality"] = str(ds.ImageLaterality)
    return out


def legend(encoded: Sequence[EncodedSegment]) -> str:
    """``Right lung (bluish green), Left lung (sky blue)``: what each colour is."""
    return ", ".join(f"{item.segment.label} ({item.colour.name})" for item in encoded)


# --------------------------------------------------------------------------- the images


def overlay_series_uid(identity: OutputIdentity) -> str:
    return identity.item_uid("overlay-series")


def overlay_instance_uid(identity: OutputIdentity, source: SliceReference) -> str:
    return identity.item_uid("overlay-image", source.sop_instance_uid, str(source.frame_number or 0))


def build_overlays(
    volume: Volume,
    encoded: Sequence[EncodedSegment],
    identity: OutputIdentity,
    output_cfg: OutputConfig,
) -> list[OverlayImage]:
    """One RGB Secondary Capture image per slice with any mask pixel, in slice order (Instance
    Number 1..n); empty when no segment has a pixel."""
    if not encoded:
        return []
    for item in encoded:
        if item.segment.mask.shape != volume.shape:
            raise ValueError(
                f"segment {item.segment.label!r}: mask shape {item.segment.mask.shape} "
                f"!= volume shape {volume.shape}"
            )
    masks = [(item.colour.rgb, np.asarray(item.segment.mask, dtype=bool)) for item in encoded]
    window = grey_window(volume)
    monochrome1 = bool(volume.meta.get("monochrome1"))
    equipment = Equipment.from_config(output_cfg)
    description = f"mmed-node overlay of {legend(encoded)}; {DISCLAIMER}"
    charset = character_set_for([description], source_charset(volume))
    orientation = patient_orientation(volume)
    spacing = (float(volume.spacing[1]), float(volume.spacing[2]))
    series_uid = overlay_series_uid(identity)
    images: list[OverlayImage] = []
    for index in range(volume.shape[0]):
        on_slice = [(rgb, mask[index]) for rgb, mask in masks if mask[index].any()]
        if not on_slice:
            continue
        source_ds = _source_of(volume, index)
        source = slice_reference(volume, index)
        pixels = render_slice(to_grey(volume.pixels[index], window, monochrome1), on_slice)
        images.append(OverlayImage.from_ref_dataset(
            source_header(source_ds),
            pixel_array=pixels,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=output_cfg.overlay_series_number,
            sop_instance_uid=overlay_instance_uid(identity, source),
            instance_number=len(images) + 1,
            manufacturer=equipment.manufacturer,
            manufacturer_model_name=equipment.model_name,
            software_versions=equipment.software_versions,
            series_description=SERIES_DESCRIPTION,
            pixel_spacing=spacing,  # type: ignore[arg-type]  # highdicom 0.28 annotates it int
            patient_orientation=orientation,
            transfer_syntax_uid=ExplicitVRLittleEndian,
            source=source,
            derivation_description=description,
            image_comments=description,
            burned_in_annotation=str(source_ds.get("BurnedInAnnotation", "")).upper() == BURNED_IN_YES,
            **_laterality_kwargs(source_ds),
            **charset_kwargs(charset),
        ))
    return images
