"""Realistic CT series of a body (:mod:`tests.body_anatomy`) with the exact truth of every voxel.

A :class:`Scan` says which part of the body a series covers and how it is sampled; named scans
(:data:`SCANS`) are what real traffic sends a node: a chest, a chest whose first slice is below
the lung apices, an abdomen whose first slices hold only the lung bases, an upper abdomen without
lungs, a head, a neck reaching the apices, a pelvis, a chest-abdomen-pelvis. Confounders are scan
options: noise, metal with streak artefacts, a clipped field of view, a prone patient, a localizer
in the series, odd headers.

Sampling: each slice averages ``subsamples`` planes across its thickness (partial volume along z,
as a scanner integrates over the slice), then gets Gaussian noise. Truth masks (lungs, airway,
other gas) are the majority label of those planes, in the loader's slice order (ascending position
along the slice normal) and the written image orientation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from testkit.phantoms import _common_header, _ds, _file_meta
from tests import body_anatomy as anat
from tests.body_anatomy import Patient
from tests.body_paint import AIRWAY, GAS, LUNG_LEFT, LUNG_RIGHT, OUTSIDE, TABLE, Body, Canvas


@dataclass(frozen=True)
class Scan:
    """The part of the body a series covers (patient z of its first and last slice) and its grid."""

    z_top: float
    z_bottom: float
    slice_mm: float = 5.0
    rows: int = 128
    cols: int = 128
    pixel_mm: float = 3.0
    #: Patient (x, y) of the image centre; an off-centre or small field of view clips the body.
    centre: tuple[float, float] = (0.0, 0.0)
    noise_hu: float = 18.0
    #: None, "spine rods" (thoracic fixation) or "hip" (a right hip prosthesis).
    metal: str | None = None
    #: "axial" (rows to patient left, columns posterior) or "axial-rotated" (both reversed).
    orientation: str = "axial"
    subsamples: int = 3

    @property
    def slices(self) -> int:
        return round((self.z_top - self.z_bottom) / self.slice_mm) + 1


def scan_for(patient: Patient, name: str, **overrides: Any) -> Scan:
    """A named scan (see :data:`SCANS`) placed on this patient's landmarks."""
    return replace(SCANS[name](patient), **overrides)


def _recess(p: Patient) -> float:
    return min(p.z_dome_left, p.z_dome_right) - p.recess_drop


#: Named scans: what a PACS routes to the node.
SCANS: dict[str, Callable[[Patient], Scan]] = {
    "chest": lambda p: Scan(p.z_apex + 20.0, _recess(p) - 25.0),
    "chest-apex-clipped": lambda p: Scan(p.z_apex - 45.0, _recess(p) - 25.0),
    "abdomen-lung-bases": lambda p: Scan(max(p.z_dome_left, p.z_dome_right) + 5.0, -330.0),
    "upper-abdomen": lambda p: Scan(_recess(p) - 12.0, -300.0),
    "head": lambda p: Scan(545.0, 300.0, slice_mm=5.0),
    "neck-apices": lambda p: Scan(380.0, p.z_apex - 40.0),
    "pelvis": lambda p: Scan(-290.0, -545.0),
    "chest-abdomen-pelvis": lambda p: Scan(p.z_apex + 20.0, -545.0),
}


@dataclass
class BodyTruth:
    """What the series shows, voxel by voxel, in the loader's order and the image orientation."""

    patient: Patient
    scan: Scan
    study_uid: str
    series_uid: str
    files: list[Path] = field(default_factory=list)
    hu: np.ndarray | None = None
    left_lung: np.ndarray | None = None
    right_lung: np.ndarray | None = None
    airway: np.ndarray | None = None
    #: Gas that is not lung or airway: bowel, stomach, sinuses, mastoid cells, oesophagus.
    other_gas: np.ndarray | None = None

    def lung_ml(self, side: str) -> float:
        mask = self.left_lung if side == "left" else self.right_lung
        assert mask is not None
        return float(mask.sum()) * self.scan.pixel_mm**2 * self.scan.slice_mm / 1000.0

    def touches(self, side: str) -> set[str]:
        """Which edges of the volume the lung reaches: "superior", "inferior", "in-plane"."""
        mask = self.left_lung if side == "left" else self.right_lung
        assert mask is not None
        edges = set()
        if mask[-1].any():
            edges.add("superior")
        if mask[0].any():
            edges.add("inferior")
        if mask[:, [0, -1], :].any() or mask[:, :, [0, -1]].any():
            edges.add("in-plane")
        return edges


# --- metal ---------------------------------------------------------------------------------------

