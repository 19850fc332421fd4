"""``ct lung segmentation``: left and right lungs from Hounsfield units alone (no model weights).

The classic threshold-and-components method (after Hu, Hoffman & Reinhardt, IEEE TMI 2001):

1. **Body**: voxels above ``body_threshold_hu`` (-500), the largest 3D component (drops the
   table and other objects in air), holes filled slice by slice (the lungs are such holes).
2. **Air inside the body**: voxels below ``lung_threshold_hu`` (-320) within the filled body.
   Air outside the body is excluded by construction; components touching the image border in-plane
   are dropped too (a body cut by the field of view leaks outside air in).
3. **Airways**: the trachea is found as a small, roughly midline air region in the most superior
   slice with air, and followed inferiorly slice by slice (trachea, then the main bronchi) for as
   long as each connected piece stays small; those voxels are removed so they neither count as lung
   nor join the two lungs into one component.
4. **Lungs**: the two largest remaining 3D components on opposite sides of the body midline. One
   component spanning both sides (lungs touching at the anterior junction line) is split by
   in-plane erosion until it falls into two seeds, every voxel then going to the nearest seed;
   failing that, by the mid-sagittal plane of the body. Holes inside each lung (vessels) are filled
   slice by slice. Left/right comes from patient coordinates: patient left is +x in LPS
   (PS3.3 C.7.6.2.1.1), whatever the image orientation or slice order.
5. **Measurements**: volume integrates each slice's area over that slice's own thickness (half
   the gap to each neighbour, :func:`image_model.geometry.slice_thicknesses`), so uneven spacing and
   a missing slice keep volumes right; mean HU over the lung mask.

Refused with a reason: not CT, fewer than ``MIN_SLICES`` slices, slices not roughly axial (the
slice normal more than ``MAX_AXIAL_TILT_DEG`` from the patient's z axis), no geometry, no lungs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from scipy import ndimage

from image_model.codes import concept, segment_codes, unit
from image_model.findings import AlgorithmInfo, Measurement, Segment, ToolOutput
from image_model.geometry import slice_normal, slice_thicknesses
from image_model.measure import integrate_ml
from tools.base import Tool, ToolRefused
from tools.registry import register_tool
from tools.targets import TARGET_PARAMS, select_segments

if TYPE_CHECKING:
    from image_model.volume import Volume

ALGORITHM_NAME = "mmed-node HU lung segmentation"
ALGORITHM_VERSION = "1.0"
#: CID 7162 "Morphological Operations": thresholds, connected components, erosion (no learning).
FAMILY = concept("morphological_operations")
VOLUME = concept("volume")
MEAN = concept("mean")
ML = unit("mL")
HU = unit("HU")

MIN_SLICES = 3
MAX_AXIAL_TILT_DEG = 30.0
#: Trachea cross-section limits (cm^2): adults ~1.5-4, with margin for children and wide airways.
TRACHEA_MIN_CM2 = 0.3
#: A piece of airway larger than this in one slice is lung, not bronchus (cm^2).
AIRWAY_MAX_CM2 = 8.0
#: The trachea's centre lies within this fraction of the body width from the body's midline.
TRACHEA_MIDLINE_FRACTION = 0.2
#: A second component smaller than this fraction of the largest is not a lung.
SECOND_LUNG_FRACTION = 0.1
#: A component is "on both sides" when at least this fraction of it lies on each side of the midline.
MERGED_SIDE_FRACTION = 0.15
MAX_SPLIT_EROSIONS = 12
#: Two lungs share at least this fraction of the shorter one's slices.
MIN_Z_OVERLAP = 0.5


class CTLungSettings(BaseModel):
    """Config (``tools: {"ct lung segmentation": {...}}``) and per-call parameter defaults."""

    model_config = ConfigDict(extra="forbid")

    body_threshold_hu: float = Field(-500.0, ge=-1000, le=0)
    lung_threshold_hu: float = Field(-320.0, ge=-1000, le=-100)
    min_lung_ml: float = Field(20.0, ge=0)
    min_component_ml: float = Field(2.0, ge=0)


@dataclass(frozen=True)
class Grid:
    """Voxel -> patient coordinate mapping of a volume (PS3.3 C.7.6.2.1.1)."""

    positions: np.ndarray  # (slices, 3)
    row: np.ndarray  # direction of increasing column index
    col: np.ndarray  # direction of increasing row index
    dy: float
    dx: float
    thickness: np.ndarray  # (slices,) mm

    @property
    def pixel_mm2(self) -> float:
        return self.dx * self.dy

    def volume_ml(self, mask: np.ndarray) -> float:
        return integrate_ml(mask, self.thickness, self.pixel_mm2)

    def centroid(self, mask: np.ndarray) -> np.ndarray:
        """Centroid of ``mask`` in patient coordinates (mm)."""
        counts = mask.sum(axis=(1, 2)).astype(float)
        total = counts.sum()
        _, r, c = np.nonzero(mask)
        origin = (counts[:, None] * self.positions).sum(axis=0) / total
        return origin + r.mean() * self.dy * self.col + c.mean() * self.dx * self.row

    def patient_x(self, shape: tuple[int, int, int]) -> np.ndarray:
        """Patient x (LPS; + is patient left) of every voxel."""
        _, rows, cols = shape
        r = np.arange(rows)[:, None] * self.dy * self.col[0]
        c = np.arange(cols)[None, :] * self.dx * self.row[0]
        return self.positions[:, 0][:, None, None] + (r + c)[None]


@register_tool
class CTLungSegmentation(Tool):
    api_name = "ct lung segmentation"
    description = (
        "Segments the left and right lungs on a chest CT volume from Hounsfield units (no model) "
        "and measures each lung's volume (mL) and mean attenuation (HU)."
    )
    params_schema: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {
            "image": {"type": "string", "description": "the protocol's <imagepath> placeholder"},
            "body_threshold_hu": {"type": "number", "minimum": -1000, "maximum": 0},
            "lung_threshold_hu": {"type": "number", "minimum": -1000, "maximum": -100},
            "min_lung_ml": {"type": "number", "minimum": 0},
            **TARGET_PARAMS,
        },
        "additionalProperties": False,
    }
    queue = "cpu"

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__(settings)
        self.config = CTLungSettings(**self.settings)

    def run(self, volume: Volume, params: dict[str, Any]) -> ToolOutput:
        try:
            overrides = {k: v for k, v in params.items() if k not in ("image", *TARGET_PARAMS)}
            cfg = CTLungSettings(**{**self.config.model_dump(), **overrides})
        except ValidationError as exc:
            raise ToolRefused(f"ct lung segmentation: bad parameters: {exc.errors()[0]['msg']}") from None
        grid = _check_input(volume)
        notes: list[str] = []
        if volume.meta.get("uneven_spacing"):
            notes.append("uneven slice spacing: volumes integrate each slice's own thickness")
        if volume.meta.get("gantry_tilt_deg"):
            notes.append(f"gantry tilt {volume.meta['gantry_tilt_deg']} deg: thickness measured along the slice normal")
        hu = volume.pixels
        body = _body_mask(hu, cfg.body_threshold_hu)
        if not body.any():
            raise ToolRefused(f"no lungs found: no body (nothing above {cfg.body_threshold_hu:g} HU) in the volume")
        air = body & (hu < cfg.lung_threshold_hu)
        air = _drop_border_and_small(air, grid, cfg.min_component_ml)
        airway = _airway(air, body, grid)
        air &= ~airway
        midline_x = float(grid.centroid(body)[0])
        lungs, method = _pick_lungs(air, grid, midline_x, cfg.min_lung_ml)
        segments, summary = _describe(lungs, hu, grid)
        kept, missing = select_segments(segments, params.get("targets"), params.get("exclude"))
        if len(kept) < len(segments):  # one side asked for: the summary states only that side
            for side in ("left", "right"):
                if not any(s.label.lower().startswith(side) for s in kept):
                    summary = {k: v for k, v in summary.items() if not k.startswith(f"{side}_lung")}
            summary = {k: v for k, v in summary.items() if k not in ("total_lung_ml", "mean_hu")}
            segments = kept
        if missing:
            summary["not_found"] = missing
        summary.update(airway_removed_ml=round(grid.volume_ml(airway), 1), separation=method)
        if notes:
            summary["notes"] = notes
        algorithm = AlgorithmInfo(
            name=ALGORITHM_NAME,
            version=ALGORITHM_VERSION,
            family=FAMILY,
            parameters={
                "body_threshold_hu": f"{cfg.body_threshold_hu:g}",
                "lung_threshold_hu": f"{cfg.lung_threshold_hu:g}",
                "min_lung_ml": f"{cfg.min_lung_ml:g}",
            },
        )
        return ToolOutput(api_name=self.api_name, algorithm=algorithm, summary=summary, segments=segments)


# --- input checks ----------------------------------------------------------------------------

def _check_input(volume: Volume) -> Grid:
    if volume.modality.upper() != "CT":
        raise ToolRefused(f"ct lung segmentation needs a CT series; this series is {volume.modality}")
    n = volume.pixels.shape[0]
    if n < MIN_SLICES:
        raise ToolRefused(
            f"ct lung segmentation needs a volume of at least {MIN_SLICES} slices; this series has {n}"
        )
    if "geometry" in volume.meta:
        raise ToolRefused(f"ct lung segmentation needs slice positions: {volume.meta['geometry']}")
    normal = slice_normal(np.asarray(volume.orientation))
    tilt = math.degrees(math.acos(min(1.0, abs(float(normal[2])))))
    if tilt > MAX_AXIAL_TILT_DEG:
        raise ToolRefused(
            f"ct lung segmentation needs axial slices; these are tilted {tilt:.0f} deg from axial "
            "(coronal, sagittal or strongly oblique reconstruction)"
        )
    if float(volume.pixels.min()) > -500.0:
        raise ToolRefused("no lungs found: the volume contains no air (minimum above -500 HU); is it rescaled to HU?")
    orientation = np.asarray(volume.orientation, float)
    thickness = slice_thicknesses(volume.positions, orientation, volume.spacing[0])
    return Grid(
        positions=np.asarray(volume.positions, float),
        row=orientation[:3],
        col=orientation[3:],
        dy=float(volume.spacing[1]),
        dx=float(volume.spacing[2]),
        thickness=thickness,
    )


# --- masks -----------------------------------------------------------------------------------

def _fill_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice, within the mask's bounding box (holes never reach outside it)."""
    out = mask.copy()
    boxes = ndimage.find_objects(mask.astype(np.uint8))
    if not boxes or boxes[0] is None:
        return out
    zs, ys, xs = boxes[0]
    for k in range(zs.start, zs.stop):
        out[k, ys, xs] = ndimage.binary_fill_holes(mask[k, ys, xs])
    return out


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _body_mask(hu: np.ndarray, threshold: float) -> np.ndarray:
    return _fill_per_slice(_largest_component(hu > threshold))


