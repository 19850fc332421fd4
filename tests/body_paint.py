"""Painting a :class:`tests.body_anatomy.Patient` onto a sampling grid, structure by structure.

:class:`Canvas` is a canonical grid (x along columns, y along rows, z ascending; several planes per
slice, see :mod:`tests.body_phantom`) holding HU and a truth label per point; :class:`Body` paints
the outline, wall, skeleton, lungs with vessels and bronchi, mediastinum, airway, abdominal organs,
bowel with its contents, pelvis and head, later structures over earlier ones. Each structure is
evaluated only inside its bounding box.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage
from scipy.special import ndtri

from tests import body_anatomy as anat
from tests.body_anatomy import Patient, Tube

if TYPE_CHECKING:
    from tests.body_phantom import Scan

# Labels of the truth map.
OUTSIDE, TISSUE, LUNG_LEFT, LUNG_RIGHT, AIRWAY, GAS, TABLE = range(7)


class Canvas:
    """The sampling grid and what is painted on it: HU and a truth label per point."""

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

    def around(
        self, centre: tuple[float, ...], semi: tuple[float, ...]
    ) -> tuple[tuple[slice, slice, slice], np.ndarray, np.ndarray, np.ndarray] | None:
        """:meth:`box` of the ellipsoid with this centre and these semi-axes."""
        lo = (centre[0] - semi[0], centre[1] - semi[1], centre[2] - semi[2])
        hi = (centre[0] + semi[0], centre[1] + semi[1], centre[2] + semi[2])
        return self.box(lo, hi)

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


def _tube_segments(canvas: Canvas, tube: Tube, margin: float) -> list[tuple[Any, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
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

class Body:
    """Paints one patient onto a canvas, structure by structure (later paint wins)."""

    def __init__(self, patient: Patient, canvas: Canvas, rng: np.random.Generator) -> None:
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
        """The lungs, on the whole canvas (``Z, Y, X`` of :meth:`Canvas.everything`)."""
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
        box = self.c.around(centre, semi)
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
        box = self.c.around(centre, semi)
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
        box = self.c.around(centre, semi)
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
        box = self.c.around(centre, semi)
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
