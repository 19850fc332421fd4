"""Preview images of a job, rendered by the node from its own files: key slices of the source
series (the spool) with the SEG's segments in their Recommended Display CIELab colours (PS3.3
C.8.20.2) and the SR's detection regions drawn over them; PNG, cached in the job's result
folder (``preview/``) until the SEG or SR changes.

Which slices: for each segment, the source image where it covers most pixels; then the images
the SR places a region (a box) on that no segment outline is; at most :data:`MAX_PREVIEWS`.
Which regions: the SR's SCOORD (image coordinates, on the image named by its "selected from"
reference, PS3.3 C.18.6) and SCOORD3D (patient coordinates, projected onto the nearest source
image of the same frame of reference, PS3.3 C.18.9) items anywhere in a measurement group (the
group's image region, or its measurements' source), except the outlines of segments (a group
whose tracking UID is a segment's: the SEG draws those already).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.pipeline import SEG_FILE, SR_FILE
from dicom_node.jobs.store import JobRecord
from dicom_node.receive.spool import INSTANCE_SUFFIX
from sr_templates.sc.render import render_slice, to_grey

log = logging.getLogger(__name__)

PREVIEW_FOLDER = "preview"
INDEX_FILE = "index.json"
MAX_PREVIEWS = 4
#: Previews shown of segments when fewer key images (one per segment, one per region) exist.
KEY_IMAGES = 3
#: Longest side of a preview image; larger sources are scaled down.
MAX_SIDE = 768
#: Colour of a detection region's outline (and of a segment without a recommended colour).
BOX_RGB = (255, 215, 0)
DEFAULT_SEGMENT_RGB = (255, 64, 64)
#: Percentiles of a slice used as its grey window when the source gives none.
AUTO_WINDOW = (1.0, 99.0)


class PreviewError(ValueError):
    """The job's files cannot give a preview (no result folder, unreadable SEG or SR)."""


@dataclass(frozen=True)
class SegmentInfo:
    number: int
    label: str
    rgb: tuple[int, int, int]


@dataclass
class Preview:
    """One preview image, as the index (and the job page) lists it."""

    file: str
    sop_uid: str
    frame: int
    #: Segment number -> pixels it covers on this image.
    segments: dict[int, int] = field(default_factory=dict)
    boxes: int = 0


@dataclass
class PreviewSet:
    segments: list[SegmentInfo]
    previews: list[Preview]
    #: What could not be shown (a source image missing from the spool...).
    notes: list[str] = field(default_factory=list)


Key = tuple[str, int]  # (SOP Instance UID of a source image, frame number from 1)


# -- reading the node's own outputs ------------------------------------------------------------


def _source_of(frame_item: Dataset, shared: Dataset | None) -> Key | None:
    for groups in (frame_item, shared):
        if groups is None:
            continue
        for derivation in groups.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                frames = source.get("ReferencedFrameNumber")
                frame = int(frames[0] if isinstance(frames, Sequence) else frames or 1)
                return str(source.ReferencedSOPInstanceUID), frame
    return None


def read_seg(path: Path) -> tuple[list[SegmentInfo], dict[Key, dict[int, np.ndarray]]]:
    """The SEG's segments and, per source image, each segment's boolean mask on it."""
    ds = pydicom.dcmread(path)
    infos = []
    for item in ds.SegmentSequence:
        lab = item.get("RecommendedDisplayCIELabValue")
        rgb = hd.color.CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb(clip=True) \
            if lab is not None else DEFAULT_SEGMENT_RGB
        infos.append(SegmentInfo(int(item.SegmentNumber), str(item.get("SegmentLabel", "")),
                                 tuple(int(c) for c in rgb)))  # type: ignore[arg-type]
    frames = int(ds.get("NumberOfFrames", 1))
    pixels = np.asarray(ds.pixel_array).reshape(frames, int(ds.Rows), int(ds.Columns))
    fractional = str(ds.get("SegmentationType", "BINARY")).upper() == "FRACTIONAL"
    threshold = float(ds.get("MaximumFractionalValue", 1)) / 2.0 if fractional else 0.0
    shared = (ds.SharedFunctionalGroupsSequence[0]
              if "SharedFunctionalGroupsSequence" in ds else None)
    masks: dict[Key, dict[int, np.ndarray]] = {}
    for index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        key = _source_of(item, shared)
        ident = item.get("SegmentIdentificationSequence") or (
            shared.get("SegmentIdentificationSequence") if shared is not None else None)
        if key is None or not ident:
            continue
        number = int(ident[0].ReferencedSegmentNumber)
        mask = pixels[index] > threshold
        per_image = masks.setdefault(key, {})
        per_image[number] = per_image[number] | mask if number in per_image else mask
    return infos, masks