def _drop_border_and_small(air: np.ndarray, grid: Grid, min_ml: float) -> np.ndarray:
    labels, count = ndimage.label(air)
    if count == 0:
        return air
    border = np.zeros_like(air)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    touching = set(np.unique(labels[border & air]).tolist()) - {0}
    voxels = ndimage.sum_labels(np.ones_like(air, dtype=float), labels, index=np.arange(1, count + 1))
    per_voxel_ml = float(grid.thickness.mean()) * grid.pixel_mm2 / 1000.0
    keep = np.zeros(count + 1, dtype=bool)
    for i in range(1, count + 1):
        keep[i] = i not in touching and voxels[i - 1] * per_voxel_ml >= min_ml
    return keep[labels]


def _airway(air: np.ndarray, body: np.ndarray, grid: Grid) -> np.ndarray:
    """Trachea and main bronchi: from a midline seed in the top air slice, followed downwards."""
    airway = np.zeros_like(air)
    has_air = np.nonzero(air.any(axis=(1, 2)))[0]
    if has_air.size == 0:
        return airway
    superior_last = grid.positions[-1, 2] >= grid.positions[0, 2]
    sequence = has_air[::-1] if superior_last else has_air
    start = int(sequence[0])
    pixel_cm2 = grid.pixel_mm2 / 100.0
    seed = _trachea_seed(air[start], body[start], grid, start, pixel_cm2)
    if seed is None:
        return airway
    airway[start] = seed
    step = -1 if superior_last else 1
    gap = float(np.median(grid.thickness))
    reach = max(1, math.ceil(gap / min(grid.dx, grid.dy)))
    disk = _disk(reach)
    current = seed
    k = start + step
    while 0 <= k < air.shape[0]:
        labels, count = ndimage.label(air[k])
        if count == 0:
            break
        near = ndimage.binary_dilation(current, structure=disk)
        touched = set(np.unique(labels[near]).tolist()) - {0}
        areas = np.bincount(labels.ravel())
        accepted = [i for i in touched if areas[i] * pixel_cm2 <= AIRWAY_MAX_CM2]
        if not accepted:
            break
        current = np.isin(labels, accepted)
        airway[k] = current
        k += step
    return airway


