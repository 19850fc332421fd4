"""A small built-in set of synthetic DICOM series with known anatomy, for instruction data.

MMedAgent generated its instruction data from tool outputs on images with ground truth. Without
``--images`` the data generator uses these: simple shapes of the right intensities (HU for CT)
placed like anatomy, so that the weight-free tools (CT lung segmentation, metadata classification)
really run on them, and tools without local weights get outputs derived from the ground truth.
Each case is written as real DICOM files (one per slice) and read back by the node's loader.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

AIR_HU, FAT_HU, SOFT_HU, LUNG_HU = -1000.0, -100.0, 40.0, -850.0
#: CT stored values are HU - intercept (unsigned 16-bit).
CT_INTERCEPT = -1024.0


@dataclass(frozen=True)
class Blob:
    """An ellipsoid in index space (slice, row, col) as fractions of the grid, and its value."""

    name: str
    centre: tuple[float, float, float]
    semi_axes: tuple[float, float, float]
    value: float


@dataclass(frozen=True)
class CaseKind:
    """A kind of study: modality, geometry, background, and the structures in it."""

    name: str
    modality: str
    body_part: str
    description: str
    #: The MMedAgent/BiomedCLIP label of this kind of image.
    image_label: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    background: float
    body: float
    blobs: tuple[Blob, ...]


#: The built-in kinds. Structure names are the planner's canonical target names.
CASE_KINDS: tuple[CaseKind, ...] = (
    CaseKind(
        "chest_ct", "CT", "CHEST", "CT chest", "lung CT", (24, 64, 64), (10.0, 5.0, 5.0), AIR_HU, SOFT_HU,
        (
            Blob("lung", (0.5, 0.5, 0.3), (0.38, 0.26, 0.15), LUNG_HU),
            Blob("lung", (0.5, 0.5, 0.7), (0.38, 0.26, 0.15), LUNG_HU),
            Blob("nodule", (0.5, 0.45, 0.72), (0.08, 0.05, 0.05), SOFT_HU),
        ),
    ),
    CaseKind(
        "abdomen_ct", "CT", "ABDOMEN", "CT abdomen", "abdomen CT", (20, 64, 64), (10.0, 5.0, 5.0), AIR_HU, FAT_HU,
        (
            Blob("liver", (0.5, 0.45, 0.32), (0.35, 0.2, 0.17), 60.0),
            Blob("spleen", (0.5, 0.45, 0.74), (0.25, 0.1, 0.08), 45.0),
            Blob("kidney", (0.5, 0.62, 0.36), (0.2, 0.07, 0.06), 150.0),
            Blob("kidney", (0.5, 0.62, 0.64), (0.2, 0.07, 0.06), 150.0),
        ),
    ),
    CaseKind(
        "abdomen_ct_slice", "CT", "ABDOMEN", "CT abdomen single slice", "abdomen CT", (1, 96, 96), (5.0, 4.0, 4.0),
        AIR_HU, FAT_HU,
        (
            Blob("liver", (0.0, 0.45, 0.32), (1.0, 0.2, 0.17), 60.0),
            Blob("spleen", (0.0, 0.45, 0.74), (1.0, 0.1, 0.08), 45.0),
            Blob("kidney", (0.0, 0.62, 0.36), (1.0, 0.07, 0.06), 150.0),
        ),
    ),
    CaseKind(
        "chest_xray", "CR", "CHEST", "Chest PA", "chest X-ray", (1, 128, 128), (1.0, 2.5, 2.5), 200.0, 1800.0,
        (
            Blob("lung", (0.0, 0.45, 0.3), (1.0, 0.3, 0.14), 600.0),
            Blob("lung", (0.0, 0.45, 0.7), (1.0, 0.3, 0.14), 600.0),
            Blob("heart", (0.0, 0.6, 0.55), (1.0, 0.13, 0.12), 2600.0),
            Blob("nodule", (0.0, 0.35, 0.27), (1.0, 0.03, 0.03), 1500.0),
        ),
    ),
    CaseKind(
        "brain_mri", "MR", "HEAD", "MR brain T2", "brain MRI", (16, 64, 64), (5.0, 3.5, 3.5), 0.0, 300.0,
        (
            Blob("brain", (0.5, 0.5, 0.5), (0.45, 0.38, 0.32), 600.0),
            Blob("tumor", (0.55, 0.4, 0.62), (0.15, 0.08, 0.08), 1100.0),
        ),
    ),
    CaseKind(
        "brain_mri_slice", "MR", "HEAD", "MR brain FLAIR axial", "brain MRI", (1, 96, 96), (5.0, 2.5, 2.5), 0.0, 300.0,
        (
            Blob("brain", (0.0, 0.5, 0.5), (1.0, 0.38, 0.32), 600.0),
            Blob("tumor", (0.0, 0.38, 0.6), (1.0, 0.08, 0.08), 1100.0),
        ),
    ),
)


@dataclass
class SyntheticCase:
    name: str
    kind: CaseKind
    #: Slice files in order; the loader reads them back.
    files: list[Path]
    #: Target name -> mask (slices, rows, cols) in the loader's slice order (ascending position).
    masks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        return list(self.masks)


def _grid_masks(kind: CaseKind, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Modality values and per-target masks, with each blob jittered a little."""
    s, r, c = kind.shape
    zz, yy, xx = np.meshgrid(
        (np.arange(s) + 0.5) / s if s > 1 else np.zeros(1), (np.arange(r) + 0.5) / r, (np.arange(c) + 0.5) / c,
        indexing="ij",
    )
    values = np.full(kind.shape, kind.background, dtype=np.float32)
    body = ((yy - 0.5) / 0.42) ** 2 + ((xx - 0.5) / 0.46) ** 2 <= 1.0
    values[body] = kind.body
    masks: dict[str, np.ndarray] = {}
    for blob in kind.blobs:
        jitter = 1.0 + rng.uniform(-0.08, 0.08, size=3)
        shift = rng.uniform(-0.02, 0.02, size=3)
        cz, cy, cx = (blob.centre[i] + shift[i] for i in range(3))
        az, ay, ax = (blob.semi_axes[i] * jitter[i] for i in range(3))
        inside = ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 <= 1.0
        if s > 1:
            inside &= ((yy - cy) / ay) ** 2 + ((xx - cx) / ax) ** 2 + ((zz - cz) / az) ** 2 <= 1.0
        inside &= body
        values[inside] = blob.value
        masks[blob.name] = masks.get(blob.name, np.zeros(kind.shape, dtype=bool)) | inside
    values += rng.normal(0.0, 8.0, size=values.shape).astype(np.float32) * body
    # A nodule inside a lung is not lung.
    for name, mask in masks.items():
        for other, omask in masks.items():
            if other != name and omask.sum() < mask.sum():
                masks[name] = masks[name] & ~omask
    return values, masks


