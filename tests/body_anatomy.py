"""A body from the skull to the pelvis, defined in patient coordinates, for realistic CT phantoms.

The lung tool must tell lungs from everything else that is air inside a body: bowel gas mottled
with stool, stomach and small-bowel gas over fluid (air-fluid levels), paranasal sinuses and
mastoid cells, the airway. This module describes such a body as physical objects (LPS
millimetres, PS3.3 C.7.6.2.1.1: +x patient left, +y posterior, +z superior) that
:mod:`tests.body_phantom` samples on an image grid, so the truth of every voxel is known.

Landmarks (z, mm) of the default adult; :func:`make_patient` varies them per seed:

* skull vertex ~ +540, skull base ~ +370, neck +260..+340 with the trachea in front of the spine;
* lung apices ~ +210, carina ~ +130, right dome of the diaphragm ~ 0, left ~ -15, posterior
  costophrenic recesses ~ 70 mm below the domes (the lung bases wrap round the liver and spleen);
* liver, spleen and stomach under the domes; colon from the caecum (~ -330) up to the hepatic and
  splenic flexures (~ -110..-150) and down to the rectum; small-bowel loops in the mid-abdomen;
* iliac wings ~ -300..-420, femoral heads and bladder ~ -450..-480.

The shapes are deliberately simple (ellipsoids, tubes, quadric surfaces) but placed and sized as
in people, with what matters to a lung finder: the lungs are the hemithorax cavity above the
diaphragm, lateral to the mediastinum, heart and spine, with vessels from the hila and bronchi
joining the trachea; gas elsewhere lies over fluid or in stool.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace

import numpy as np

# Hounsfield units of the materials.
AIR_HU = -1000.0
FAT_HU = -95.0
MUSCLE_HU = 45.0
SOFT_HU = 35.0
FLUID_HU = 12.0
BLOOD_HU = 40.0
STOOL_HU = 25.0
BONE_HU = 450.0
CORTEX_HU = 900.0
LIVER_HU = 58.0
METAL_HU = 3000.0
LUNG_HU = -865.0
#: Extra density of dependent lung (gravity gradient in supine or prone patients).
LUNG_GRADIENT_HU = 60.0

Point = tuple[float, float, float]

#: Body outline anchors: z -> (semi-axis x, semi-axis y, centre y), linearly interpolated.
_BODY_ANCHORS: tuple[tuple[float, float, float, float], ...] = (
    (-560.0, 160.0, 105.0, 0.0),
    (-450.0, 172.0, 112.0, 0.0),
    (-350.0, 168.0, 115.0, 0.0),
    (-250.0, 150.0, 118.0, 0.0),
    (-100.0, 152.0, 115.0, 0.0),
    (0.0, 160.0, 112.0, 0.0),
    (150.0, 155.0, 108.0, 0.0),
    (225.0, 125.0, 95.0, 0.0),
    (265.0, 62.0, 58.0, 5.0),
    (335.0, 56.0, 55.0, 5.0),
    (385.0, 70.0, 95.0, -10.0),
    (450.0, 75.0, 97.0, -10.0),
    (520.0, 68.0, 88.0, -10.0),
    (555.0, 35.0, 45.0, -10.0),
)


@dataclass(frozen=True)
class Tube:
    """A polyline of ``points`` with one radius (a bowel loop, a bronchus, a vessel)."""

    points: tuple[Point, ...]
    radius: float
    #: Bowel only: fraction of the lumen height filled with gas (the non-dependent part).
    gas_fraction: float = 0.0
    #: Bowel only: "stool" (mottled, colon) or "fluid" (small bowel, air-fluid level).
    content: str = "fluid"
    #: Stool only: fraction of it that is gas bubbles (above ~0.4 they join into a sponge).
    bubbles: float = 0.28


@dataclass(frozen=True)
class Patient:
    """One body: sizes and landmark heights, and the random layout of bowel and vessels."""

    seed: int
    #: Body width and depth factors (1 = the default adult).
    sx: float = 1.0
    sy: float = 1.0
    fat_mm: float = 18.0
    z_apex: float = 210.0
    z_carina: float = 130.0
    z_dome_right: float = 0.0
    z_dome_left: float = -15.0
    #: How far the posterior recess descends below its dome (mm).
    recess_drop: float = 68.0
    #: "supine" (gravity towards +y, the back) or "prone" (towards -y).
    position: str = "supine"
    esophageal_air: bool = False
    #: Aorta attenuation: 40 (no contrast) or ~250 (arterial contrast).
    aorta_hu: float = BLOOD_HU
    lung_hu: float = LUNG_HU
    stomach_gas_fraction: float = 0.4
    colon: tuple[Tube, ...] = ()
    small_bowel: tuple[Tube, ...] = ()
    #: Per lung ("left"/"right"): vessel and bronchus tubes inside it.
    vessels: dict[str, tuple[Tube, ...]] = field(default_factory=dict)
    bronchi: dict[str, tuple[Tube, ...]] = field(default_factory=dict)

    @property
    def gravity_sign(self) -> float:
        """+1 when gravity pulls towards +y (supine), -1 when towards -y (prone)."""
        return 1.0 if self.position == "supine" else -1.0

    # --- outlines ------------------------------------------------------------------------------

    def body_axes(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body outline semi-axes (x, y) and centre y at heights ``z``."""
        zs, ax, ay, cy = (np.array(col) for col in zip(*_BODY_ANCHORS))
        return (
            np.interp(z, zs, ax) * self.sx,
            np.interp(z, zs, ay) * self.sy,
            np.interp(z, zs, cy) * self.sy,
        )

    def wall_mm(self) -> float:
        """Chest/abdominal wall thickness: fat, muscle and ribs."""
        return self.fat_mm + 22.0

    @property
    def z_cavity_top(self) -> float:
        return self.z_apex + 12.0

    @property
    def z_cavity_bottom(self) -> float:
        return -500.0

    def spine_y(self, z: np.ndarray) -> np.ndarray:
        """Centre y of the vertebral bodies."""
        _, ay, cy = self.body_axes(z)
        return cy + 0.52 * ay

    def dome(self, side: float, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Height of one hemidiaphragm (``side`` +1 left, -1 right): a dome highest at its centre,
        descending to the costophrenic recesses (most posteriorly)."""
        top = self.z_dome_left if side > 0 else self.z_dome_right
        q = ((x - side * 70.0 * self.sx) / (88.0 * self.sx)) ** 2 + ((y + 15.0 * self.sy) / (92.0 * self.sy)) ** 2
        return top - self.recess_drop * q

    def diaphragm(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.maximum(self.dome(1.0, x, y), self.dome(-1.0, x, y))

    def apex_surface(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Upper limit of the lungs: the apices rise posteriorly above the clavicles."""
        q = ((np.abs(x) - 55.0 * self.sx) / (75.0 * self.sx)) ** 2 + ((y - 15.0 * self.sy) / (75.0 * self.sy)) ** 2
        return self.z_apex - 90.0 * q

    def heart(self) -> tuple[Point, Point]:
        """Anterior, left, on the diaphragm: in front of and below the hila."""
        return (25.0 * self.sx, -35.0 * self.sy, self.z_dome_right + 45.0), (68.0 * self.sx, 52.0 * self.sy, 56.0)

    def aorta(self) -> Tube:
        z0, z1 = self.z_carina + 15.0, -260.0
        y0 = float(self.spine_y(np.array(z0))) - 24.0 * self.sy
        y1 = float(self.spine_y(np.array(z1))) - 26.0 * self.sy
        return Tube(((22.0 * self.sx, y0, z0), (12.0 * self.sx, y1, z1)), 13.0)

    def trachea(self) -> Tube:
        return Tube(
            ((0.0, -28.0 * self.sy, 365.0), (0.0, -25.0 * self.sy, 300.0), (0.0, -6.0 * self.sy, self.z_carina)), 9.0
        )

    def hilum(self, side: float) -> Point:
        """Where a main bronchus enters its lung, ~4 cm below the carina."""
        return (side * 58.0 * self.sx, 10.0 * self.sy, self.z_carina - 40.0)

    def main_bronchus(self, side: float) -> Tube:
        start = (0.0, -6.0 * self.sy, self.z_carina)
        return Tube((start, self.hilum(side)), 7.0 if side < 0 else 6.0)

    def esophagus(self) -> Tube:
        sp = float(self.spine_y(np.array(self.z_carina)))
        return Tube(
            (
                (0.0, 5.0, 300.0),
                (-4.0, sp - 30.0 * self.sy, self.z_carina),
                (12.0 * self.sx, sp - 32.0 * self.sy, self.z_dome_left),
                (38.0 * self.sx, -5.0 * self.sy, self.z_dome_left - 40.0),
            ),
            8.0,
        )


def _jitter(rng: np.random.Generator, point: Point, mm: float) -> Point:
    dx, dy, dz = rng.uniform(-mm, mm, size=3)
    return (point[0] + dx, point[1] + dy, point[2] + dz)


def _colon(rng: np.random.Generator, p: Patient) -> tuple[Tube, ...]:
    """Caecum -> rectum, in segments with their own gas fraction (stool fills the rest)."""
    sx, sy = p.sx, p.sy
    path: list[tuple[Point, float]] = [
        ((-85 * sx, 5 * sy, -330.0), 0.1),    # caecum: mostly stool
        ((-100 * sx, 25 * sy, -250.0), 0.15),  # ascending colon
        ((-95 * sx, 20 * sy, -180.0), 0.3),
        ((-75 * sx, -25 * sy, -150.0), 0.5),   # hepatic flexure
        ((-30 * sx, -72 * sy, -205.0), 0.7),   # transverse colon, anterior: gas
        ((30 * sx, -72 * sy, -205.0), 0.6),
        ((100 * sx, 12 * sy, -118.0), 0.5),    # splenic flexure, high under the left dome
        ((108 * sx, 38 * sy, -185.0), 0.3),    # descending colon
        ((102 * sx, 38 * sy, -290.0), 0.3),
        ((50 * sx, -15 * sy, -385.0), 0.35),   # sigmoid
        ((0.0, 15 * sy, -420.0), 0.3),
        ((0.0, 72 * sy, -455.0), 0.3),         # rectum
        ((0.0, 78 * sy, -525.0), 0.2),
    ]
    tubes = []
    for i, ((a, frac), (b, _)) in enumerate(itertools.pairwise(path)):
        gas = float(np.clip(frac + rng.uniform(-0.15, 0.15), 0.0, 0.85))
        radius = float(rng.uniform(19.0, 25.0))
        # The right colon often holds foamy stool: bubbles joined into a sponge of gas and stool.
        bubbles = float(rng.uniform(0.4, 0.55)) if i < 3 else float(rng.uniform(0.2, 0.35))
        tubes.append(Tube((_jitter(rng, a, 6.0), _jitter(rng, b, 6.0)), radius, gas, "stool", bubbles))
    return tuple(tubes)


def _small_bowel(rng: np.random.Generator, p: Patient, loops: int) -> tuple[Tube, ...]:
    """Loops in the mid-abdomen, each with an air-fluid level or collapsed (fluid only)."""
    tubes = []
    for _ in range(loops):
        centre = (rng.uniform(-65, 65) * p.sx, rng.uniform(-60, 15) * p.sy, rng.uniform(-330, -225))
        points = [centre]
        for _ in range(3):
            step = rng.normal(0.0, 1.0, size=3)
            step *= 28.0 / max(float(np.linalg.norm(step)), 1e-6)
            last = points[-1]
            points.append((last[0] + step[0], last[1] + step[1] * 0.6, last[2] + step[2]))
        gas = float(rng.choice([0.0, rng.uniform(0.25, 0.5), rng.uniform(0.3, 0.6)]))
        tubes.append(Tube(tuple(points), float(rng.uniform(11.0, 15.0)), gas, "fluid"))
    return tuple(tubes)


def _tree(
    rng: np.random.Generator, p: Patient, side: float, branches: int, radii: tuple[float, float]
) -> tuple[Tube, ...]:
    """Branches from the hilum to random points of the lung (vessels, or bronchi with larger radii)."""
    hilum = np.array(p.hilum(side))
    tubes = []
    for _ in range(branches):
        # A peripheral target in the hemithorax: spread up, down, front and back of the hilum.
        target = hilum + np.array(
            [side * rng.uniform(20, 95) * p.sx, rng.uniform(-65, 70) * p.sy, rng.uniform(-150, 85)]
        )
        target[2] = min(target[2], p.z_apex - 30.0)
        mid = hilum + 0.45 * (target - hilum) + rng.normal(0.0, 8.0, size=3)
        tubes.append(Tube((tuple(hilum), tuple(mid)), radii[0]))
        tubes.append(Tube((tuple(mid), tuple(target)), radii[1]))
    return tuple(tubes)


def make_patient(seed: int, **overrides: object) -> Patient:
    """A body whose sizes, dome heights, bowel layout and lung vessels depend on ``seed``.

    Keyword overrides replace fields after the random draw (e.g. ``position="prone"``).
    """
    rng = np.random.default_rng([seed, 7919])
    base = Patient(
        seed=seed,
        sx=float(rng.uniform(0.9, 1.08)),
        sy=float(rng.uniform(0.9, 1.08)),
        fat_mm=float(rng.uniform(10.0, 28.0)),
        z_apex=float(rng.uniform(195.0, 225.0)),
        z_carina=float(rng.uniform(120.0, 140.0)),
        z_dome_right=float(rng.uniform(-8.0, 12.0)),
        z_dome_left=float(rng.uniform(-28.0, -5.0)),
        recess_drop=float(rng.uniform(60.0, 78.0)),
        stomach_gas_fraction=float(rng.uniform(0.25, 0.55)),
    )
    base = replace(base, **overrides)  # type: ignore[arg-type]
    colon = base.colon or _colon(rng, base)
    small = base.small_bowel or _small_bowel(rng, base, int(rng.integers(7, 12)))
    vessels = base.vessels or {
        name: _tree(rng, base, side, 14, (3.2, 1.8)) for name, side in (("left", 1.0), ("right", -1.0))
    }
    bronchi = base.bronchi or {
        name: _tree(rng, base, side, 3, (4.0, 2.5)) for name, side in (("left", 1.0), ("right", -1.0))
    }
    return replace(base, colon=colon, small_bowel=small, vessels=vessels, bronchi=bronchi)