def _metal(patient: Patient, scan: Scan, z: float) -> list[tuple[float, float, float]]:
    """(x, y, radius) of metal cross-sections in the slice at height ``z``."""
    p = patient
    if scan.metal == "spine rods" and p.z_carina - 160.0 < z < p.z_carina + 30.0:
        y = float(p.spine_y(np.array(z))) + 30.0 * p.sy
        return [(-20.0 * p.sx, y, 3.5), (20.0 * p.sx, y, 3.5)]
    if scan.metal == "hip" and -560.0 < z < -440.0:
        if z > -492.0:
            r = float(np.sqrt(max(24.0**2 - (z + 468.0) ** 2, 0.0)))
            return [(-88.0 * p.sx, 5.0 * p.sy, max(r, 8.0))]
        return [(-100.0 * p.sx, 8.0 * p.sy, 8.0)]
    return []


def _add_metal(hu: np.ndarray, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray, patient: Patient, scan: Scan, rng: np.random.Generator) -> None:
    """Metal with streaks: bright and dark lines through it, the dark band joining two implants."""
    X, Y = np.meshgrid(xs, ys)
    for k, z in enumerate(zs):
        parts = _metal(patient, scan, float(z))
        if not parts:
            continue
        streaks = np.zeros_like(X)
        for x0, y0, radius in parts:
            base = rng.uniform(0, np.pi)
            for j in range(8):
                theta = base + j * np.pi / 8
                along = (X - x0) * np.cos(theta) + (Y - y0) * np.sin(theta)
                across = -(X - x0) * np.sin(theta) + (Y - y0) * np.cos(theta)
                sign = 1.0 if j % 2 else -1.0
                amp = sign * rng.uniform(350.0, 850.0) * (radius / 8.0 + 0.6)
                streaks += amp * np.exp(-(across**2) / (2 * 1.3**2)) * np.exp(-np.abs(along) / 140.0)
        if len(parts) >= 2:
            (x0, y0, _), (x1, y1, _) = parts[:2]
            direction = np.array([x1 - x0, y1 - y0]) / max(np.hypot(x1 - x0, y1 - y0), 1e-6)
            t = (X - x0) * direction[0] + (Y - y0) * direction[1]
            across = -(X - x0) * direction[1] + (Y - y0) * direction[0]
            streaks += -700.0 * np.exp(-(across**2) / (2 * 2.0**2)) * np.exp(-np.maximum(0, np.maximum(-t, t - np.hypot(x1 - x0, y1 - y0))) / 30.0)
        hu[k] += streaks.astype(np.float32)
        for x0, y0, radius in parts:
            hu[k][(X - x0) ** 2 + (Y - y0) ** 2 <= radius**2] = anat.METAL_HU


# --- sampling and writing ------------------------------------------------------------------------

def sample(patient: Patient, scan: Scan, seed: int = 0) -> BodyTruth:
    """Sample the body on the scan's grid (canonical orientation, ascending z) with its truth."""
    rng = np.random.default_rng([patient.seed, seed, 104729])
    canvas = Canvas(scan)
    Body(patient, canvas, rng).paint()
    n, s = scan.slices, scan.subsamples
    hu = canvas.hu.reshape(n, s, scan.rows, scan.cols).mean(axis=1)
    labels = canvas.label.reshape(n, s, scan.rows, scan.cols)

    def majority(label: int) -> np.ndarray:
        return (labels == label).sum(axis=1) * 2 > s

    body = (labels != OUTSIDE).any(axis=1) & ~majority(TABLE)
    zs = canvas.zs.reshape(n, s).mean(axis=1)
    if scan.metal:
        _add_metal(hu, canvas.xs, canvas.ys, zs, patient, scan, rng)
    hu += rng.normal(0.0, 1.0, size=hu.shape).astype(np.float32) * np.where(body, scan.noise_hu, 4.0).astype(np.float32)
    truth = BodyTruth(patient, scan, "", "")
    truth.hu = hu
    truth.left_lung, truth.right_lung = majority(LUNG_LEFT), majority(LUNG_RIGHT)
    truth.airway = majority(AIRWAY)
    truth.other_gas = (labels == GAS).any(axis=1)
    if scan.orientation == "axial-rotated":
        for name in ("hu", "left_lung", "right_lung", "airway", "other_gas"):
            setattr(truth, name, getattr(truth, name)[:, ::-1, ::-1].copy())
    elif scan.orientation != "axial":
        raise ValueError("orientation must be 'axial' or 'axial-rotated'")
    return truth


#: Header values per named scan (what real scanners write; tests override them for odd headers).
HEADERS: dict[str, dict[str, str]] = {
    "chest": {"BodyPartExamined": "CHEST", "SeriesDescription": "Thorax 5.0 B40f", "ProtocolName": "CT CHEST"},
    "chest-apex-clipped": {"BodyPartExamined": "CHEST", "SeriesDescription": "Chest 5mm", "ProtocolName": "Chest routine"},
    "abdomen-lung-bases": {"BodyPartExamined": "ABDOMEN", "SeriesDescription": "Abdomen 5.0 B30f", "ProtocolName": "CT ABDOMEN"},
    "upper-abdomen": {"BodyPartExamined": "ABDOMEN", "SeriesDescription": "Liver portal venous", "ProtocolName": "CT LIVER"},
    "head": {"BodyPartExamined": "HEAD", "SeriesDescription": "Head 5mm", "ProtocolName": "CT HEAD"},
    "neck-apices": {"BodyPartExamined": "NECK", "SeriesDescription": "Neck 5.0", "ProtocolName": "CT NECK"},
    "pelvis": {"BodyPartExamined": "PELVIS", "SeriesDescription": "Pelvis 5mm", "ProtocolName": "CT PELVIS"},
    "chest-abdomen-pelvis": {"BodyPartExamined": "CHEST", "SeriesDescription": "CAP 5.0", "ProtocolName": "CT CAP"},
}