@dataclass
class Region:
    """One SR region: image points (column, row) on ``key``, or patient points to project."""

    points: list[tuple[float, float]]
    key: Key | None = None
    patient: list[tuple[float, float, float]] | None = None
    frame_of_reference: str | None = None


def _items(content: Sequence[Dataset]) -> Iterator[Dataset]:
    for item in content:
        yield item
        yield from _items(item.get("ContentSequence", []))


def _meaning(item: Dataset) -> str:
    names = item.get("ConceptNameCodeSequence")
    return str(names[0].CodeMeaning) if names else ""


def read_regions(path: Path) -> list[Region]:
    """The SR's regions that are not segment outlines (see the module docstring)."""
    ds = pydicom.dcmread(path)
    groups = [item for item in _items(ds.get("ContentSequence", []))
              if item.get("ValueType") == "CONTAINER" and _meaning(item) == "Measurement Group"]
    segment_tracks: set[str] = set()
    for group in groups:
        children = group.get("ContentSequence", [])
        if any(_meaning(c) == "Referenced Segment" for c in children):
            segment_tracks.update(str(c.UID) for c in children
                                  if _meaning(c) == "Tracking Unique Identifier" and "UID" in c)
    regions: list[Region] = []
    for group in groups:
        children = group.get("ContentSequence", [])
        tracks = {str(c.UID) for c in children if _meaning(c) == "Tracking Unique Identifier"
                  and "UID" in c}
        if tracks & segment_tracks:
            continue
        # The region is the group's own item (TID 1410 "Image Region") or the source of its
        # measurements (a NUM's SCOORD child, as Cornerstone's adapters read them): each once.
        for item in _items(children):
            region = _region(item)
            if region is not None and region not in regions:
                regions.append(region)
    return regions


def _region(item: Dataset) -> Region | None:
    kind = item.get("ValueType")
    data = [float(v) for v in item.get("GraphicData", [])]
    if kind == "SCOORD" and len(data) >= 4:
        for child in item.get("ContentSequence", []):
            for ref in child.get("ReferencedSOPSequence", []):
                frames = ref.get("ReferencedFrameNumber")
                frame = int(frames[0] if isinstance(frames, Sequence) else frames or 1)
                return Region(list(zip(data[0::2], data[1::2])),
                              key=(str(ref.ReferencedSOPInstanceUID), frame))
    if kind == "SCOORD3D" and len(data) >= 6:
        return Region([], patient=list(zip(data[0::3], data[1::3], data[2::3])),
                      frame_of_reference=str(item.get("ReferencedFrameOfReferenceUID", "")))
    return None


# -- the source images -------------------------------------------------------------------------