def _trachea_seed(
    air2d: np.ndarray, body2d: np.ndarray, grid: Grid, k: int, pixel_cm2: float
) -> np.ndarray | None:
    labels, count = ndimage.label(air2d)
    if count == 0 or not body2d.any():
        return None
    xs = _slice_x(grid, k, air2d.shape)
    body_x = xs[body2d]
    mid, width = float(body_x.mean()), float(body_x.max() - body_x.min())
    best: tuple[float, int] | None = None
    for i in range(1, count + 1):
        component = labels == i
        area = component.sum() * pixel_cm2
        if not (TRACHEA_MIN_CM2 <= area <= AIRWAY_MAX_CM2):
            continue
        offset = abs(float(xs[component].mean()) - mid)
        if offset <= TRACHEA_MIDLINE_FRACTION * width and (best is None or offset < best[0]):
            best = (offset, i)
    return None if best is None else labels == best[1]


def _slice_x(grid: Grid, k: int, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    return (
        grid.positions[k, 0]
        + np.arange(rows)[:, None] * grid.dy * grid.col[0]
        + np.arange(cols)[None, :] * grid.dx * grid.row[0]
    )


def _disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None] ** 2 + r[None, :] ** 2) <= radius**2


# --- lungs -----------------------------------------------------------------------------------

