"""The one DICOM loader: a series on disk -> :class:`~image_model.volume.Volume`.

Every tool and encoder sees series through this module, so the awkward parts of real PACS traffic
are handled once, here:

* single-frame series (CT, MR, CR, DX, SC...) are ordered by position along the slice normal
  (PS3.3 C.7.6.2.1.1), not by InstanceNumber or file name;
* enhanced multi-frame CT/MR take geometry and rescale per frame from the functional groups
  (PS3.3 C.7.6.16), falling back to the shared groups; ``Volume.frame_numbers`` says which frame
  each slice came from;
* compressed transfer syntaxes decode through pydicom's pixel handlers (pylibjpeg plugins);
* stored values become modality units (Rescale Slope/Intercept or Modality LUT, PS3.3 C.11.1),
  int16 when every value is an integer in its range (CT in HU: half of float32), else float32;
  each instance's pixel data is read from its file only when its slice is decoded
  (:data:`DEFER_BYTES`), its encoded bytes released once decoded, and slices placed in the volume
  as it goes, so a load peaks near the volume's own size; MONOCHROME1 is flagged in ``meta`` (values are not
  inverted);
* duplicate SOP Instance UIDs are dropped; localizers mixed into an axial series are dropped;
  instances without pixel data are dropped (and the load refused if none is left);
* the kernel is asked to read the next files while one is parsed (:mod:`image_model.read_ahead`:
  the node's spool writes around the page cache, so a job's first reads go to the device);
* every file passes the parse policy (:mod:`image_model.parse_policy`: size, deflate, nesting,
  pixel geometry checked from the header before any decode) before pydicom reads it; a file it
  refuses is skipped with its reason in ``meta["skipped_files"]``, like an unreadable one, so one
  bad file does not fail its series;
* the source headers kept have their invalid but common values (dates like ``1901-02-03``,
  over-long names, ``PatientSex male``...) put in a valid form or emptied
  (:mod:`image_model.header_values`), so what outputs copy from them is valid DICOM.

Refused with :class:`LoadError` and a readable reason: nothing readable, several series, no pixel
data, mixed sizes / orientations / pixel spacings, several frames of reference, slices sharing a
position or not lying on one line, several slices without ImagePositionPatient.

Uneven slice spacing is *accepted*: ``spacing[0]`` is the mean gap, ``meta["uneven_spacing"]`` is
True and ``meta["slice_gaps_mm"]`` lists every gap; tools that integrate volumes must use
:func:`image_model.geometry.slice_thicknesses` (the CT lung tool does), which keeps volumes right
across a missing slice. Gantry tilt (a sheared stack) is accepted too: ``spacing[0]`` is measured
along the normal and ``meta["gantry_tilt_deg"]`` records the shear.

Source datasets are kept in slice order with their pixel data removed (highdicom builds SEGs from
headers alone).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from image_model.geometry import GeometryError, order_stack, same_orientation
from image_model.header_values import normalise_header, unreadable_value
from image_model.native_pixels import native_plane
from image_model.parse_policy import ParseLimits, UnsafeDicom, read_checked
from image_model.read_ahead import ReadAhead
from image_model.volume import Volume

log = logging.getLogger(__name__)

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
#: Values larger than this stay in the file until used: an instance's pixel data is read when its
#: slice is decoded, so the encoded pixel data of the whole series is never in memory at once (its
#: freed bytes would stay in the heap, between the headers kept, through the job: ~1x the
#: series' int16 size at 1000 slices).
DEFER_BYTES = 64 * 1024
INT16 = np.iinfo(np.int16)
#: What a slice's pixels become once placed in the volume (see ``_stack``).
PLACED = np.empty((0, 0), dtype=np.float32)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Pixel spacings differing by less than this are the same (mm).
SPACING_TOLERANCE_MM = 1e-3


class LoadError(ValueError):
    """The series cannot become one volume; the message says why in words a user can act on."""


@dataclass
class _Slice:
    """One 2D image (a single-frame instance or one frame of a multi-frame one) before stacking."""

    pixels: np.ndarray
    dataset: Dataset
    position: np.ndarray | None
    orientation: np.ndarray | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    frame_number: int | None = None


def load_series(source: Path | Sequence[Path], limits: ParseLimits | None = None) -> Volume:
    """Load one series from a folder (searched recursively), one file, or a list of files.
    ``limits``: the parse policy's (the node passes its ``node.limits``; default: the policy's
    defaults)."""
    paths = _collect_paths(source)
    meta: dict[str, Any] = {"notes": []}
    try:
        return _load(paths, meta, limits or ParseLimits())
    except LoadError:
        raise
    except Exception as exc:  # values pydicom or numpy could not take: a reason, not a crash
        raise LoadError(f"cannot load the series ({type(exc).__name__} while reading its values)") from exc


def _load(paths: list[Path], meta: dict[str, Any], limits: ParseLimits) -> Volume:
    datasets = _read_datasets(paths, meta, limits)
    datasets = _readable_headers(datasets, meta)
    datasets = _drop_duplicates(datasets, meta)
    datasets = _only_images(datasets, meta)
    _check_one_series(datasets)
    datasets = _drop_localizers(datasets, meta)
    multi = [ds for ds in datasets if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multi and len(datasets) > 1:
        raise LoadError(
            f"series mixes {len(multi)} multi-frame instance(s) with {len(datasets) - len(multi)} "
            "other instance(s); only one multi-frame instance per series is supported"
        )
    slices = _frames(datasets[0]) if multi else _single_frames(datasets, meta)
    _check_frames_of_reference(datasets)
    volume = _assemble(slices, meta)
    if not meta["notes"]:
        del meta["notes"]
    return volume


# --- reading ---------------------------------------------------------------------------------

def _collect_paths(source: Path | Sequence[Path]) -> list[Path]:
    if isinstance(source, (str, Path)):
        root = Path(source)
        if root.is_dir():
            paths = sorted(p for p in root.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR")
        elif root.is_file():
            paths = [root]
        else:
            raise LoadError(f"{root} does not exist")
    else:
        paths = [Path(p) for p in source]
    if not paths:
        raise LoadError(f"no files in {source}")
    return paths


def _read_datasets(paths: Sequence[Path], meta: dict[str, Any], limits: ParseLimits) -> list[Dataset]:
    datasets: list[Dataset] = []
    skipped: list[str] = []
    with ReadAhead(paths) as ahead:
        for index, path in enumerate(paths):
            ahead.reached(index)
            try:
                datasets.append(read_checked(path, limits, defer_size=DEFER_BYTES))
            except UnsafeDicom as exc:
                skipped.append(f"{path.name}: refused by the parse policy: {exc}")
            except (InvalidDicomError, EOFError, OSError, ValueError, KeyError) as exc:
                skipped.append(f"{path.name}: {exc.__class__.__name__}: {exc}")
    if skipped:
        meta["skipped_files"] = skipped
        meta["notes"].append(f"{len(skipped)} unreadable file(s) skipped")
    if not datasets:
        reason = skipped[0] if skipped else "no files"
        raise LoadError(f"no readable DICOM file ({reason})")
    return datasets


def _readable_headers(datasets: list[Dataset], meta: dict[str, Any]) -> list[Dataset]:
    """Leave out instances whose header values the loader cannot read (named, never quoted)."""
    kept: list[Dataset] = []
    for ds in datasets:
        keyword = unreadable_value(ds)
        if keyword is None:
            kept.append(ds)
        else:
            meta.setdefault("skipped_files", []).append(f"an instance with an unreadable {keyword}")
    if not kept:
        raise LoadError("no instance with readable header values")
    if len(kept) < len(datasets):
        meta["notes"].append(f"{len(datasets) - len(kept)} instance(s) with unreadable header values skipped")
    return kept


def _drop_duplicates(datasets: list[Dataset], meta: dict[str, Any]) -> list[Dataset]:
    seen: set[str] = set()
    unique: list[Dataset] = []
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid and uid in seen:
            continue
        seen.add(uid)
        unique.append(ds)
    if len(unique) < len(datasets):
        meta["duplicates_dropped"] = len(datasets) - len(unique)
        meta["notes"].append(f"{len(datasets) - len(unique)} duplicate SOP Instance UID(s) dropped")
    return unique


def _only_images(datasets: list[Dataset], meta: dict[str, Any]) -> list[Dataset]:
    images = [ds for ds in datasets if any(k in ds for k in PIXEL_KEYWORDS)]
    if not images:
        sop = str(getattr(datasets[0].get("SOPClassUID", None), "name", "unknown SOP class"))
        raise LoadError(f"no pixel data: none of the {len(datasets)} instance(s) is an image ({sop})")
    if len(images) < len(datasets):
        meta["notes"].append(f"{len(datasets) - len(images)} instance(s) without pixel data dropped")
    return images


def _check_one_series(datasets: list[Dataset]) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if len(series) > 1:
        raise LoadError(f"files belong to {len(series)} different series; load one series at a time")


def _drop_localizers(datasets: list[Dataset], meta: dict[str, Any]) -> list[Dataset]:
    def is_localizer(ds: Dataset) -> bool:
        return "LOCALIZER" in [str(v).upper() for v in (ds.get("ImageType") or [])]

    keep = [ds for ds in datasets if not is_localizer(ds)]
    if keep and len(keep) < len(datasets):
        meta["notes"].append(f"{len(datasets) - len(keep)} localizer image(s) dropped")
        return keep
    return datasets


def _check_frames_of_reference(datasets: list[Dataset]) -> None:
    uids = {str(ds.FrameOfReferenceUID) for ds in datasets if "FrameOfReferenceUID" in ds}
    if len(uids) > 1:
        raise LoadError(f"series spans {len(uids)} frames of reference; positions are not comparable")


# --- pixels ----------------------------------------------------------------------------------

def _decode(ds: Dataset) -> np.ndarray:
    native = native_plane(ds)  # the common case without pydicom's handlers
    if native is not None:
        return native
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:  # any decoder's failure means undecodable pixel data
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", str(ts))
        raise LoadError(f"cannot decode pixel data ({name}): {exc}") from exc


def _to_gray(array: np.ndarray, ds: Dataset) -> np.ndarray:
    """Colour images become luminance (ITU-R BT.601); pydicom already converted YBR to RGB."""
    if int(ds.get("SamplesPerPixel", 1)) == 1:
        return array
    # One channel at a time into one float32 plane: a float32 copy of all three samples and the
    # weighted product would be ~8x the plane, the largest cost of any one instance in a job.
    gray = np.multiply(array[..., 0], np.float32(0.299), dtype=np.float32)
    part = np.empty_like(gray)
    for channel, weight in ((1, 0.587), (2, 0.114)):
        np.multiply(array[..., channel], np.float32(weight), out=part, dtype=np.float32)
        gray += part
    return gray


def _modality_values(array: np.ndarray, ds: Dataset) -> np.ndarray:
    """Stored values to modality units, float32 (PS3.3 C.11.1). The common linear case (Rescale
    Slope/Intercept, no Modality LUT) is computed in float32 in place: pydicom's general path
    goes through a float64 copy, twice the volume's memory (it bounds what one instance may
    cost, see parse_policy.max_pixel_bytes)."""
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        return array  # colour has no Modality LUT (PS3.3 C.7.6.3.1.2): luminance follows (_to_gray)
    if "ModalityLUTSequence" not in ds and "RescaleSlope" in ds and "RescaleIntercept" in ds:
        try:
            slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
        except (TypeError, ValueError):
            slope, intercept = 1.0, 0.0
        exact = _int16_values(array, slope, intercept)
        if exact is not None:
            return exact
        values = array.astype(np.float32)
        if slope != 1.0:
            values *= np.float32(slope)
        if intercept:
            values += np.float32(intercept)
        return values
    if "ModalityLUTSequence" not in ds and "RescaleSlope" not in ds:
        exact = _int16_values(array, 1.0, 0.0)
        if exact is not None:
            return exact
    return np.asarray(apply_modality_lut(array, ds), dtype=np.float32)


def _int16_values(array: np.ndarray, slope: float, intercept: float) -> np.ndarray | None:
    """``array * slope + intercept`` as int16 when every value is an integer in int16's range
    (integer stored values, integer slope and intercept: CT in HU, most MR): the same values as
    float32 in half the memory. None otherwise (the caller computes float32)."""
    if array.dtype.kind not in "iu" or array.size == 0 or not (slope.is_integer() and intercept.is_integer()):
        return None
    ends = (int(array.min()) * int(slope) + int(intercept), int(array.max()) * int(slope) + int(intercept))
    if min(ends) < INT16.min or max(ends) > INT16.max:
        return None
    # In int16 throughout: its arithmetic wraps modulo 2**16, and a result known to lie in
    # int16's range is exact whatever the intermediate values (no int32 copy of the plane).
    values = array.astype(np.int16)
    if slope != 1.0:
        values *= np.int16(_wrap16(int(slope)))
    if intercept:
        values += np.int16(_wrap16(int(intercept)))
    return values


def _wrap16(value: int) -> int:
    """``value`` modulo 2**16, as a signed 16-bit integer."""
    return (value + 0x8000) % 0x10000 - 0x8000


def _floats(value: Any, n: int) -> np.ndarray | None:
    if value is None:
        return None
    try:
        out = np.array([float(v) for v in value], dtype=float)
    except (TypeError, ValueError):
        return None
    return out if out.size == n else None


def _pixel_spacing(ds: Dataset) -> tuple[tuple[float, float] | None, str]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        value = _floats(ds.get(keyword), 2)
        if value is not None and np.all(value > 0):
            return (float(value[0]), float(value[1])), keyword
    return None, "assumed 1.0 mm (no usable PixelSpacing/ImagerPixelSpacing)"


def _single_frames(datasets: list[Dataset], meta: dict[str, Any]) -> list[_Slice]:
    """One slice per instance; an instance whose pixel data cannot be decoded is skipped with its
    reason (one corrupt instance does not fail its series), unless none can be."""
    slices: list[_Slice] = []
    failed: list[str] = []
    for ds in datasets:
        try:
            slices.append(_single_frame(ds))
        except LoadError as exc:
            failed.append(str(exc))
    if not slices:
        raise LoadError(failed[0])
    if failed:
        meta.setdefault("skipped_files", []).extend(failed)
        meta["notes"].append(f"{len(failed)} instance(s) whose pixel data cannot be decoded skipped")
    return slices


def _single_frame(ds: Dataset) -> _Slice:
    pixels = _modality_values(_decode(ds), ds)
    pixels = _to_gray(pixels, ds)
    _drop_pixel_data(ds)  # decoded: the encoded bytes go now, not after every slice is decoded
    spacing, _ = _pixel_spacing(ds)
    thickness = ds.get("SliceThickness")
    return _Slice(
        pixels=pixels,
        dataset=ds,
        position=_floats(ds.get("ImagePositionPatient"), 3),
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),
        pixel_spacing=spacing,
        thickness=float(thickness) if thickness not in (None, "") else None,
    )


def _group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The functional group item ``sequence`` for 0-based ``frame``: per-frame first, else shared."""
    for container, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(container)
        if items and len(items) > index:
            value = items[index].get(sequence)
            if value:
                return value[0]
    return None


