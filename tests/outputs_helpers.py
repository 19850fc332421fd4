"""Fixtures for the SEG/SR output tests: a small real CT series on disk, loaded into a Volume,
and tool results built from real numpy masks (no fakes of the encoders' inputs)."""
from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from image_model.codes import concept, unit
from image_model.findings import AlgorithmInfo, Box, Code, LabelScore, Measurement, Segment, ToolOutput
from image_model.loader import load_series
from image_model.measure import mask_volume_ml
from image_model.volume import Volume

ROWS = COLS = 32
SLICES = 8
PIXEL_SPACING = (0.8, 0.8)
SLICE_SPACING = 2.5


def write_ct_series(
    out_dir: Path, slices: int = SLICES, rows: int = ROWS, cols: int = COLS, **headers: object
) -> list[Path]:
    """Write a tiny axial CT series (HU = stored - 1024) with complete patient/study headers;
    ``headers``: attributes (by keyword) to set on every instance, e.g. ``PatientIdentityRemoved``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, for_uid = generate_uid(), generate_uid(), generate_uid()
    today = datetime.date.today().strftime("%Y%m%d")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(slices):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Out", "OUT1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, for_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = today, "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, i + 1
        ds.Manufacturer = "test"
        ds.PositionReferenceIndicator = ""
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        ds.AcquisitionNumber = 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-12.0, -12.0, i * SLICE_SPACING]
        ds.SliceThickness = SLICE_SPACING
        ds.PixelSpacing = list(PIXEL_SPACING)
        ds.Rows, ds.Columns = rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = rng.integers(0, 2000, (rows, cols), dtype=np.uint16).tobytes()
        for keyword, value in headers.items():
            setattr(ds, keyword, value)
        path = out_dir / f"ct{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def load_volume(paths: Sequence[Path]) -> Volume:
    """Load the written slices through the node's one loader (the real path outputs see)."""
    return load_series(list(paths))


def sphere(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float) -> np.ndarray:
    zz, yy, xx = np.indices(shape)
    cz, cy, cx = center
    return (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2


ALGORITHM = AlgorithmInfo(
    name="test spheres", version="1.2", family=concept("artificial_intelligence"),
    parameters={"threshold": "0.5"},
)


def lung_segment(volume: Volume, side: str, center: tuple[float, float, float], radius: float) -> Segment:
    """A real mask with measurements computed from it (volume in mL, mean HU)."""
    mask = sphere(volume.shape, center, radius)
    return Segment(
        label=f"{side.capitalize()} lung",
        category=concept("anatomical_structure"),
        type=concept(f"{side}_lung"),
        mask=mask,
        measurements=[
            Measurement(concept("volume"), mask_volume_ml(mask, volume), unit("mL")),
            Measurement(concept("attenuation_coefficient"), float(volume.pixels[mask].mean()), unit("HU")),
        ],
        anatomic_region=concept("lung"),
        laterality=concept(side),
    )


def two_lung_output(volume: Volume) -> ToolOutput:
    s, r, c = volume.shape
    # Radii small enough that the first and last slices stay empty (those frames are omitted).
    right = lung_segment(volume, "right", (s / 2 - 1.0, r / 2, c * 0.27), min(r, c) * 0.1)
    left = lung_segment(volume, "left", (s / 2, r / 2, c * 0.73), min(r, c) * 0.12)
    empty = Segment(
        label="Nothing", category=concept("tissue"), type=Code("39607008", "SCT", "Lung"),
        mask=np.zeros(volume.shape, dtype=bool),
    )
    return ToolOutput(
        api_name="ct lung segmentation", algorithm=ALGORITHM, summary={"lungs": 2},
        segments=[right, empty, left],
    )


def detection_output(slice_index: int | None) -> ToolOutput:
    return ToolOutput(
        api_name="grounding dino",
        algorithm=AlgorithmInfo("grounding dino", "0.0-test", concept("artificial_intelligence")),
        summary={"boxes": [[0.25, 0.25, 0.75, 0.5]]},
        boxes=[Box("nodule", 0.91, (0.25, 0.25, 0.75, 0.5), slice_index)],
    )


def classification_output() -> ToolOutput:
    return ToolOutput(
        api_name="BiomedClip",
        algorithm=AlgorithmInfo("BiomedClip", "0.0-test", concept("artificial_intelligence")),
        summary={"labels": ["chest CT"]},
        labels=[LabelScore("chest CT", 0.88), LabelScore("abdomen CT", 0.07)],
        text="Zero-shot classification: chest CT.",
    )


#: Prefix of the tracking identifiers of groups drawn for Cornerstone (sr_templates.sr.templates).
CORNERSTONE_PREFIX = "Cornerstone3DTools@^0.1.0:"


def finding_label(tracking_identifier: str) -> str:
    """The finding's label in a tracking identifier: without the Cornerstone tool prefix."""
    if tracking_identifier.startswith(CORNERSTONE_PREFIX):
        return tracking_identifier[len(CORNERSTONE_PREFIX):].partition(":")[2]
    return tracking_identifier


def drawn_findings(report: Any) -> dict[str, tuple[Any, Any]]:
    """Every drawn finding of a highdicom MeasurementReport, by label: (group, region), the
    region being a TID 1410 group's Image Region or the SCOORD/SCOORD3D its TID 1501 numbers are
    INFERRED FROM."""
    found: dict[str, tuple[Any, Any]] = {}
    for group in report.get_planar_roi_measurement_groups():
        found[finding_label(group.tracking_identifier)] = (group, group.roi)
    for group in report.get_image_measurement_groups():
        regions = [c for m in group.get_measurements() for c in m.referenced_coordinates]
        if regions:
            found[finding_label(group.tracking_identifier)] = (group, regions[0])
    return found
