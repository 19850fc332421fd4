"""Which air regions are the lungs: candidates split by side, judged, ordered, picked.

1. The largest air regions (:data:`MAX_CANDIDATES`) become candidates. Pure gas joined to a
   region (a stomach or colon under the dome that thick slices merge with a lung base through the
   diaphragm's partial volume, a bulla, a pneumothorax) is taken out of it as its own candidate:
   blobs of at least :data:`GAS_POCKET_ML` where the in-plane mean HU is below
   :data:`PURE_GAS_HU`, with the one-voxel rim between them and the rest; blobs touching the traced
   airway are bronchi and stay. One region spanning both
   sides of the body midline (lungs touching at the anterior junction line, or a transverse colon)
   is split in two: by in-plane erosion until it falls into two seeds, every voxel then going to
   the nearest seed; failing that, by the mid-sagittal plane of the body. Each half is judged on
   its own.
2. Every candidate is judged (:func:`tools.lung_candidates.judge`).
3. On each side, the lung is the most superior plausible candidate (lungs lie above the bowel and
   the diaphragm); other plausible candidates on that side that share slices with it are parts of
   the same lung (a base cut in two by the dome); those lying wholly below it are rejected.

Left/right comes from patient coordinates: patient left is +x in LPS (PS3.3 C.7.6.2.1.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from tools.lung_candidates import Candidate, Scene, judge
from tools.lung_geometry import Grid
from tools.lung_masks import (
    MAX_VESSEL_MM2,
    bounding_box,
    embed,
    fill_small_holes,
    label,
    label_sizes,
    near_mask,
    slabs,
)

#: Air regions judged (largest first); smaller ones are counted, not judged.
MAX_CANDIDATES = 12
#: A region is "on both sides" when at least this fraction of it lies on each side of the midline.
MERGED_SIDE_FRACTION = 0.15
MAX_SPLIT_EROSIONS = 12
#: In-plane mean HU (3x3) below which air is pure gas, not parenchyma, whatever the noise.
PURE_GAS_HU = -960.0
GAS_POCKET_ML = 5.0


@dataclass
class Picked:
    """The lungs found (side -> filled mask), every judged candidate, and how sides were split."""

    lungs: dict[str, np.ndarray]
    candidates: list[Candidate]
    separation: str
    ignored: int


def find_candidates(labels: np.ndarray, count: int, scene: Scene) -> tuple[list[Candidate], str]:
    """The candidates of the largest air regions (step 1), and how the largest was split. The
    caller may drop ``labels`` afterwards: candidates keep only their own boxes. Each region is
    worked on in its bounding box (``find_objects``: every box in one pass over the labels)."""
    grid = scene.grid
    midline_x = float(grid.centroid(scene.body)[0])
    candidates: list[Candidate] = []
    separation = "separate components"
    boxes = ndimage.find_objects(labels, max_label=min(count, MAX_CANDIDATES))
    for number, box in enumerate(boxes, start=1):
        if box is None:
            continue
        for region, at, gas_part in _separate_pure_gas(labels[box] == number, box, scene):
            sub = grid.window(at)
            left_of_midline = sub.left_of(midline_x, region.shape)
            left_fraction = float((region & left_of_midline).sum()) / float(region.sum())
            place = (at, labels.shape)
            if min(left_fraction, 1.0 - left_fraction) >= MERGED_SIDE_FRACTION:
                split = _split_by_erosion(region, sub, float(np.median(grid.thickness)))
                how = "erosion split"
                if split is None:
                    split, how = (region & left_of_midline, region & ~left_of_midline), "mid-sagittal split"
                for side, part in zip(("left", "right"), split):
                    name = ", ".join(p for p in (gas_part, f"{side} part") if p)
                    candidates.append(Candidate(number, part, side, sub.volume_ml(part), part=name, at=place))
                if number == 1 and not gas_part:
                    separation = how
                continue
            side = "left" if left_fraction > 0.5 else "right"
            candidates.append(Candidate(number, region, side, sub.volume_ml(region), part=gas_part, at=place))
    return candidates, separation


def pick_lungs(candidates: list[Candidate], separation: str, ignored: int, scene: Scene) -> Picked:
    """Judge every candidate (step 2) and pick each side's lung (step 3); ``ignored``: the
    smaller air regions that were not judged."""
    for candidate in candidates:
        judge(candidate, scene)
    lungs: dict[str, np.ndarray] = {}
    for side in ("left", "right"):
        mask = _lung_on_side([c for c in candidates if c.side == side], side)
        box = None if mask is None else bounding_box(mask)
        if mask is not None and box is not None:  # vessels are filled within the lung's box
            mask[box] = fill_small_holes(mask[box], scene.grid, MAX_VESSEL_MM2)
            lungs[side] = mask
    return Picked(lungs, candidates, separation, ignored)


def _separate_pure_gas(
    region: np.ndarray, box: tuple[slice, ...], scene: Scene
) -> list[tuple[np.ndarray, tuple[slice, ...], str]]:
    """The region (``region`` in ``box``), or its pure-gas blobs and the rest as separate parts:
    (mask, its box, name)."""
    grid = scene.grid
    # The box grown by one voxel (the rim below needs the region's neighbours).
    crop, box = embed(region, box, 1, scene.hu.shape)
    hu = scene.hu[box]
    gas = np.empty(crop.shape, dtype=bool)
    for part in slabs(crop.shape[0], crop.shape[1] * crop.shape[2]):
        # In place, float32, slab by slab (the means are in-plane): box-sized float arrays would
        # be the tool's peak otherwise.
        mean = np.where(crop[part], hu[part], np.float32(0.0))
        ndimage.uniform_filter(mean, size=(1, 3, 3), output=mean)
        limit = crop[part].astype(np.float32)
        ndimage.uniform_filter(limit, size=(1, 3, 3), output=limit)
        np.maximum(limit, np.float32(1e-6), out=limit)
        limit *= np.float32(PURE_GAS_HU)
        np.logical_and(crop[part], mean < limit, out=gas[part])
    del hu
    labels, count = ndimage.label(gas)
    if count == 0:
        return [(crop, box, "")]
    weight_ml = grid.thickness[box[0]][:, None, None] * grid.pixel_mm2 / 1000.0
    sizes = ndimage.sum_labels(np.broadcast_to(weight_ml, crop.shape), labels, index=np.arange(1, count + 1))
    pockets = np.isin(labels, np.flatnonzero(sizes >= GAS_POCKET_ML) + 1)
    # Gas at the end of the traced airway is bronchus: it stays with its lung.
    airway = near_mask(scene.airway.mask, box)
    bronchi = np.unique(labels[pockets & airway])
    pockets &= ~np.isin(labels, bronchi[bronchi > 0])
    if not pockets.any():
        return [(crop, box, "")]
    rim = np.zeros((3, 3, 3), dtype=bool)
    rim[1] = True
    rest, count = ndimage.label(crop & ~ndimage.binary_dilation(pockets, structure=rim))
    parts: list[tuple[np.ndarray, tuple[slice, ...], str]] = []
    if count:
        sizes = ndimage.sum_labels(np.broadcast_to(weight_ml, crop.shape), rest, index=np.arange(1, count + 1))
        for i in np.argsort(-sizes):
            if sizes[i] >= GAS_POCKET_ML:  # fragments of the rim between gas and the rest go
                parts.append((rest == i + 1, box, ""))
    parts.append((pockets, box, "pure-gas part"))
    return parts


def _lung_on_side(candidates: list[Candidate], side: str) -> np.ndarray | None:
    plausible = [c for c in candidates if c.plausible]
    if not plausible:
        return None
    lung = max(plausible, key=lambda c: (c.z_range[1], c.volume_ml))
    mask = lung.mask
    top_lowest = lung.z_range[0]
    for other in plausible:
        if other is lung:
            continue
        if other.z_range[1] < top_lowest:
            other.reasons.append(f"below the {side} lung, under the diaphragm")
        else:
            mask[other.box] |= other.crop
    return mask


def _split_by_erosion(mask: np.ndarray, grid: Grid, gap_mm: float) -> tuple[np.ndarray, np.ndarray] | None:
    """Erode in-plane until the mask falls apart into two large seeds on opposite sides; grow back
    (distances with slices ``gap_mm`` apart: the volume's median). Returns (left, right)."""
    box = bounding_box(mask)
    assert box is not None
    crop = mask[box]
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    eroded = crop
    total = float(crop.sum())
    sub_grid = grid.window(box)
    for _ in range(MAX_SPLIT_EROSIONS):
        eroded = ndimage.binary_erosion(eroded, structure=structure)
        labels, count = label(eroded)
        if count < 2:
            if count == 0:
                return None
            continue
        sizes = label_sizes(labels, count)[1:]
        big = [int(i) + 1 for i in np.argsort(sizes)[::-1][:2] if sizes[i] >= 0.05 * total]
        if len(big) < 2:
            continue
        xa = sub_grid.centroid(labels == big[0])[0]
        xb = sub_grid.centroid(labels == big[1])[0]
        seeds = np.zeros(crop.shape, dtype=np.int8)
        seeds[labels == big[0]] = 1 if xa > xb else 2  # 1 = left (+x), 2 = right
        seeds[labels == big[1]] = 2 if xa > xb else 1
        nearest = ndimage.distance_transform_edt(
            seeds == 0, sampling=(gap_mm, grid.dy, grid.dx),
            return_distances=False, return_indices=True,
        )
        owner = seeds[tuple(nearest)]
        left = np.zeros_like(mask)
        right = np.zeros_like(mask)
        left[box] = crop & (owner == 1)
        right[box] = crop & (owner == 2)
        return left, right
    return None