def write_case(kind: CaseKind, variant: int, out_dir: Path, seed: int) -> SyntheticCase:
    """Write one case as DICOM files under ``out_dir/<name>`` (created)."""
    rng = np.random.default_rng([seed, variant, CASE_KINDS.index(kind)])
    values, masks = _grid_masks(kind, rng)
    name = f"{kind.name}_{variant}"
    folder = out_dir / name
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid(entropy_srcs=["mmed-synthetic", name, str(seed)])
    series = generate_uid(entropy_srcs=["mmed-synthetic-series", name, str(seed)])
    frame = generate_uid(entropy_srcs=["mmed-synthetic-for", name, str(seed)])
    files = []
    for k in range(kind.shape[0]):
        ds = _slice_dataset(kind, values[k], k, study, series, frame, f"{name}-{seed}")
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return SyntheticCase(name, kind, files, masks)


def _slice_dataset(
    kind: CaseKind, pixels: np.ndarray, k: int, study: str, series: str, frame: str, key: str
) -> Dataset:
    sop_class = {"CT": CTImageStorage, "MR": MRImageStorage, "CR": ComputedRadiographyImageStorage}[kind.modality]
    sop = generate_uid(entropy_srcs=["mmed-synthetic-sop", key, str(k)])
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID = "SYNTHETIC^CASE", key  # synthetic, not a person
    ds.Modality = kind.modality
    ds.BodyPartExamined = kind.body_part
    ds.StudyDescription = ds.SeriesDescription = kind.description
    ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if kind.modality != "CR" else ""]
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    dz, dy, dx = kind.spacing
    if kind.modality == "CR":
        ds.ImagerPixelSpacing = [dy, dx]
        ds.ViewPosition = "PA"
        stored = np.clip(np.rint(pixels), 0, 65535)
    else:
        ds.FrameOfReferenceUID = frame
        ds.PixelSpacing = [dy, dx]
        ds.SliceThickness = dz
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-(ds.Columns / 2) * dx, -(ds.Rows / 2) * dy, k * dz]
        if kind.modality == "CT":
            ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, CT_INTERCEPT, "HU"
            ds.WindowCenter, ds.WindowWidth = 40, 400
            stored = np.clip(np.rint(pixels - CT_INTERCEPT), 0, 65535)
        else:
            stored = np.clip(np.rint(pixels), 0, 65535)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def write_cases(out_dir: Path, seed: int, variants: int = 2) -> list[SyntheticCase]:
    return [write_case(kind, v, out_dir, seed) for kind in CASE_KINDS for v in range(variants)]