def _components_by_size(mask: np.ndarray, grid: Grid) -> list[np.ndarray]:
    labels, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1][:3]
    return [labels == int(i) + 1 for i in order]


def _side_fractions(mask: np.ndarray, x: np.ndarray, midline_x: float) -> tuple[float, float]:
    total = float(mask.sum())
    left = float((mask & (x > midline_x)).sum()) / total
    return left, 1.0 - left


def _pick_lungs(
    air: np.ndarray, grid: Grid, midline_x: float, min_lung_ml: float
) -> tuple[dict[str, np.ndarray], str]:
    """``{"left": mask, "right": mask}`` (either may be missing) and how they were separated."""
    parts = _components_by_size(air, grid)
    if not parts or grid.volume_ml(parts[0]) < min_lung_ml:
        found = f"{grid.volume_ml(parts[0]):.1f} mL" if parts else "none"
        raise ToolRefused(f"no lungs found: largest air region inside the body is {found} (< {min_lung_ml:g} mL)")
    x = grid.patient_x(air.shape)
    first = parts[0]
    left_fraction, right_fraction = _side_fractions(first, x, midline_x)
    if min(left_fraction, right_fraction) >= MERGED_SIDE_FRACTION:
        # One component on both sides of the midline: lungs touching (anterior junction line).
        split = _split_by_erosion(first, grid)
        method = "erosion split"
        if split is None:
            split = (first & (x > midline_x), first & (x <= midline_x))
            method = "mid-sagittal split"
        left, right = split
        return {"left": _fill_per_slice(left), "right": _fill_per_slice(right)}, method
    v1 = grid.volume_ml(first)
    x1 = grid.centroid(first)[0]
    for other in parts[1:]:
        # The other lung: big enough, across the midline, and level with the first (not gas in
        # the stomach or bowel, which lies below the lungs).
        if grid.volume_ml(other) < max(min_lung_ml, SECOND_LUNG_FRACTION * v1):
            continue
        x2 = grid.centroid(other)[0]
        if (x1 - midline_x) * (x2 - midline_x) < 0 and _z_overlap(first, other) >= MIN_Z_OVERLAP:
            left, right = (first, other) if x1 > x2 else (other, first)
            return {"left": _fill_per_slice(left), "right": _fill_per_slice(right)}, "separate components"
    side = "left" if left_fraction > right_fraction else "right"
    return {side: _fill_per_slice(first)}, "one lung found"