def _frames(ds: Dataset) -> list[_Slice]:
    """Frames of an enhanced (or legacy) multi-frame image, each with its own geometry and rescale."""
    array = _decode(ds)
    count = int(ds.NumberOfFrames)
    if int(ds.get("SamplesPerPixel", 1)) == 1 and array.ndim == 2:
        array = array[None]
    frames: list[_Slice] = []
    top_spacing, _ = _pixel_spacing(ds)
    for i in range(count):
        plane = _group(ds, i, "PlanePositionSequence")
        orient = _group(ds, i, "PlaneOrientationSequence")
        measures = _group(ds, i, "PixelMeasuresSequence")
        transform = _group(ds, i, "PixelValueTransformationSequence")
        raw = array[i]
        if transform is not None and "RescaleSlope" in transform:
            values = raw.astype(np.float32) * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
        else:
            values = _modality_values(raw, ds)
        spacing = top_spacing
        if measures is not None and _floats(measures.get("PixelSpacing"), 2) is not None:
            ps = _floats(measures.get("PixelSpacing"), 2)
            assert ps is not None
            spacing = (float(ps[0]), float(ps[1]))
        thickness = measures.get("SliceThickness") if measures is not None else ds.get("SliceThickness")
        frames.append(
            _Slice(
                pixels=_to_gray(values, ds),
                dataset=ds,
                position=_floats(plane.get("ImagePositionPatient"), 3) if plane is not None else None,
                orientation=_floats(orient.get("ImageOrientationPatient"), 6) if orient is not None else None,
                pixel_spacing=spacing,
                thickness=float(thickness) if thickness not in (None, "") else None,
                frame_number=i + 1,
            )
        )
    return frames


