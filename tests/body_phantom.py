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
from scipy import ndimage
from scipy.special import ndtri

from tests import body_anatomy as anat
from tests.body_anatomy import Patient, Tube
from tests.phantoms import _common_header, _ds, _file_meta

# Labels of the truth map.
OUTSIDE, TISSUE, LUNG_LEFT, LUNG_RIGHT, AIRWAY, GAS, TABLE = range(7)


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


# --- the canvas: a canonical grid (x along columns, y along rows, z ascending) -------------------

class _Canvas:
    def __init__(self, scan: Scan) -> None:
        n = scan.slices * scan.subsamples
        step = scan.slice_mm / scan.subsamples
        self.zs = (scan.z_bottom - scan.slice_mm / 2.0 + step * (np.arange(n) + 0.5)).astype(np.float32)
        self.xs = (scan.centre[0] + (np.arange(scan.cols) - (scan.cols - 1) / 2.0) * scan.pixel_mm).astype(np.float32)
        self.ys = (scan.centre[1] + (np.arange(scan.rows) - (scan.rows - 1) / 2.0) * scan.pixel_mm).astype(np.float32)
        shape = (n, scan.rows, scan.cols)
        self.hu = np.full(shape, anat.AIR_HU, dtype=np.float32)
        self.label = np.zeros(shape, dtype=np.uint8)

    def box(
        self, lo: tuple[float, float, float], hi: tuple[float, float, float]
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """Index box and broadcastable coordinates (Z, Y, X) of the points inside [lo, hi]."""
        parts = []
        for axis, a, b in ((self.zs, lo[2], hi[2]), (self.ys, lo[1], hi[1]), (self.xs, lo[0], hi[0])):
            i0, i1 = int(np.searchsorted(axis, a)), int(np.searchsorted(axis, b, side="right"))
            if i1 <= i0:
                return None
            parts.append(slice(i0, i1))
        sz, sy, sx = parts
        return (sz, sy, sx), self.zs[sz][:, None, None], self.ys[sy][None, :, None], self.xs[sx][None, None, :]

    def everything(self) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray]:
        box = self.box((-1e9, -1e9, -1e9), (1e9, 1e9, 1e9))
        assert box is not None
        return box

    def paint(
        self, region: tuple[slice, slice, slice], mask: np.ndarray, hu: float | np.ndarray, label: int | None
    ) -> None:
        view = self.hu[region]
        mask = np.broadcast_to(mask, view.shape)
        if isinstance(hu, np.ndarray):
            view[mask] = np.broadcast_to(hu, mask.shape)[mask]
        else:
            view[mask] = hu
        if label is not None:
            self.label[region][mask] = label


def _normal_quantile(q: float) -> float:
    """The standard normal quantile (inverse CDF) of ``q`` (the field is unit normal)."""
    return float(ndtri(q))


def _ellipsoid(Z: np.ndarray, Y: np.ndarray, X: np.ndarray, c: tuple[float, ...], s: tuple[float, ...]) -> np.ndarray:
    return ((X - c[0]) / s[0]) ** 2 + ((Y - c[1]) / s[1]) ** 2 + ((Z - c[2]) / s[2]) ** 2 <= 1.0


