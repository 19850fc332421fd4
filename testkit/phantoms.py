"""Generated CT series with known lung volumes: the ground truth for loader, tool and end-to-end tests.

No full-resolution multi-slice CT ships with any package, so tests build one. The phantom is a
physical object defined in patient coordinates (LPS, mm; PS3.3 C.7.6.2.1.1) and *sampled* on the
image grid the caller asks for, so any orientation, spacing, slice order or rescale yields the same
anatomy:

* body: an elliptic cylinder of soft tissue (40 HU) along the patient's z axis, in air (-1000 HU);
* two lungs: ellipsoids of -850 HU inside the body, separated by a soft-tissue mediastinum.
  The right lung (patient right = -x in LPS) is the larger one, as in people;
* optionally a trachea (an air tube in the mediastinum, above the lungs, not touching them), main
  bronchi joining it to both lungs, an air "junction line" joining the lungs anteriorly, and a
  patient table (a dense slab below the body, separated from it by air).

Object sizes scale with the grid's extent so the lungs always lie inside the field of view and
between the first and last slice. Truth volumes are analytic (4/3*pi*a*b*c); the voxelised counts
are given too (they differ from the analytic volume by well under 1% for the default grid).

Pixels are stored as ``(HU - intercept) / slope`` rounded, unsigned 16-bit when every stored value
is non-negative, else signed (PixelRepresentation 1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from scipy import ndimage

AIR_HU = -1000.0
SOFT_TISSUE_HU = 40.0
LUNG_HU = -850.0
TABLE_HU = 300.0

#: Row/column direction cosines (ImageOrientationPatient) for each named orientation.
ORIENTATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    # Columns run to patient right: the slice normal is -z (as in some enhanced CT and feet-first scans).
    "axial-mirrored": ((-1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    # Image turned 180 degrees (prone-style display): rows to patient right, columns anterior.
    "axial-rotated": ((-1.0, 0.0, 0.0), (0.0, -1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
OBLIQUE_DEG = 25.0


@dataclass(frozen=True)
class Ellipsoid:
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]

    @property
    def volume_ml(self) -> float:
        a, b, c = self.semi_axes
        return 4.0 / 3.0 * math.pi * a * b * c / 1000.0

    def contains(self, xyz: np.ndarray) -> np.ndarray:
        q = np.zeros(xyz.shape[:-1], dtype=np.float32)
        for i in range(3):
            q += ((xyz[..., i] - self.centre[i]) / self.semi_axes[i]) ** 2
        return q <= 1.0


@dataclass
class PhantomTruth:
    """What a correct lung segmentation of the phantom must find."""

    left_lung_ml: float
    right_lung_ml: float
    #: Volumes of the voxelised lungs (count * voxel volume, with per-slice thickness).
    left_lung_voxel_ml: float
    right_lung_voxel_ml: float
    lung_hu: float
    study_uid: str
    series_uid: str
    frame_of_reference_uid: str
    #: Written files in slice (position) order; empty for ``make_ct_phantom_datasets``.
    files: list[Path] = field(default_factory=list)
    #: Datasets in written/instance order (with pixel data).
    datasets: list[Dataset] = field(default_factory=list)
    #: Boolean lung masks in ascending position-along-normal order, shape (slices, rows, cols).
    left_mask: np.ndarray | None = None
    right_mask: np.ndarray | None = None
    #: ImagePositionPatient per slice in ascending position-along-normal order.
    positions: np.ndarray | None = None

    @property
    def total_lung_ml(self) -> float:
        return self.left_lung_ml + self.right_lung_ml


def _orientation(orientation: str, gantry_tilt_deg: float) -> tuple[np.ndarray, np.ndarray]:
    if orientation == "oblique":
        t = math.radians(OBLIQUE_DEG)
        return np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(t), math.sin(t)])
    if orientation not in ORIENTATIONS:
        raise ValueError(f"orientation must be one of {sorted(ORIENTATIONS) + ['oblique']}")
    row, col = (np.array(v) for v in ORIENTATIONS[orientation])
    if gantry_tilt_deg:
        t = math.radians(gantry_tilt_deg)
        col = np.array([0.0, math.cos(t), math.sin(t)])
    return row, col


def _slice_offsets(slices: int, slice_spacing: float, drop_slices: Sequence[int]) -> np.ndarray:
    offsets = (np.arange(slices) - (slices - 1) / 2.0) * slice_spacing
    keep = [i for i in range(slices) if i not in set(drop_slices)]
    return offsets[keep]


def _anatomy(half: np.ndarray) -> dict[str, Ellipsoid]:
    """Lungs (and nothing else analytic) scaled to the grid half-extents (hx, hy, hz) in mm."""
    hx, hy, hz = half
    right = Ellipsoid((-0.44 * hx, -0.02 * hy, 0.0), (0.31 * hx, 0.44 * hy, 0.78 * hz))
    left = Ellipsoid((0.41 * hx, 0.0, 0.05 * hz), (0.28 * hx, 0.41 * hy, 0.70 * hz))
    return {"left": left, "right": right}


def _physical_half_extents(
    row: np.ndarray, col: np.ndarray, stack: np.ndarray, rows: int, cols: int,
    pixel_spacing: float, stack_extent: float,
) -> np.ndarray:
    """Half extent of the anatomy box along x, y, z: each grid axis feeds its closest patient axis."""
    half = np.zeros(3)
    for vec, extent in ((row, cols * pixel_spacing), (col, rows * pixel_spacing), (stack, stack_extent)):
        half[int(np.argmax(np.abs(vec)))] = extent / 2.0
    return half


def make_ct_phantom_datasets(
    *,
    slices: int = 48,
    rows: int = 128,
    cols: int = 128,
    pixel_spacing: float = 2.5,
    slice_spacing: float = 5.0,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    reverse_order: bool = False,
    shuffle_instance_numbers: bool = False,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "PHANTOM^1",
    orientation: str = "axial",
    gantry_tilt_deg: float = 0.0,
    drop_slices: Sequence[int] = (),
    lungs: bool = True,
    trachea: bool = True,
    bronchi: bool = False,
    junction: bool = False,
    table: bool = True,
    vessels: bool = False,
    omit_lung: str | None = None,
    stomach: bool = False,
    blur_mm: float = 0.0,
    noise_hu: float = 15.0,
    seed: int = 0,
) -> tuple[list[Dataset], PhantomTruth]:
    """Build the phantom's datasets in instance order (InstanceNumber 1 first) and its truth.

    ``reverse_order``: InstanceNumber 1 is the most *inferior* slice instead of the most superior
    (scanners differ). ``shuffle_instance_numbers``: InstanceNumbers carry no order at all.
    ``gantry_tilt_deg``: rows tilt about x while slices still advance along z (a sheared stack).
    ``drop_slices``: indices of slices left out, making the spacing uneven (a missing slice).
    ``lungs=False`` gives a body with no lungs (airways stay if asked for).
    ``omit_lung``: "left" or "right" leaves that lung out (a pneumonectomy); its truth volume is 0.
    ``stomach``: a gas bubble under the left hemidiaphragm (air inside the body that is not lung).
    ``vessels``: soft-tissue spheres inside each lung (they count as lung volume, as clinically).
    ``blur_mm``: Gaussian blur (sigma, mm) before noise, a scanner's point spread: partial volume.
    UIDs are derived from ``seed`` unless given, so the same arguments give the same series.
    """
    rng = np.random.default_rng(seed)
    row, col = _orientation(orientation, gantry_tilt_deg)
    normal = np.cross(row, col)
    stack = np.array([0.0, 0.0, 1.0]) if gantry_tilt_deg else normal
    offsets = _slice_offsets(slices, slice_spacing, drop_slices)
    half = _physical_half_extents(row, col, stack, rows, cols, pixel_spacing, slices * slice_spacing)

    corner = -(cols - 1) / 2.0 * pixel_spacing * row - (rows - 1) / 2.0 * pixel_spacing * col
    positions = corner[None, :] + offsets[:, None] * stack[None, :]
    r_idx, c_idx = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    in_plane = (c_idx[..., None] * pixel_spacing * row + r_idx[..., None] * pixel_spacing * col).astype(
        np.float32
    )
    anatomy = _anatomy(half)
    shape = (len(positions), rows, cols)
    hu = np.empty(shape, dtype=np.float32)
    body, left, right = (np.empty(shape, dtype=bool) for _ in range(3))
    chunk = max(1, CHUNK_VOXELS // (rows * cols))  # bounded memory for 512x512x300 series
    if omit_lung not in (None, "left", "right"):
        raise ValueError("omit_lung must be None, 'left' or 'right'")
    present = {"left": lungs and omit_lung != "left", "right": lungs and omit_lung != "right"}
    options = _Options(present["left"], present["right"], trachea, bronchi, junction, table, vessels, stomach)
    for k0 in range(0, len(positions), chunk):
        part = slice(k0, k0 + chunk)
        xyz = positions[part, None, None, :].astype(np.float32) + in_plane[None]
        hu[part], body[part], left[part], right[part] = _sample(xyz, half, anatomy, options)
    if blur_mm:
        sigma = [blur_mm / slice_spacing, blur_mm / pixel_spacing, blur_mm / pixel_spacing]
        hu = ndimage.gaussian_filter(hu, sigma=sigma).astype(np.float32)
    if noise_hu:
        hu[body] += rng.normal(0.0, noise_hu, size=int(body.sum())).astype(np.float32)

    stored = np.rint((hu - rescale_intercept) / rescale_slope)
    signed = bool(stored.min() < 0)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    stored = np.clip(stored, info.min, info.max).astype(dtype)

    # Truth voxel volumes use each slice's own thickness (half the gaps to its neighbours).
    along = positions @ normal
    thickness = _slice_thicknesses(along)
    pixel_ml = pixel_spacing * pixel_spacing / 1000.0
    left_vox = float((left.sum(axis=(1, 2)) * thickness).sum() * pixel_ml)
    right_vox = float((right.sum(axis=(1, 2)) * thickness).sum() * pixel_ml)

    study_uid = study_uid or generate_uid(entropy_srcs=["phantom-study", str(seed), patient_id])
    series_uid = series_uid or generate_uid(entropy_srcs=["phantom-series", str(seed), patient_id, orientation])
    for_uid = generate_uid(entropy_srcs=["phantom-for", study_uid])

    # Instance order: most superior first (z descending) unless reversed.
    superior_first = np.argsort(-positions[:, 2], kind="stable")
    order = superior_first[::-1] if reverse_order else superior_first
    numbers = np.arange(1, len(order) + 1)
    if shuffle_instance_numbers:
        numbers = rng.permutation(numbers)
    ascending = np.argsort(along, kind="stable")

    common = _common_header(
        patient_id=patient_id, study_uid=study_uid, series_uid=series_uid, for_uid=for_uid,
        row=row, col=col, rows=rows, cols=cols, pixel_spacing=pixel_spacing,
        slice_spacing=slice_spacing, slope=rescale_slope, intercept=rescale_intercept,
        signed=signed, tilt=gantry_tilt_deg,
    )
    datasets: list[Dataset] = []
    for number, k in zip(numbers, order):
        ds = Dataset()
        ds.update(common)
        sop_uid = generate_uid(entropy_srcs=["phantom-sop", series_uid, str(int(k))])
        ds.file_meta = _file_meta(sop_uid, transfer_syntax)
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = int(number)
        ds.ImagePositionPatient = [_ds(v) for v in positions[k]]
        ds.SliceLocation = _ds(float(along[k]))
        ds.PixelData = stored[k].tobytes()
        _encode(ds, transfer_syntax)
        datasets.append(ds)

    truth = PhantomTruth(
        left_lung_ml=anatomy["left"].volume_ml if present["left"] else 0.0,
        right_lung_ml=anatomy["right"].volume_ml if present["right"] else 0.0,
        left_lung_voxel_ml=left_vox,
        right_lung_voxel_ml=right_vox,
        lung_hu=LUNG_HU,
        study_uid=study_uid,
        series_uid=series_uid,
        frame_of_reference_uid=for_uid,
        datasets=datasets,
        left_mask=left[ascending],
        right_mask=right[ascending],
        positions=positions[ascending],
    )
    return datasets, truth


def write_ct_phantom(out_dir: Path, *, shuffle_files: bool = False, **kwargs: Any) -> PhantomTruth:
    """Write the phantom as one file per slice into ``out_dir`` (created) and return its truth.

    File names follow instance order (``IM0001.dcm``...) unless ``shuffle_files``, which names
    them in a random order so that neither names nor directory order say anything about position.
    Keyword arguments are those of :func:`make_ct_phantom_datasets`.
    """
    datasets, truth = make_ct_phantom_datasets(**kwargs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(range(1, len(datasets) + 1))
    if shuffle_files:
        seed = int(kwargs.get("seed", 0)) + 1
        names = list(np.random.default_rng(seed).permutation(names))
    by_uid: dict[str, Path] = {}
    for name, ds in zip(names, datasets):
        path = out_dir / f"IM{int(name):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        by_uid[str(ds.SOPInstanceUID)] = path
    along = np.array([float(ds.SliceLocation) for ds in datasets])
    truth.files = [by_uid[str(datasets[i].SOPInstanceUID)] for i in np.argsort(along, kind="stable")]
    return truth


#: Voxels sampled at once (bounds the coordinate arrays' memory, ~12 bytes per voxel).
CHUNK_VOXELS = 4_000_000


@dataclass(frozen=True)
class _Options:
    left_lung: bool
    right_lung: bool
    trachea: bool
    bronchi: bool
    junction: bool
    table: bool
    vessels: bool
    stomach: bool


def _sample(
    xyz: np.ndarray, half: np.ndarray, anatomy: dict[str, Ellipsoid], opt: _Options
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """HU (before blur and noise), body, left and right lung masks at patient points ``xyz``."""
    hx, hy, hz = half
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    body_a, body_b = 0.88 * hx, 0.66 * hy
    body = (x / body_a) ** 2 + (y / body_b) ** 2 <= 1.0
    left = anatomy["left"].contains(xyz) & opt.left_lung
    right = anatomy["right"].contains(xyz) & opt.right_lung
    airway = np.zeros_like(body)
    trachea_y, trachea_r = -0.25 * hy, 0.06 * hx
    carina_z = 0.45 * hz
    if opt.trachea:
        airway |= (x**2 + (y - trachea_y) ** 2 <= trachea_r**2) & (z >= carina_z)
    if opt.bronchi:
        # Main bronchi run from the carina ~45 degrees down to each lung's medial surface (hilum).
        start = np.array([0.0, trachea_y, carina_z])
        for lung in (anatomy["left"], anatomy["right"]):
            hilum_x = lung.centre[0] - 0.5 * lung.semi_axes[0] * np.sign(lung.centre[0])
            target = np.array([hilum_x, lung.centre[1], carina_z - abs(hilum_x)])
            airway |= _tube(xyz, start, target, 0.65 * trachea_r)
    if opt.junction:
        airway |= (np.abs(x) <= 0.3 * hx) & (np.abs(y + 0.2 * hy) <= 0.04 * hy) & (np.abs(z) <= 0.15 * hz)
    hu = np.full(body.shape, AIR_HU, dtype=np.float32)
    if opt.table:
        hu[(y > body_b + 0.08 * hy) & (y < body_b + 0.16 * hy) & (np.abs(x) < 0.8 * hx)] = TABLE_HU
    hu[body] = SOFT_TISSUE_HU
    hu[(left | right | airway) & body] = LUNG_HU
    if opt.stomach:
        gas = Ellipsoid((0.3 * hx, 0.1 * hy, -0.8 * hz), (0.2 * hx, 0.25 * hy, 0.12 * hz))
        hu[gas.contains(xyz) & body] = AIR_HU
    if opt.vessels:
        lungs = [anatomy[side] for side, on in (("left", opt.left_lung), ("right", opt.right_lung)) if on]
        for lung in lungs:
            for offset in ((0.0, 0.0, 0.0), (0.3, -0.3, 0.3), (-0.3, 0.3, -0.4)):
                centre = tuple(c + o * a for c, o, a in zip(lung.centre, offset, lung.semi_axes))
                radius = 0.12 * min(lung.semi_axes[:2])
                hu[Ellipsoid(centre, (radius, radius, radius)).contains(xyz)] = SOFT_TISSUE_HU  # type: ignore[arg-type]
    return hu, body, left, right


def _slice_thicknesses(along: np.ndarray) -> np.ndarray:
    """Per-slice thickness in position order: half the distance to each neighbour (ends mirror)."""
    s = np.sort(along)
    if len(s) == 1:
        return np.ones(1)
    gaps = np.diff(s)
    t = np.empty_like(s)
    t[0], t[-1] = gaps[0], gaps[-1]
    t[1:-1] = (gaps[:-1] + gaps[1:]) / 2.0
    order = np.argsort(along, kind="stable")
    out = np.empty_like(t)
    out[order] = t
    return out


def _tube(xyz: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` of the segment a-b."""
    ab = (b - a).astype(np.float32)
    t = np.clip(((xyz - a.astype(np.float32)) @ ab) / float(ab @ ab), 0.0, 1.0)
    nearest = a.astype(np.float32) + t[..., None] * ab
    return np.sum((xyz - nearest) ** 2, axis=-1) <= radius**2


