"""Does an air region inside the body behave like a lung? Each rule that fails gives a reason.

Air inside the body is not all lung: bowel and stomach gas, paranasal sinuses and mastoid cells,
stool mottled with gas bubbles, dark streaks of metal artefacts. A lung, whatever else is wrong
with it, is:

* **big and thick enough**: at least ``min_lung_ml`` and more than :data:`MIN_THICKNESS_MM`
  across somewhere (a streak or a sliver is not);
* **parenchyma**: the core of an aerated lung measures about -900..-700 HU (air spaces with
  tissue and blood, and vessels through it); gas in a bowel loop or the stomach is pure air,
  about -1000 HU (:data:`PARENCHYMA_HU`);
* **one air space, not a mottle**: within its own outline (gaps of a few millimetres closed) nearly
  everything is air, the rest being vessels (:data:`MIN_AIR_FRACTION`); stool mixed with gas
  bubbles, or mastoid air cells, are a sponge or a cloud of air and tissue;
* **tall**: a lung whose apex and base are both in the volume spans more than
  :data:`MIN_LUNG_HEIGHT_MM`; a shorter one must run into the first or last slice (clipped);
* **in the thorax**: lateral to the mediastinum (:data:`MIN_LATERAL_OFFSET`), reaching the
  posterior chest wall (:data:`MIN_POSTERIOR_REACH`), with ribs in the wall beside it
  (:data:`MIN_RIB_SLICES`; checked when the volume shows a skeleton at all, which every CT of a
  person does and a geometric test object may not);
* **on the airway**: when the airway trace passed the carina (the hila are in view), joined to
  the bronchial tree.

Superior to the bowel (:mod:`tools.lung_pick`): air lying wholly below the lung on its side is
under the diaphragm. Vessels inside the region are counted and reported, not required (an old
phantom or a dense consolidation may show none).
"""
from __future__ import annotations

from dataclasses import InitVar, dataclass, field

import numpy as np
from scipy import ndimage

from tools.lung_geometry import Grid
from tools.lung_masks import (
    MAX_VESSEL_MM2,
    Airway,
    bounding_box,
    dilate_disk,
    embed,
    erode_disk,
    fill_small_holes,
    near_mask,
)

#: Median HU of the region's core that aerated lung parenchyma spans (emphysema to dense).
PARENCHYMA_HU = (-950.0, -500.0)
#: Core = voxels at least this far (mm) from the region's edge in their slice (partial volume).
CORE_MM = 4.0
MIN_CORE_VOXELS = 30
#: Fraction of the region's outline (closed over MOTTLE_GAP_MM, small holes filled) that must be air.
MIN_AIR_FRACTION = 0.8
MOTTLE_GAP_MM = 5.0
MIN_THICKNESS_MM = 5.0
#: A lung seen from apex to base is at least this tall (a newborn's is ~40 mm).
MIN_LUNG_HEIGHT_MM = 30.0
#: How far the region reaches towards the back of the body (0 front, 1 back) at its widest slices.
MIN_POSTERIOR_REACH = 0.6
#: Centroid distance from the body midline, as a fraction of the body half-width.
MIN_LATERAL_OFFSET = 0.15
#: Ribs: bone (> RIB_HU) in the body within RIB_SEARCH_MM of the region, away from the spine.
RIB_HU = 300.0
RIB_SEARCH_MM = 35.0
RIB_MIN_MM2 = 10.0
SPINE_EXCLUSION_MM = 40.0
SKELETON_ML = 5.0
MIN_RIB_SLICES = 0.3
#: Slices looked at for ribs (evenly spread over the region).
RIB_SAMPLE_SLICES = 16
#: Below the carina by more than this (mm), a lung must join the bronchial tree.
BELOW_CARINA_MM = 20.0


@dataclass(frozen=True)
class Scene:
    """What every candidate is judged against."""

    hu: np.ndarray
    body: np.ndarray
    grid: Grid
    airway: Airway
    min_lung_ml: float
    #: The volume shows bone (at least SKELETON_ML above RIB_HU): the rib rule applies.
    skeleton: bool = True

    @property
    def n_slices(self) -> int:
        return int(self.hu.shape[0])