def _z_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of the shorter component's slices that the other component also occupies."""
    za, zb = a.any(axis=(1, 2)), b.any(axis=(1, 2))
    return float((za & zb).sum()) / float(min(za.sum(), zb.sum()))


def _split_by_erosion(mask: np.ndarray, grid: Grid) -> tuple[np.ndarray, np.ndarray] | None:
    """Erode in-plane until the mask falls apart into two large seeds on opposite sides; grow back."""
    zs, ys, xs = (np.nonzero(mask.any(axis=a))[0] for a in ((1, 2), (0, 2), (0, 1)))
    box = (slice(zs[0], zs[-1] + 1), slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1))
    crop = mask[box]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    eroded = crop
    total = float(crop.sum())
    sub_grid = Grid(
        positions=grid.positions[box[0]] + ys[0] * grid.dy * grid.col + xs[0] * grid.dx * grid.row,
        row=grid.row, col=grid.col, dy=grid.dy, dx=grid.dx, thickness=grid.thickness[box[0]],
    )
    for _ in range(MAX_SPLIT_EROSIONS):
        eroded = ndimage.binary_erosion(eroded, structure=structure)
        labels, count = ndimage.label(eroded)
        if count < 2:
            if count == 0:
                return None
            continue
        sizes = np.bincount(labels.ravel())[1:]
        big = [int(i) + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= 0.05 * total]
        if len(big) < 2:
            continue
        xa = sub_grid.centroid(labels == big[0])[0]
        xb = sub_grid.centroid(labels == big[1])[0]
        seeds = np.zeros(crop.shape, dtype=np.int8)
        seeds[labels == big[0]] = 1 if xa > xb else 2  # 1 = left (+x), 2 = right
        seeds[labels == big[1]] = 2 if xa > xb else 1
        _, nearest = ndimage.distance_transform_edt(
            seeds == 0, sampling=(float(np.median(grid.thickness)), grid.dy, grid.dx), return_indices=True
        )
        owner = seeds[tuple(nearest)]
        left = np.zeros_like(mask)
        right = np.zeros_like(mask)
        left[box] = crop & (owner == 1)
        right[box] = crop & (owner == 2)
        return left, right
    return None


def _describe(lungs: dict[str, np.ndarray], hu: np.ndarray, grid: Grid) -> tuple[list[Segment], dict[str, Any]]:
    segments: list[Segment] = []
    summary: dict[str, Any] = {"left_lung_ml": None, "right_lung_ml": None}
    all_hu: list[np.ndarray] = []
    for side in ("left", "right"):
        mask = lungs.get(side)
        if mask is None or not mask.any():
            continue
        volume_ml = grid.volume_ml(mask)
        values = hu[mask]
        all_hu.append(values)
        mean_hu = float(values.mean())
        summary[f"{side}_lung_ml"] = round(volume_ml, 1)
        summary[f"{side}_lung_mean_hu"] = round(mean_hu, 1)
        label = f"{side.capitalize()} lung"
        segments.append(
            segment_codes(label).segment(
                label, mask, [Measurement(VOLUME, volume_ml, ML), Measurement(MEAN, mean_hu, HU)]
            )
        )
    merged = np.concatenate(all_hu)
    summary["mean_hu"] = round(float(merged.mean()), 1)
    summary["total_lung_ml"] = round(sum(v for k, v in summary.items() if k.endswith("_lung_ml") and v), 1)
    return segments, summary