def _ds(value: float) -> str:
    """A decimal string (DS, max 16 characters) for ``value``."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def _file_meta(sop_uid: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian if UID(transfer_syntax).is_compressed else UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _encode(ds: Dataset, transfer_syntax: str) -> None:
    uid = UID(transfer_syntax)
    if uid.is_compressed:
        ds.compress(uid)
    elif uid == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian


def _common_header(
    *, patient_id: str, study_uid: str, series_uid: str, for_uid: str, row: np.ndarray,
    col: np.ndarray, rows: int, cols: int, pixel_spacing: float, slice_spacing: float,
    slope: float, intercept: float, signed: bool, tilt: float,
) -> Dataset:
    """Attributes shared by every slice (CT Image IOD, PS3.3 A.3)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    # Patient, General Study (PS3.3 C.7.1.1, C.7.2.1)
    ds.PatientName = "Phantom^Lung"
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "CT chest phantom"
    # General Series, Frame of Reference, General Equipment (C.7.3.1, C.7.4.1, C.7.5.1)
    ds.Modality = "CT"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 2
    ds.SeriesDescription = "Lung phantom"
    ds.PatientPosition = "HFS"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "mmedagent-node test phantom"
    # General Image, General Acquisition, Image Plane (C.7.6.1, C.7.10.1, C.7.6.2)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.AcquisitionNumber = 1
    ds.ContentDate = "20260101"
    ds.ContentTime = "120000"
    ds.PixelSpacing = [_ds(pixel_spacing), _ds(pixel_spacing)]
    ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
    ds.SliceThickness = _ds(slice_spacing)
    # Image Pixel (C.7.6.3) and CT Image (C.8.2.1)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    ds.RescaleIntercept = _ds(intercept)
    ds.RescaleSlope = _ds(slope)
    ds.RescaleType = "HU"
    ds.KVP = "120"
    ds.GantryDetectorTilt = _ds(tilt)
    ds.ConvolutionKernel = "STANDARD"
    # VOI LUT (C.11.2): a lung window.
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    return ds