def _segment_distance(
    Z: np.ndarray, Y: np.ndarray, X: np.ndarray, a: np.ndarray, b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of each point to the segment a-b, and the y of its nearest point on the segment."""
    ab = b - a
    t = ((X - a[0]) * ab[0] + (Y - a[1]) * ab[1] + (Z - a[2]) * ab[2]) / float(ab @ ab)
    t = np.clip(t, 0.0, 1.0)
    d2 = (X - a[0] - t * ab[0]) ** 2 + (Y - a[1] - t * ab[1]) ** 2 + (Z - a[2] - t * ab[2]) ** 2
    return np.sqrt(d2), a[1] + t * ab[1]


def _tube_segments(canvas: _Canvas, tube: Tube, margin: float) -> list[tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Per segment of the tube: its box, coordinates, distance to the axis and the axis y."""
    out = []
    for a, b in zip(tube.points[:-1], tube.points[1:]):
        pa, pb = np.array(a), np.array(b)
        reach = tube.radius + margin
        lo = tuple(float(v) for v in np.minimum(pa, pb) - reach)
        hi = tuple(float(v) for v in np.maximum(pa, pb) + reach)
        box = canvas.box(lo, hi)  # type: ignore[arg-type]
        if box is None:
            continue
        region, Z, Y, X = box
        dist, axis_y = _segment_distance(Z, Y, X, pa, pb)
        out.append((region, Z, Y, X, dist, axis_y))
    return out


# --- the body -------------------------------------------------------------------------------------

class _Body:
    """Paints one patient onto a canvas, structure by structure (later paint wins)."""

    def __init__(self, patient: Patient, canvas: _Canvas, rng: np.random.Generator) -> None:
        self.p, self.c, self.rng = patient, canvas, rng
        # Unit-variance smooth random fields: lung texture and stool/mastoid mottling.
        shape = canvas.hu.shape
        step = (canvas.zs[1] - canvas.zs[0]) if len(canvas.zs) > 1 else 1.0
        pixel = float(canvas.xs[1] - canvas.xs[0])
        self.texture = self._field(shape, (4.0 / step, 4.0 / pixel, 4.0 / pixel))
        self.bubbles = self._field(shape, (2.0 / step, 1.6 / pixel, 1.6 / pixel))

    def _field(self, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
        noise = ndimage.gaussian_filter(self.rng.standard_normal(shape, dtype=np.float32), sigma, truncate=2.5)
        return (noise / max(float(noise.std()), 1e-6)).astype(np.float32)

    def axes(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.p.body_axes(Z)

    def cavity(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        a, b, cy = self.axes(Z)
        w = self.p.wall_mm()
        inside = (X / (a - w)) ** 2 + ((Y - cy) / (b - w)) ** 2 <= 1.0
        return inside & (Z <= self.p.z_cavity_top) & (Z >= self.p.z_cavity_bottom)

    def below_diaphragm(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray, gap: float = 5.0) -> np.ndarray:
        return Z < self.p.diaphragm(X, Y) - gap

    def paint(self) -> None:
        self.outline()
        self.torso()
        self.spine_and_ribs()
        self.lungs()
        self.mediastinum()
        self.airways_and_lung_structures()
        self.abdomen()
        self.pelvis()
        self.head()
        self.table()

    def outline(self) -> None:
        region, Z, Y, X = self.c.everything()
        a, b, cy = self.axes(Z)
        rho = np.sqrt((X / a) ** 2 + ((Y - cy) / b) ** 2)
        depth = (1.0 - rho) * (a + b) / 2.0
        body = rho <= 1.0
        self.c.paint(region, body, anat.FAT_HU, TISSUE)
        self.c.paint(region, body & (depth > self.p.fat_mm), anat.MUSCLE_HU, TISSUE)

    def torso(self) -> None:
        """Cavity contents by default: mediastinal soft tissue above the diaphragm, fat below."""
        region, Z, Y, X = self.c.everything()
        cav = self.cavity(Z, Y, X)
        dome = self.p.diaphragm(X, Y)
        self.c.paint(region, cav & (Z >= dome), anat.SOFT_HU, TISSUE)
        self.c.paint(region, cav & (Z < dome) & (Z >= dome - 5.0), anat.MUSCLE_HU, TISSUE)
        self.c.paint(region, cav & (Z < dome - 5.0), anat.FAT_HU, TISSUE)

    def spine_and_ribs(self) -> None:
        p = self.p
        region, Z, Y, X = self.c.everything()
        sy = p.spine_y(Z)
        spine_z = (Z < 375.0) & (Z > -520.0)
        body_v = (X**2 + (Y - sy) ** 2 <= (17.0 * p.sx) ** 2) & spine_z
        disc = np.mod(Z, 32.0) < 7.0
        self.c.paint(region, body_v, np.where(disc, anat.SOFT_HU + 40.0, anat.BONE_HU), TISSUE)
        posterior = ((X / (18.0 * p.sx)) ** 2 + ((Y - sy - 30.0 * p.sy) / (11.0 * p.sy)) ** 2 <= 1.0) & spine_z
        self.c.paint(region, posterior, anat.BONE_HU, TISSUE)
        # Ribs: arcs in the chest wall, descending from the spine towards the front.
        for i in range(12):
            z0 = p.z_apex + 18.0 - 27.0 * i
            box = self.c.box((-1e9, -1e9, z0 - 52.0), (1e9, 1e9, min(z0 + 6.0, p.z_apex + 25.0)))
            if box is None:
                continue
            rib_region, RZ, RY, RX = box
            a, b, cy = self.axes(RZ)
            rho = np.sqrt((RX / a) ** 2 + ((RY - cy) / b) ** 2)
            depth = (1.0 - rho) * (a + b) / 2.0
            band = (depth > p.fat_mm + 4.0) & (depth < p.fat_mm + 13.0) & (np.abs(RX) > 25.0)
            phi = np.arctan2(np.abs(RX) / a, (RY - cy) / b) / np.pi  # 0 posterior .. 1 anterior
            reach = 0.85 if i < 7 else 0.72 if i < 10 else 0.5
            rib = band & (np.abs(RZ - (z0 - 45.0 * phi**1.3)) < 5.0) & (phi < reach)
            self.c.paint(rib_region, rib, anat.BONE_HU, TISSUE)
        a, b, cy = self.axes(Z)
        # Sternum.
        sternum = (np.abs(X) < 13.0) & (Y - cy < -(b - p.fat_mm - 14.0)) & (Y - cy > -(b - p.fat_mm - 2.0))
        sternum &= (Z < p.z_carina + 60.0) & (Z > p.z_dome_right - 25.0)
        self.c.paint(region, sternum, anat.BONE_HU, TISSUE)

    def lung_region(self, Z: np.ndarray, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The lungs, on the whole canvas (``Z, Y, X`` of :meth:`_Canvas.everything`)."""
        p = self.p
        inside = self.cavity(Z, Y, X) & (Z > p.diaphragm(X, Y)) & (Z < p.apex_surface(X, Y))
        spine = p.spine_y(Z)
        medial = np.where(Y < -40.0 * p.sy, 13.0, np.where(Y < spine - 25.0, 26.0, 31.0)) * p.sx
        # The hila: main bronchi and pulmonary arteries widen the mediastinum below the carina.
        hila = (Z > p.z_carina - 50.0) & (Z < p.z_carina + 15.0) & (np.abs(Y) < 35.0 * p.sy)
        medial = np.where(hila, 40.0 * p.sx, medial)
        inside &= np.abs(X) > medial
        centre, semi = p.heart()
        inside &= ~_ellipsoid(Z, Y, X, centre, semi)
        inside &= X**2 + (Y - spine) ** 2 > (22.0 * p.sx) ** 2
        inside = np.broadcast_to(inside, np.broadcast_shapes(Z.shape, Y.shape, X.shape)).copy()
        aorta = p.aorta()
        for region, _, _, _, dist, _ in _tube_segments(self.c, aorta, 3.0):  # the whole canvas: same indices
            inside[region] &= dist > aorta.radius + 3.0
        return inside

    def lungs(self) -> None:
        p = self.p
        region, Z, Y, X = self.c.everything()
        lung = self.lung_region(Z, Y, X)
        _a, b, cy = self.axes(Z)
        dependent = np.clip((p.gravity_sign * (Y - cy) / b + 1.0) / 2.0, 0.0, 1.0)
        hu = p.lung_hu + anat.LUNG_GRADIENT_HU * dependent + 14.0 * self.texture[region]
        self.c.paint(region, lung & (X > 0), hu, LUNG_LEFT)
        self.c.paint(region, lung & (X <= 0), hu, LUNG_RIGHT)

    def mediastinum(self) -> None:
        p = self.p
        centre, semi = p.heart()
        lo = tuple(c - s for c, s in zip(centre, semi))
        hi = tuple(c + s for c, s in zip(centre, semi))
        box = self.c.box(lo, hi)  # type: ignore[arg-type]
        if box is not None:
            region, Z, Y, X = box
            self.c.paint(region, _ellipsoid(Z, Y, X, centre, semi) & self.cavity(Z, Y, X), anat.BLOOD_HU, TISSUE)
        self.tube(p.aorta(), p.aorta_hu, TISSUE)
        esophagus = p.esophagus()
        self.tube(esophagus, anat.MUSCLE_HU, TISSUE)
        if p.esophageal_air:
            self.tube(replace(esophagus, radius=3.5), anat.AIR_HU, GAS)

    def tube(self, tube: Tube, hu: float, label: int | None, where: int | None = None) -> None:
        """Fill a tube; with ``where``, only voxels already carrying that label."""
        for region, _, _, _, dist, _ in _tube_segments(self.c, tube, 0.0):
            mask = dist <= tube.radius
            if where is not None:
                mask &= self.c.label[region] == where
            self.c.paint(region, mask, hu, label)

    def airways_and_lung_structures(self) -> None:
        p = self.p
        trachea = p.trachea()
        # Trachea and main bronchi: airway outside the lungs, bronchus inside them. Every wall
        # first, then every lumen, so a wall never closes the junction at the carina.
        segments = [
            (tube, segment)
            for tube in (trachea, p.main_bronchus(1.0), p.main_bronchus(-1.0))
            for segment in _tube_segments(self.c, tube, 2.0)
        ]
        for tube, (region, _, _, _, dist, _) in segments:
            labels = self.c.label[region]
            in_lung = (labels == LUNG_LEFT) | (labels == LUNG_RIGHT)
            self.c.paint(region, (dist <= tube.radius + 2.0) & ~in_lung, anat.SOFT_HU, None)
        for tube, (region, _, _, _, dist, _) in segments:
            lumen = dist <= tube.radius
            labels = self.c.label[region]
            in_lung = (labels == LUNG_LEFT) | (labels == LUNG_RIGHT)
            self.c.paint(region, lumen & ~in_lung, anat.AIR_HU, AIRWAY)
            self.c.paint(region, lumen & in_lung, anat.AIR_HU, None)
        for side, label in (("left", LUNG_LEFT), ("right", LUNG_RIGHT)):
            for tube in p.vessels.get(side, ()):
                self.tube(tube, anat.BLOOD_HU, None, where=label)
            for tube in p.bronchi.get(side, ()):
                self.tube(tube, anat.AIR_HU, None, where=label)

    def organ(self, centre: tuple[float, ...], semi: tuple[float, ...], hu: float, extra: Callable[..., np.ndarray] | None = None) -> None:
        lo = tuple(c - s for c, s in zip(centre, semi))
        hi = tuple(c + s for c, s in zip(centre, semi))
        box = self.c.box(lo, hi)  # type: ignore[arg-type]
        if box is None:
            return
        region, Z, Y, X = box
        mask = _ellipsoid(Z, Y, X, centre, semi) & self.cavity(Z, Y, X) & self.below_diaphragm(Z, Y, X)
        if extra is not None:
            mask &= extra(Z, Y, X)
        self.c.paint(region, mask, hu, TISSUE)

    def abdomen(self) -> None:
        p = self.p
        sx, sy = p.sx, p.sy
        # Liver: the whole space under the right dome, down to a sloping lower edge.
        box = self.c.box((-200.0, -150.0, -260.0), (120.0, 150.0, max(p.z_dome_right, p.z_dome_left) + 5.0))
        if box is not None:
            region, Z, Y, X = box
            liver = self.cavity(Z, Y, X) & self.below_diaphragm(Z, Y, X)
            liver &= Z > -175.0 + 0.45 * (X + 100.0 * sx)
            liver &= X < 40.0 * sx - 0.6 * (Y + 10.0 * sy)
            self.c.paint(region, liver, anat.LIVER_HU, TISSUE)
        self.organ((88.0 * sx, 58.0 * sy, p.z_dome_left - 45.0), (26.0 * sx, 38.0 * sy, 45.0), 48.0)  # spleen
        for side, dz in ((1.0, 0.0), (-1.0, -15.0)):
            self.organ((side * 70.0 * sx, 52.0 * sy, -150.0 + dz), (28.0, 24.0, 55.0), anat.SOFT_HU)  # kidneys
        self.stomach()
        self.bowel(p.colon)
        self.bowel(p.small_bowel)

    def stomach(self) -> None:
        p = self.p
        centre = (52.0 * p.sx, -18.0 * p.sy, p.z_dome_left - 55.0)
        semi = (46.0 * p.sx, 42.0 * p.sy, 52.0)
        lo = tuple(c - s for c, s in zip(centre, semi))
        hi = tuple(c + s for c, s in zip(centre, semi))
        box = self.c.box(lo, hi)  # type: ignore[arg-type]
        if box is None:
            return
        region, Z, Y, X = box
        space = self.cavity(Z, Y, X) & self.below_diaphragm(Z, Y, X, gap=9.0)
        outer = _ellipsoid(Z, Y, X, centre, semi) & space
        lumen = _ellipsoid(Z, Y, X, centre, tuple(s - 4.0 for s in semi)) & space
        self.c.paint(region, outer, anat.SOFT_HU, TISSUE)
        height = -p.gravity_sign * (Y - centre[1])
        gas = lumen & (height > semi[1] * (1.0 - 2.0 * p.stomach_gas_fraction))
        self.c.paint(region, lumen & ~gas, anat.FLUID_HU, TISSUE)
        self.c.paint(region, gas, anat.AIR_HU, GAS)

    def bowel(self, tubes: tuple[Tube, ...]) -> None:
        """Walls of every segment first, then lumens (so joints stay open): gas over stool or fluid."""
        p = self.p
        segments = [(t, s) for t in tubes for s in _tube_segments(self.c, t, 0.0)]
        for tube, (region, Z, Y, X, dist, _) in segments:
            space = self.cavity(Z, Y, X) & self.below_diaphragm(Z, Y, X, gap=8.0)
            self.c.paint(region, (dist <= tube.radius) & space, anat.SOFT_HU, TISSUE)
        for tube, (region, Z, Y, X, dist, axis_y) in segments:
            space = self.cavity(Z, Y, X) & self.below_diaphragm(Z, Y, X, gap=11.0)
            inner = tube.radius - 3.0
            lumen = (dist <= inner) & space
            height = -p.gravity_sign * (Y - axis_y)
            gas = lumen & (height > inner * (1.0 - 2.0 * tube.gas_fraction)) if tube.gas_fraction > 0 else lumen & False
            rest = lumen & ~gas
            if tube.content == "stool":
                bubbles = rest & (self.bubbles[region] > _normal_quantile(1.0 - tube.bubbles))
                self.c.paint(region, rest, anat.STOOL_HU, TISSUE)
                self.c.paint(region, bubbles, anat.AIR_HU, GAS)
            else:
                self.c.paint(region, rest, anat.FLUID_HU, TISSUE)
            self.c.paint(region, gas, anat.AIR_HU, GAS)

    def pelvis(self) -> None:
        p = self.p
        sx, sy = p.sx, p.sy
        box = self.c.box((-200.0, -150.0, -430.0), (200.0, 150.0, -295.0))
        if box is not None:
            region, _Z, Y, X = box
            q = (X / (118.0 * sx)) ** 2 + ((Y - 20.0 * sy) / (72.0 * sy)) ** 2
            ilium = (q <= 1.0) & (q >= 0.8) & (np.abs(X) > 65.0 * sx) & (Y > -35.0 * sy)
            self.c.paint(region, ilium, anat.BONE_HU, TISSUE)
        self.organ((0.0, 72.0 * sy, -385.0), (42.0 * sx, 18.0 * sy, 50.0), anat.BONE_HU)  # sacrum
        self.organ((0.0, -35.0 * sy, -468.0), (45.0 * sx, 35.0 * sy, 32.0), anat.FLUID_HU)  # bladder
        for side in (1.0, -1.0):
            head = (side * 88.0 * sx, 5.0 * sy, -468.0)
            self.organ(head, (24.0, 24.0, 24.0), anat.BONE_HU)
            self.tube(Tube((head, (side * 122.0 * sx, 10.0 * sy, -560.0)), 16.0), anat.BONE_HU, TISSUE)

    def head(self) -> None:
        p = self.p
        sx, sy = p.sx, p.sy
        box = self.c.box((-100.0, -130.0, 360.0), (100.0, 120.0, 560.0))
        if box is not None:
            region, Z, Y, X = box
            centre, semi = (0.0, -10.0 * sy, 452.0), (70.0 * sx, 90.0 * sy, 95.0)
            skull = _ellipsoid(Z, Y, X, centre, semi) & (Z > 372.0)
            brain = _ellipsoid(Z, Y, X, centre, tuple(s - 7.0 for s in semi)) & (Z > 379.0)
            self.c.paint(region, skull, anat.CORTEX_HU, TISSUE)
            self.c.paint(region, brain, anat.SOFT_HU, TISSUE)
        for centre, semi in (
            ((28.0 * sx, -55.0 * sy, 372.0), (14.0, 16.0, 17.0)),  # maxillary sinuses
            ((-28.0 * sx, -55.0 * sy, 372.0), (14.0, 16.0, 17.0)),
            ((0.0, -72.0 * sy, 368.0), (9.0, 22.0, 22.0)),  # nasal cavity
            ((0.0, -86.0 * sy, 470.0), (15.0, 6.0, 10.0)),  # frontal sinus
            ((0.0, -22.0 * sy, 398.0), (11.0, 10.0, 10.0)),  # sphenoid sinus
        ):
            self._gas_pocket(centre, semi, mottled=False)
        for side in (1.0, -1.0):
            self._gas_pocket((side * 58.0 * sx, 12.0 * sy, 398.0), (12.0, 12.0, 14.0), mottled=True)  # mastoids

    def _gas_pocket(self, centre: tuple[float, ...], semi: tuple[float, ...], mottled: bool) -> None:
        lo = tuple(c - s for c, s in zip(centre, semi))
        hi = tuple(c + s for c, s in zip(centre, semi))
        box = self.c.box(lo, hi)  # type: ignore[arg-type]
        if box is None:
            return
        region, Z, Y, X = box
        inside = _ellipsoid(Z, Y, X, centre, semi)
        if mottled:
            cells = inside & (self.bubbles[region] > 0.0)
            self.c.paint(region, inside, anat.BONE_HU, TISSUE)
            self.c.paint(region, cells, anat.AIR_HU, GAS)
        else:
            self.c.paint(region, inside, anat.AIR_HU, GAS)

    def table(self) -> None:
        p = self.p
        region, Z, Y, X = self.c.everything()
        near = (135.0 * p.sy, 147.0 * p.sy)
        y_lo, y_hi = (near if p.gravity_sign > 0 else (-near[1], -near[0]))
        slab = (Y > y_lo) & (Y < y_hi) & (np.abs(X) < 180.0) & (Z < 1e9)
        self.c.paint(region, slab & (self.c.label[region] == OUTSIDE), 250.0, TABLE)


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
    canvas = _Canvas(scan)
    _Body(patient, canvas, rng).paint()
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