def _plane(header: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(origin, row direction, column direction, (row spacing, column spacing)) of an image."""
    try:
        origin = np.array([float(v) for v in header.ImagePositionPatient])
        iop = [float(v) for v in header.ImageOrientationPatient]
        spacing = np.array([float(v) for v in header.PixelSpacing])
    except (AttributeError, ValueError, TypeError):
        return None
    return origin, np.array(iop[:3]), np.array(iop[3:]), spacing


def project(region: Region, headers: dict[str, Dataset]) -> Region | None:
    """A SCOORD3D region on the source image whose plane is nearest its points (within half a
    slice), in that image's pixel coordinates; None when no image holds it."""
    assert region.patient is not None
    points = np.array(region.patient)
    best: tuple[float, str, np.ndarray] | None = None
    for sop_uid, header in headers.items():
        if region.frame_of_reference and str(header.get("FrameOfReferenceUID", "")) \
                != region.frame_of_reference:
            continue
        plane = _plane(header)
        if plane is None:
            continue
        origin, row_dir, col_dir, spacing = plane
        normal = np.cross(row_dir, col_dir)
        distance = float(np.abs((points - origin) @ normal).max())
        if best is None or distance < best[0]:
            cols = (points - origin) @ row_dir / spacing[1]
            rows = (points - origin) @ col_dir / spacing[0]
            best = (distance, sop_uid, np.stack([cols, rows], axis=1))
    if best is None:
        return None
    thickness = float(headers[best[1]].get("SliceThickness", 0) or 0)
    if thickness and best[0] > thickness / 2 + 1e-3:
        return None
    return Region([(float(c), float(r)) for c, r in best[2]], key=(best[1], 1))


def source_grey(header: Dataset, frame: int) -> np.ndarray:
    """One source frame as 8-bit display grey: modality LUT, the source's first window (else the
    frame's 1st-99th percentile), MONOCHROME1 inverted, colour averaged."""
    pixels = np.asarray(header.pixel_array)
    frames = int(header.get("NumberOfFrames", 1) or 1)
    colour = int(header.get("SamplesPerPixel", 1)) > 1
    if frames > 1:
        pixels = pixels[frame - 1]
    if colour:
        pixels = pixels.mean(axis=-1)
    else:
        pixels = np.asarray(apply_modality_lut(pixels, header), dtype=np.float32)
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    try:
        c = float(center[0] if isinstance(center, Sequence) else center)
        w = float(width[0] if isinstance(width, Sequence) else width)
        window = (c - w / 2.0, c + w / 2.0) if w > 1 and not colour else None
    except (TypeError, ValueError):
        window = None
    if window is None:
        low, high = np.percentile(pixels, AUTO_WINDOW)
        window = (float(low), float(max(high, low + 1.0)))
    monochrome1 = str(header.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    return to_grey(pixels, window, monochrome1)


# -- rendering and the cache -------------------------------------------------------------------


def _whole_image(region: Region, series_dir: Path, headers: dict[str, Dataset]) -> bool:
    assert region.key is not None
    header = headers.get(region.key[0])
    if header is None:
        try:
            header = pydicom.dcmread(series_dir / f"{region.key[0]}{INSTANCE_SUFFIX}",
                                     stop_before_pixels=True)
        except (OSError, InvalidDicomError):
            return False
        headers[region.key[0]] = header
    cols = [c for c, _ in region.points]
    rows = [r for _, r in region.points]
    return (min(cols) <= 0.5 and min(rows) <= 0.5 and max(cols) >= int(header.get("Columns", 0)) - 0.5
            and max(rows) >= int(header.get("Rows", 0)) - 0.5)


def _signature(files: Sequence[Path]) -> list[list[Any]]:
    out: list[list[Any]] = []
    for path in files:
        try:
            st = path.stat()
        except FileNotFoundError:
            continue
        out.append([path.name, st.st_size, st.st_mtime_ns])
    return out


def _choose(masks: dict[Key, dict[int, np.ndarray]], regions: list[Region]) -> list[Key]:
    chosen: list[Key] = []
    numbers = sorted({n for per in masks.values() for n in per})
    for number in numbers:
        key = max((k for k in masks if number in masks[k]),
                  key=lambda k: int(masks[k][number].sum()))
        if int(masks[key][number].sum()) and key not in chosen:
            chosen.append(key)
    for region in regions:
        if region.key is not None and region.key not in chosen:
            chosen.append(region.key)
    # Then the images the segments cover most, for a few views of them.
    by_area = sorted(masks, key=lambda k: -sum(int(m.sum()) for m in masks[k].values()))
    for key in by_area:
        if len(chosen) >= KEY_IMAGES:
            break
        if key not in chosen and any(m.any() for m in masks[key].values()):
            chosen.append(key)
    return chosen[:MAX_PREVIEWS]


def _draw(grey: np.ndarray, layers: list[tuple[tuple[int, int, int], np.ndarray]],
          regions: list[Region]) -> Image.Image:
    image = Image.fromarray(render_slice(grey, layers), "RGB")
    draw = ImageDraw.Draw(image)
    width = max(1, round(max(image.size) / 256))
    for region in regions:
        points = [(c, r) for c, r in region.points]
        if len(points) >= 2:
            draw.line([*points, points[0]], fill=BOX_RGB, width=width)
    if max(image.size) > MAX_SIDE:
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return image


def build_previews(record: JobRecord) -> PreviewSet:
    """Render (or read from the cache) the job's previews."""
    if record.result_dir is None or record.spec is None:
        raise PreviewError("the job has no result folder")
    result_dir = Path(record.result_dir)
    seg_path, sr_path = result_dir / SEG_FILE, result_dir / SR_FILE
    folder = result_dir / PREVIEW_FOLDER
    signature = _signature([seg_path, sr_path])
    cached = _cached(folder, signature)
    if cached is not None:
        return cached
    try:
        segments, masks = read_seg(seg_path) if seg_path.is_file() else ([], {})
        regions = read_regions(sr_path) if sr_path.is_file() else []
    except (OSError, InvalidDicomError, AttributeError, ValueError, KeyError) as exc:
        raise PreviewError(f"results not readable: {type(exc).__name__}") from None
    series_dir = Path(record.spec.series_dir)
    headers: dict[str, Dataset] = {}
    if any(r.patient is not None for r in regions):
        for path in sorted(series_dir.glob(f"*{INSTANCE_SUFFIX}")):
            try:
                headers[path.stem] = pydicom.dcmread(path, stop_before_pixels=True)
            except (OSError, InvalidDicomError):
                continue
    placed = [r if r.patient is None else project(r, headers) for r in regions]
    placed_regions = [r for r in placed if r is not None and r.key is not None]
    # Image-level findings and the answer are placed on a whole image (viewers need a region
    # for every group): that says where, not what, so it is not drawn.
    whole = [r for r in placed_regions if _whole_image(r, series_dir, headers)]
    placed_regions = [r for r in placed_regions if r not in whole]
    regions = [r for r in regions if r.key is None or r not in whole]
    result = PreviewSet(segments=segments, previews=[])
    if len(placed_regions) < len(regions):
        result.notes.append(f"{len(regions) - len(placed_regions)} region(s) not placed on a "
                            "source image")
    colours = {s.number: s.rgb for s in segments}
    for index, key in enumerate(_choose(masks, placed_regions)):
        sop_uid, frame = key
        try:
            header = pydicom.dcmread(series_dir / f"{sop_uid}{INSTANCE_SUFFIX}")
            grey = source_grey(header, frame)
        except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
            result.notes.append(f"source image {sop_uid} not readable: {type(exc).__name__}")
            continue
        on_image = masks.get(key, {})
        layers = [(colours.get(n, DEFAULT_SEGMENT_RGB), m) for n, m in sorted(on_image.items())
                  if m.shape == grey.shape]
        mine = [r for r in placed_regions if r.key == key]
        name = f"{index:02d}.png"
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".{name}.tmp"
        _draw(grey, layers, mine).save(temp, format="PNG")
        temp.replace(folder / name)
        result.previews.append(Preview(name, sop_uid, frame,
                                       {n: int(m.sum()) for n, m in sorted(on_image.items())},
                                       len(mine)))
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / INDEX_FILE, {"signature": signature, **asdict(result)})
    return result


def _cached(folder: Path, signature: list[list[Any]]) -> PreviewSet | None:
    try:
        data = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("signature") != signature:
        return None
    try:
        return PreviewSet(
            segments=[SegmentInfo(s["number"], s["label"], tuple(s["rgb"]))
                      for s in data["segments"]],
            previews=[Preview(p["file"], p["sop_uid"], p["frame"],
                              {int(k): v for k, v in p["segments"].items()}, p["boxes"])
                      for p in data["previews"]],
            notes=list(data.get("notes", [])),
        )
    except (KeyError, TypeError, ValueError):
        return None


def preview_file(record: JobRecord, number: int) -> Path | None:
    """The path of preview ``number`` (rendered first if needed), or None."""
    previews = build_previews(record).previews
    if not 0 <= number < len(previews) or record.result_dir is None:
        return None
    return Path(record.result_dir) / PREVIEW_FOLDER / previews[number].file