@dataclass
class Candidate:
    """One air region (or one side of a region spanning both sides), judged. The region is
    given as a whole-volume mask, or as the part ``region`` of a volume of shape ``at[1]`` that
    lies in the box ``at[0]``, and kept as its own bounding box (``box``, ``crop``): a dozen
    candidates must not hold a dozen volumes."""

    number: int
    region: InitVar[np.ndarray]
    side: str
    volume_ml: float
    part: str = ""
    #: Why it is not a lung; empty when it behaves like one.
    reasons: list[str] = field(default_factory=list)
    #: Measured properties (for the log and the tool's summary).
    facts: dict[str, float] = field(default_factory=dict)
    box: tuple[slice, ...] = field(init=False)
    crop: np.ndarray = field(init=False, repr=False)
    shape: tuple[int, ...] = field(init=False)
    at: InitVar[tuple[tuple[slice, ...], tuple[int, ...]] | None] = None

    def __post_init__(self, region: np.ndarray, at: tuple[tuple[slice, ...], tuple[int, ...]] | None) -> None:
        inner = bounding_box(region)
        assert inner is not None, "a candidate is never empty"
        outer, self.shape = at if at is not None else ((slice(0, 0),) * region.ndim, tuple(region.shape))
        self.box = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner))
        self.crop = np.array(region[inner], dtype=bool)  # a copy: the given mask can go

    @property
    def mask(self) -> np.ndarray:
        """The region as a whole-volume mask (built on each call)."""
        full = np.zeros(self.shape, dtype=bool)
        full[self.box] = self.crop
        return full

    @property
    def plausible(self) -> bool:
        return not self.reasons

    @property
    def z_range(self) -> tuple[int, int]:
        return self.box[0].start, self.box[0].stop - 1

    def describe(self) -> str:
        part = f" ({self.part})" if self.part else ""
        return f"air region {self.number}{part}: {self.side}, {self.volume_ml:.1f} mL"


def judge(candidate: Candidate, scene: Scene) -> Candidate:
    """Apply every rule to ``candidate``; its ``reasons`` and ``facts`` are filled in place."""
    box = candidate.box
    mask, hu = candidate.crop, scene.hu[box]
    grid = scene.grid
    reasons, facts = candidate.reasons, candidate.facts
    if candidate.volume_ml < scene.min_lung_ml:
        reasons.append(f"too small (< {scene.min_lung_ml:g} mL)")
    depth = _in_plane_depth(mask, grid)
    facts["thickness_mm"] = round(float(2.0 * depth.max()), 1)
    if facts["thickness_mm"] < MIN_THICKNESS_MM:
        reasons.append(f"a streak or sliver ({facts['thickness_mm']:.0f} mm thick at most)")
    core = _core(mask, depth)
    median = float(np.median(hu[core]))
    facts["core_median_hu"] = round(median, 1)
    low, high = PARENCHYMA_HU
    if median < low:
        reasons.append(f"pure gas, not lung parenchyma (median {median:.0f} HU; lung {low:g} to {high:g} HU)")
    elif median > high:
        reasons.append(f"too dense for aerated lung (median {median:.0f} HU; lung {low:g} to {high:g} HU)")
    filled = fill_small_holes(mask, grid, MAX_VESSEL_MM2)
    outline = fill_small_holes(_closed(mask, grid), grid, MAX_VESSEL_MM2)
    air_fraction = float(mask.sum()) / float(outline.sum())
    facts["air_fraction"] = round(air_fraction, 3)
    facts["vessels"] = float(_count_holes(filled & ~mask))
    if air_fraction < MIN_AIR_FRACTION:
        reasons.append(
            f"mottled like stool or air cells ({air_fraction:.0%} of its outline is air; lung {MIN_AIR_FRACTION:.0%}+)"
        )
    _vertical(candidate, scene, reasons, facts)
    _position(mask, box, scene, reasons, facts)
    _ribs(mask, box, scene, reasons, facts)
    _airway(candidate, scene, reasons, facts)
    return candidate