# --- stacking --------------------------------------------------------------------------------

def _assemble(slices: list[_Slice], meta: dict[str, Any]) -> Volume:
    first = slices[0]
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) > 1:
        raise LoadError(f"images differ in size ({sorted(shapes)}); cannot stack them")
    multi_frame = first.frame_number is not None
    positions, orientation = _geometry(slices, meta, multi_frame)
    try:
        stack = order_stack(positions, orientation)
    except GeometryError as exc:
        raise LoadError(str(exc)) from None
    ordered = [slices[i] for i in stack.order]

    spacings = {s.pixel_spacing for s in slices}
    if len(spacings) > 1 and not _close_spacings(spacings):
        raise LoadError(f"images differ in pixel spacing ({sorted(map(str, spacings))})")
    pixel_spacing, source = _pixel_spacing(first.dataset)
    pixel_spacing = first.pixel_spacing or pixel_spacing or (1.0, 1.0)
    if first.pixel_spacing is None or (source != "PixelSpacing" and not multi_frame):
        meta["pixel_spacing_source"] = source

    if len(slices) > 1:
        dz = stack.spacing
        if stack.uneven:
            meta["uneven_spacing"] = True
            meta["slice_gaps_mm"] = [round(float(g), 4) for g in stack.gaps]
            meta["notes"].append(
                f"uneven slice spacing (gaps {stack.gaps.min():.2f}-{stack.gaps.max():.2f} mm); "
                f"spacing is the mean gap {dz:.3f} mm; integrate with per-slice thickness"
            )
        if stack.tilt_deg:
            meta["gantry_tilt_deg"] = round(stack.tilt_deg, 3)
            meta["notes"].append(f"sheared stack (gantry tilt {stack.tilt_deg:.1f} deg); spacing measured along the normal")
    else:
        dz = first.thickness or float(first.dataset.get("SpacingBetweenSlices", 0) or 0) or 1.0
        if not first.thickness:
            meta["slice_spacing_source"] = "assumed" if dz == 1.0 else "SpacingBetweenSlices"

    _display_meta(first.dataset, meta)
    datasets = [first.dataset] if multi_frame else [s.dataset for s in ordered]
    normalised: set[str] = set()
    for ds in datasets:
        _drop_pixel_data(ds)
        normalised.update(normalise_header(ds))
    if normalised:
        # Names only: the values were patient data.
        meta["normalised_attributes"] = sorted(normalised)
    return Volume(
        pixels=_stack(ordered),
        spacing=(float(dz), float(pixel_spacing[0]), float(pixel_spacing[1])),
        positions=stack.positions,
        orientation=tuple(float(v) for v in orientation),  # type: ignore[arg-type]
        datasets=datasets,
        modality=str(first.dataset.get("Modality", "OT")),
        frame_numbers=[int(s.frame_number) for s in ordered if s.frame_number is not None],
        meta=meta,
    )