def write_body_series(
    out_dir: Path,
    patient: Patient,
    scan: Scan,
    *,
    headers: dict[str, str | None] | None = None,
    localizer: bool = False,
    reverse_order: bool = False,
) -> BodyTruth:
    """Write the sampled body as one CT file per slice (plus a localizer if asked) into ``out_dir``.

    ``headers``: attribute keyword -> value, None deleting it (odd or missing headers).
    """
    truth = sample(patient, scan)
    assert truth.hu is not None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = f"{patient.seed}-{scan}"
    study = generate_uid(entropy_srcs=["body-study", key])
    series = generate_uid(entropy_srcs=["body-series", key])
    truth.study_uid, truth.series_uid = study, series
    if scan.orientation == "axial":
        row, col = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    else:
        row, col = np.array([-1.0, 0.0, 0.0]), np.array([0.0, -1.0, 0.0])
    half_c, half_r = (scan.cols - 1) / 2.0 * scan.pixel_mm, (scan.rows - 1) / 2.0 * scan.pixel_mm
    corner = np.array([scan.centre[0], scan.centre[1], 0.0]) - half_c * row - half_r * col
    zs = scan.z_bottom + scan.slice_mm * np.arange(scan.slices)
    stored = np.clip(np.rint(truth.hu + 1024.0), 0, 65535).astype(np.uint16)
    common = _common_header(
        patient_id=f"BODY^{patient.seed}", study_uid=study, series_uid=series,
        for_uid=generate_uid(entropy_srcs=["body-for", key]), row=row, col=col, rows=scan.rows,
        cols=scan.cols, pixel_spacing=scan.pixel_mm, slice_spacing=scan.slice_mm, slope=1.0,
        intercept=-1024.0, signed=False, tilt=0.0,
    )
    common.PatientName = "Phantom^Body"
    common.StudyDescription = "Body phantom"
    common.PatientPosition = "HFS" if patient.position == "supine" else "HFP"
    for keyword, value in (headers or {}).items():
        if value is None:
            if keyword in common:
                delattr(common, keyword)
        else:
            setattr(common, keyword, value)
    order = list(range(scan.slices))[::-1]  # instance 1 = most superior
    if reverse_order:
        order = order[::-1]
    files = {}
    for number, k in enumerate(order, start=1):
        ds = Dataset()
        ds.update(common)
        sop = generate_uid(entropy_srcs=["body-sop", series, str(k)])
        ds.file_meta = _file_meta(sop, "1.2.840.10008.1.2.1")
        ds.SOPInstanceUID = sop
        ds.InstanceNumber = number
        position = corner + np.array([0.0, 0.0, zs[k]])
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.SliceLocation = _ds(float(zs[k]))
        ds.PixelData = stored[k].tobytes()
        path = out_dir / f"CT{number:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[k] = path
    truth.files = [files[k] for k in range(scan.slices)]
    if localizer:
        _write_localizer(out_dir / "LOC0001.dcm", common, truth.hu, scan)
    return truth


def _write_localizer(path: Path, common: Dataset, hu: np.ndarray, scan: Scan) -> None:
    """A coronal projection image of the same series, typed LOCALIZER (a scout a scanner keeps)."""
    projection = hu.mean(axis=1)[::-1]  # (slices, cols), most superior row first
    image = np.clip(np.rint((projection + 1024.0) * 2.0), 0, 65535).astype(np.uint16)
    ds = Dataset()
    ds.update(common)
    sop = generate_uid(entropy_srcs=["body-localizer", str(common.SeriesInstanceUID)])
    ds.file_meta = _file_meta(sop, "1.2.840.10008.1.2.1")
    ds.SOPInstanceUID = sop
    ds.InstanceNumber = 1000
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "0", "-1"]
    ds.ImagePositionPatient = [_ds(-(scan.cols - 1) / 2.0 * scan.pixel_mm), "0", _ds(scan.z_top)]
    ds.PixelSpacing = [_ds(scan.slice_mm), _ds(scan.pixel_mm)]
    ds.Rows, ds.Columns = image.shape
    ds.RescaleSlope, ds.RescaleIntercept = "0.5", "-1024"
    ds.PixelData = image.tobytes()
    ds.save_as(path, enforce_file_format=True)