def _in_plane_depth(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """Distance (mm) of each voxel to the region's edge within its own slice."""
    # Slice by slice: a 3D transform would hold 20 bytes per voxel of the region's box at once.
    # Each slice within its own part's box: a padded box's edge is background no farther from any
    # voxel inside than the background beyond it, so the distances are those of the whole slice.
    depth = np.zeros(mask.shape, dtype=np.float32)
    for k in np.flatnonzero(mask.any(axis=(1, 2))):
        window = bounding_box(mask[k])
        assert window is not None
        padded = np.pad(mask[k][window], 1)
        depth[k][window] = ndimage.distance_transform_edt(padded, sampling=(grid.dy, grid.dx))[1:-1, 1:-1]
    return depth


def _core(mask: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Voxels away from the edge (partial volume with the wall); fewer as the region thins."""
    for mm in (CORE_MM, CORE_MM / 2.0, 0.0):
        core = mask & (depth >= mm)
        if core.sum() >= MIN_CORE_VOXELS or mm == 0.0:
            return core
    return mask


def _closed(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """In-plane closing over :data:`MOTTLE_GAP_MM`: bubbles a few millimetres apart join into
    one outline, with the stool between them inside it; a lung's outline barely changes."""
    radius = max(1, round(MOTTLE_GAP_MM / min(grid.dx, grid.dy)))
    padded = np.pad(mask, ((0, 0), (radius, radius), (radius, radius)))
    # The padding keeps the erosion's window inside the array: its border value cannot matter.
    closed = erode_disk(dilate_disk(padded, radius), radius)
    return np.asarray(closed[:, radius:-radius, radius:-radius] | mask)


def _count_holes(holes: np.ndarray) -> int:
    box = bounding_box(holes)
    if box is None:
        return 0
    _, count = ndimage.label(holes[box])
    return int(count)


def _vertical(candidate: Candidate, scene: Scene, reasons: list[str], facts: dict[str, float]) -> None:
    k0, k1 = candidate.z_range
    z = scene.grid.z
    height = float(z[k1] - z[k0] + np.median(scene.grid.thickness))
    facts["height_mm"] = round(height, 1)
    clipped = k1 == scene.n_slices - 1 or k0 == 0
    if not clipped and height < MIN_LUNG_HEIGHT_MM:
        reasons.append(f"too short ({height:.0f} mm, both ends in view; a lung is {MIN_LUNG_HEIGHT_MM:g} mm+)")


def _position(
    mask: np.ndarray, box: tuple[slice, ...], scene: Scene, reasons: list[str], facts: dict[str, float]
) -> None:
    """Lateral to the mediastinum and reaching the back, measured on its widest slices."""
    grid = scene.grid
    areas = mask.sum(axis=(1, 2))
    widest = np.argsort(-areas)[:3]
    reach, offset = [], []
    for k in widest:
        if areas[k] == 0:
            continue
        kk = int(k) + box[0].start
        full_body = scene.body[kk]
        rows = np.flatnonzero(mask[k].any(axis=1)) + box[1].start
        cols = np.flatnonzero(mask[k].any(axis=0)) + box[2].start
        body_rows = np.flatnonzero(full_body[:, cols].any(axis=1))
        if body_rows.size < 2:
            continue
        front, back = body_rows[0], body_rows[-1]
        reach.append((rows[-1] - front) / max(back - front, 1))
        xs = grid.slice_x(kk, full_body.shape)
        body_x = xs[full_body]
        mid, half = float(body_x.mean()), float(body_x.max() - body_x.min()) / 2.0
        region_x = xs[box[1], box[2]][mask[k]]
        offset.append(abs(float(region_x.mean()) - mid) / max(half, 1.0))
    if not reach:
        return
    facts["posterior_reach"] = round(float(max(reach)), 2)
    facts["lateral_offset"] = round(float(np.mean(offset)), 2)
    if facts["posterior_reach"] < MIN_POSTERIOR_REACH:
        reasons.append(
            f"anterior, off the posterior chest wall (reaches {facts['posterior_reach']:.0%} of the body depth)"
        )
    if facts["lateral_offset"] < MIN_LATERAL_OFFSET:
        reasons.append("on the midline, not lateral to the mediastinum")


def _ribs(
    mask: np.ndarray, box: tuple[slice, ...], scene: Scene, reasons: list[str], facts: dict[str, float]
) -> None:
    """Bone in the body wall beside the region (ribs), in enough of its slices."""
    grid = scene.grid
    present = np.flatnonzero(mask.any(axis=(1, 2)))
    picks = present[np.linspace(0, present.size - 1, min(RIB_SAMPLE_SLICES, present.size)).astype(int)]
    with_ribs = 0
    rows, cols = scene.body.shape[1:]
    my, mx = int(np.ceil(RIB_SEARCH_MM / grid.dy)), int(np.ceil(RIB_SEARCH_MM / grid.dx))
    window = (slice(max(0, box[1].start - my), min(rows, box[1].stop + my)),
              slice(max(0, box[2].start - mx), min(cols, box[2].stop + mx)))
    for k in picks:
        kk = int(k) + box[0].start
        full = np.zeros((rows, cols), dtype=bool)
        full[box[1], box[2]] = mask[k]
        region = full[window]
        distance = ndimage.distance_transform_edt(~region, sampling=(grid.dy, grid.dx))
        xs = grid.slice_x(kk, (rows, cols))
        body_x = xs[scene.body[kk]]
        mid = float(body_x.mean()) if body_x.size else 0.0
        wall = scene.body[kk][window] & (np.abs(xs[window] - mid) >= SPINE_EXCLUSION_MM)
        ring = (distance <= RIB_SEARCH_MM) & ~region & wall
        bone_mm2 = float((ring & (scene.hu[kk][window] > RIB_HU)).sum()) * grid.pixel_mm2
        with_ribs += bone_mm2 >= RIB_MIN_MM2
    fraction = with_ribs / max(len(picks), 1)
    facts["rib_slices"] = round(fraction, 2)
    if scene.skeleton and fraction < MIN_RIB_SLICES:
        reasons.append(f"outside the rib cage (ribs beside it in {fraction:.0%} of its slices)")


def _airway(candidate: Candidate, scene: Scene, reasons: list[str], facts: dict[str, float]) -> None:
    carina = scene.airway.carina
    if carina is None:
        return
    k0, _ = candidate.z_range
    z = scene.grid.z
    if z[k0] > z[carina] - BELOW_CARINA_MM:
        return
    airway = scene.airway.mask
    region, box = embed(candidate.crop, candidate.box, 2, airway.shape)
    joined = bool((near_mask(airway, box) & region).any())
    facts["joins_airway"] = float(joined)
    if not joined:
        reasons.append("not joined to the airway although the carina is in view")
