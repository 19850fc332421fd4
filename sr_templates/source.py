"""The source headers every output is built from, prepared before highdicom copies them.

highdicom copies the Patient and Study modules (and, for a SEG, Pixel Spacing) from the source
images it is given. Two things real sources carry would make the copy invalid, so the encoders
hand highdicom a corrected copy of each header (the caller's datasets are never changed), and the
objects come out right when they are built, never patched afterwards:

* Patient Identity Removed = YES without De-identification Method or its code sequence: in the
  output that makes the method Type 1C required (PS3.3 C.7.1.1), so the copy states that the
  source did not say how (the method is what the source said, nothing invented);
* a non-positive Pixel Spacing (real CR files carry ``0\\0``): invalid in a SEG's Pixel Measures
  (PS3.3 C.7.6.2.1.1, C.7.6.16.2.1), so the copy leaves it out;
* slice positions in patient coordinates without the Frame of Reference UID that names their
  coordinate system (Type 1 in CT/MR, PS3.3 C.7.4.1; real files lack it, e.g. pydicom-data's
  CQ500 slice): a SEG of such an image must name one, so the copy carries a UID derived from the
  source series, the same for every output of that series and every run.

A SEG of a projection image (CR, DX: no plane in the patient) needs a plane all the same: OHIF
reads the SEG's plane orientation, dcmqi its plane orientation and position, Cornerstone aligns
frames by orientation. :func:`seg_source_headers` gives highdicom such an image on an *assumed
2D image plane* (see :func:`assumed_plane_header`), so highdicom builds the Plane Orientation,
Plane Position and Pixel Measures of the SEG itself.
"""
from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from image_model.volume import Volume
from sr_templates.identity import derived_uid

#: What names the Frame of Reference of the assumed image plane (hashed with the source series).
ASSUMED_PLANE_KEY = "assumed-2d-image-plane"

#: De-identification Method for a source that sets Patient Identity Removed but does not say how.
UNSTATED_DEIDENTIFICATION = "unstated in source (Patient Identity Removed: YES)"
PIXEL_SPACING_TAG = Tag("PixelSpacing")


def _usable_pixel_spacing(ds: Dataset) -> bool:
    spacing = ds.get("PixelSpacing")
    return spacing is None or (len(spacing) == 2 and all(float(v) > 0 for v in spacing))


def _deidentification_unstated(ds: Dataset) -> bool:
    return (
        str(ds.get("PatientIdentityRemoved", "")).upper() == "YES"
        and not ds.get("DeidentificationMethod")
        and not ds.get("DeidentificationMethodCodeSequence")
    )


def _frame_of_reference_unnamed(ds: Dataset) -> bool:
    return "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "FrameOfReferenceUID" not in ds


def source_frame_of_reference(ds: Dataset) -> str:
    """The Frame of Reference UID the outputs use for ``ds``: its own, else one derived from its
    series (see module doc)."""
    if "FrameOfReferenceUID" in ds:
        return str(ds.FrameOfReferenceUID)
    return derived_uid("frame-of-reference", str(ds.get("SeriesInstanceUID", "")))


def source_header(ds: Dataset) -> Dataset:
    """``ds`` itself when highdicom can copy it as it is, else a corrected copy (see module doc)."""
    if _usable_pixel_spacing(ds) and not _deidentification_unstated(ds) and not _frame_of_reference_unnamed(ds):
        return ds
    # A new element dict (Dataset(ds) would share it): the caller's dataset is untouched.
    copy = Dataset({tag: elem for tag, elem in ds.items() if tag != PIXEL_SPACING_TAG or _usable_pixel_spacing(ds)})
    if _deidentification_unstated(ds):
        copy.DeidentificationMethod = UNSTATED_DEIDENTIFICATION
    if _frame_of_reference_unnamed(ds):
        copy.FrameOfReferenceUID = source_frame_of_reference(ds)
        copy.PositionReferenceIndicator = ds.get("PositionReferenceIndicator", "")
    return copy


def source_headers(volume: Volume) -> list[Dataset]:
    """The headers of ``volume``'s source images, in slice order, ready for highdicom to copy."""
    return [source_header(ds) for ds in volume.datasets]


def has_assumed_plane(volume: Volume) -> bool:
    """True for a single image the loader placed on its assumed plane: no Image Position or
    Orientation (Patient), the geometry of a projection radiograph (PS3.3 C.8.11.7 DX, C.8.1 CR)."""
    return volume.shape[0] == 1 and not volume.frame_numbers and str(volume.meta.get("geometry", "")).startswith(
        "projection"
    )


def assumed_plane_frame_of_reference(volume: Volume) -> str:
    """The Frame of Reference UID of the assumed plane of ``volume``'s image: derived from its
    series, the same for every output of that series and every run. Never the source's own Frame
    of Reference, even where it names one: the plane is not in the patient's coordinates."""
    return derived_uid(ASSUMED_PLANE_KEY, volume.series_instance_uid)


def assumed_plane_header(volume: Volume) -> Dataset:
    """The image of ``volume`` as highdicom should see it for a SEG: on an assumed 2D plane.

    The convention (stated here, and nowhere claimed to be the patient's geometry): the image
    lies in its own Frame of Reference (:func:`assumed_plane_frame_of_reference`), its rows along
    x and columns along y (Image Orientation 1\\0\\0\\0\\1\\0), its top-left pixel at the
    origin (Image Position 0\\0\\0), its pixels as large as the loader measured them: Pixel
    Spacing, else Imager Pixel Spacing (PS3.3 10.7.1.3), else 1 mm, which the SEG's Content
    Description then says; Slice Thickness is the loader's nominal one. This is the plane the
    loader gives such an image (image_model.loader) and the one Cornerstone assumes for an
    image without a plane, so the SEG's frames land on the image pixel for pixel. The per-frame
    Derivation Image references still name the real source image: that, not the plane, is
    what ties the SEG to the image (PS3.3 C.8.20.3: Source Image Sequence).
    """
    ds = source_header(volume.datasets[0])
    copy = Dataset({tag: elem for tag, elem in ds.items()})
    dz, dy, dx = volume.spacing
    copy.FrameOfReferenceUID = assumed_plane_frame_of_reference(volume)
    copy.PositionReferenceIndicator = ""
    copy.ImageOrientationPatient = [float(v) for v in volume.orientation]
    copy.ImagePositionPatient = [float(v) for v in volume.positions[0]]
    copy.PixelSpacing = [float(dy), float(dx)]
    copy.SliceThickness = float(dz)
    return copy


def seg_source_headers(volume: Volume) -> list[Dataset]:
    """The source headers a SEG of ``volume`` is built from: :func:`source_headers`, with a
    projection image on its assumed plane (:func:`assumed_plane_header`)."""
    if has_assumed_plane(volume):
        return [assumed_plane_header(volume)]
    return source_headers(volume)