def _stack(ordered: list[_Slice]) -> np.ndarray:
    """The slices as one array, int16 when every slice is (see :func:`_int16_values`), else
    float32. Each slice is released once placed, so the load never holds the volume twice."""
    dtype = np.int16 if all(s.pixels.dtype == np.int16 for s in ordered) else np.float32
    pixels = np.empty((len(ordered), *ordered[0].pixels.shape), dtype=dtype)
    for i, s in enumerate(ordered):
        pixels[i] = s.pixels
        s.pixels = PLACED
    return pixels


def _drop_pixel_data(ds: Dataset) -> None:
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            delattr(ds, keyword)


def _close_spacings(spacings: set[tuple[float, float] | None]) -> bool:
    if None in spacings:
        return False
    values = np.array([s for s in spacings if s is not None])
    return bool(np.all(np.ptp(values, axis=0) < SPACING_TOLERANCE_MM))


def _geometry(slices: list[_Slice], meta: dict[str, Any], multi_frame: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positions (n, 3) and the common orientation; synthesised (and flagged) where absent."""
    orientations = [s.orientation for s in slices]
    have_orientation = [o for o in orientations if o is not None]
    if have_orientation:
        if len(have_orientation) < len(slices):
            raise LoadError("some images lack ImageOrientationPatient; cannot tell how they stack")
        reference = have_orientation[0]
        if not all(same_orientation(o, reference) for o in have_orientation):
            raise LoadError("images have different orientations (ImageOrientationPatient); not one stack")
        orientation = reference
    else:
        orientation = np.array(AXIAL)
    missing = [s for s in slices if s.position is None]
    if not missing:
        return np.array([s.position for s in slices], dtype=float), orientation
    if len(slices) == 1:
        meta["geometry"] = "projection or no ImagePositionPatient: position and orientation assumed"
        return np.zeros((1, 3)), orientation
    if multi_frame and len(missing) == len(slices):
        # A multi-frame image without plane positions (e.g. a stripped enhanced MR): frames are
        # taken in frame order at SpacingBetweenSlices (or 1 mm), and the geometry is flagged.
        ds = slices[0].dataset
        step = float(ds.get("SpacingBetweenSlices", 0) or 0) or slices[0].thickness or 1.0
        meta["geometry"] = f"no plane positions: frames stacked in frame order at {step:g} mm (assumed)"
        normal = np.cross(orientation[:3], orientation[3:])
        return np.arange(len(slices))[:, None] * step * normal[None, :], orientation
    raise LoadError(
        f"{len(missing)} of {len(slices)} images lack ImagePositionPatient; cannot order the slices"
    )


def _display_meta(ds: Dataset, meta: dict[str, Any]) -> None:
    photometric = str(ds.get("PhotometricInterpretation", ""))
    meta["photometric_interpretation"] = photometric
    if photometric == "MONOCHROME1":
        meta["monochrome1"] = True  # low values display white; pixels are not inverted
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        meta["converted_to_luminance"] = True
    voi = ds if "WindowCenter" in ds else _group(ds, 0, "FrameVOILUTSequence")  # enhanced: C.7.6.16.2.10
    for keyword, key in (("WindowCenter", "window_center"), ("WindowWidth", "window_width")):
        try:
            value = voi.get(keyword) if voi is not None else None
            if value is not None:
                first = value[0] if hasattr(value, "__len__") and not isinstance(value, str) else value
                meta[key] = float(first)
        except (TypeError, ValueError, IndexError, OverflowError):
            continue  # a display hint that cannot be read is left out
    if "PixelPaddingValue" in ds:
        meta["pixel_padding_value"] = int(ds.PixelPaddingValue)
    if "RescaleType" in ds:
        meta["rescale_type"] = str(ds.RescaleType)
