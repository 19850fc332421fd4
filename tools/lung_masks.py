"""Masks the lung tool builds before it judges anything: the body, the air inside it, the airway.

All arrays are in the canonical view of :mod:`tools.lung_geometry` (slices ascending to the head,
rows to the back, columns to the patient's left).

* **Body**: voxels above the body threshold, the largest 3D component (drops the table and other
  objects in air), closed in-plane (a dark metal streak must not cut the body open) and filled
  slice by slice: the lungs and bowel gas are holes in it. Where the field of view clips the body
  (it touches the image edge), the edge between its first and last contact counts as body, so a
  lung cut by the edge is still a hole.
* **Air**: voxels below the lung threshold inside the filled body, opened in-plane (removes
  one-pixel lines: streak artefacts), in 3D components of at least ``min_component_ml``.
* **Airway**: the trachea, found as a small, roughly midline air region in the most superior slice
  with air and followed inferiorly slice by slice (trachea, then the main bronchi) for as long as
  each connected piece stays small. Where the piece in one slice becomes two, the trace has passed
  the carina: then the hila are in the field of view and a lung must join the bronchial tree.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import fill_voids
import numpy as np
from scipy import ndimage

from tools.lung_geometry import Grid

#: Trachea cross-section limits (cm^2): adults ~1.5-4, with margin for children and wide airways.
TRACHEA_MIN_CM2 = 0.3
#: A piece of airway larger than this in one slice is lung, not bronchus (cm^2).
AIRWAY_MAX_CM2 = 8.0
#: The trachea's centre lies within this fraction of the body width, and this distance (mm), from
#: the body's midline (a goitre may push it ~2 cm aside).
TRACHEA_MIDLINE_FRACTION = 0.2
TRACHEA_MAX_OFFSET_MM = 25.0
#: Area over that of the circle through its farthest pixel: a trachea is round (~0.6-1).
TRACHEA_MIN_ROUNDNESS = 0.45
#: Just below the carina the main bronchi lie this far (mm) each side of the trachea's line, and
#: at least CARINA_TRACHEA_MM of trachea was followed above them.
CARINA_SPLIT_MM = 4.0
CARINA_REACH_MM = 30.0
CARINA_TRACHEA_MM = 25.0
#: Largest hole (mm^2 in one slice) filled into a lung: a vessel up to ~17 mm across.
MAX_VESSEL_MM2 = 225.0
#: A trace shorter than this (mm) from the top slice is not taken as a trachea by the coverage words.
TRACHEA_MIN_LENGTH_MM = 30.0
#: Sideways travel of a bronchus per slice gap, followed by the airway trace.
BRONCHUS_DRIFT = 1.5
#: In-plane closing radius of the body mask (mm): seals dark streaks a few pixels wide.
BODY_CLOSING_MM = 6.0


@dataclass(frozen=True)
class Airway:
    mask: np.ndarray
    #: Canonical index of the first slice below the carina (the trace split in two), if seen.
    carina: int | None

    def at_top(self, grid: Grid) -> bool:
        """A trachea runs down from the top slice for at least TRACHEA_MIN_LENGTH_MM."""
        present = np.flatnonzero(self.mask.any(axis=(1, 2)))
        if present.size == 0 or present[-1] != self.mask.shape[0] - 1:
            return False
        return float(grid.z[present[-1]] - grid.z[present[0]]) >= TRACHEA_MIN_LENGTH_MM


def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """The smallest box holding every True voxel, grown by ``margin`` (clipped to the array)."""
    spans: list[slice] = []
    for axis in range(mask.ndim):
        # Within the box found on the earlier axes: each pass reads fewer voxels than the last.
        crop = mask[tuple(spans)]
        present = np.flatnonzero(crop.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if present.size == 0:
            return None
        spans.append(slice(int(present[0]), int(present[-1]) + 1))
    return grow_box(tuple(spans), margin, mask.shape)


def grow_box(box: tuple[slice, ...], margin: int, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """``box`` grown by ``margin`` voxels on every side, clipped to an array of ``shape``."""
    return tuple(slice(max(0, s.start - margin), min(n, s.stop + margin)) for s, n in zip(box, shape))


def embed(region: np.ndarray, box: tuple[slice, ...], margin: int, shape: tuple[int, ...]
          ) -> tuple[np.ndarray, tuple[slice, ...]]:
    """``region`` (a mask of ``box``) placed in a box grown by ``margin`` (clipped to ``shape``),
    False around it: (the grown mask, the grown box)."""
    grown = grow_box(box, margin, shape)
    out = np.zeros(tuple(g.stop - g.start for g in grown), dtype=bool)
    out[tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(box, grown))] = region
    return out, grown


def near_mask(mask: np.ndarray, box: tuple[slice, ...], steps: int = 2) -> np.ndarray:
    """``ndimage.binary_dilation(mask[box], iterations=steps)`` (the 3D cross, ``steps`` times,
    nothing set outside ``box``), dilating only ``mask``'s own part of the box grown by ``steps``:
    the airway is a small part of the box of any lung."""
    crop = mask[box]
    near = np.zeros(crop.shape, dtype=bool)
    inner = bounding_box(crop, margin=steps)
    if inner is not None:
        near[inner] = ndimage.binary_dilation(crop[inner], iterations=steps)
    return near


#: In-plane work runs on slabs of whole slices of about this many voxels: its temporaries stay a
#: few megabytes whatever the volume (slices are independent of each other in-plane).
SLAB_VOXELS = 1 << 22


def slabs(n_slices: int, plane: int) -> list[slice]:
    """Consecutive runs of slices of about :data:`SLAB_VOXELS` voxels of ``plane`` each."""
    step = max(1, SLAB_VOXELS // max(plane, 1))
    return [slice(k, min(k + step, n_slices)) for k in range(0, n_slices, step)]


#: Threads that work on slabs at once (:func:`for_slabs`): numpy's array operations release the
#: GIL, so slabs of in-plane numpy work run on as many cores, each with its own temporaries.
SLAB_THREADS = max(1, min(4, len(os.sched_getaffinity(0))))


def for_slabs(work: Callable[[slice], None], n_slices: int, plane: int) -> None:
    """``work(part)`` for every slab of :func:`slabs`, on up to :data:`SLAB_THREADS` threads.
    ``work`` writes each slab's own slices of its output (slabs never share a voxel); only
    numpy's releases of the GIL make this faster (scipy.ndimage's labelling and morphology hold
    it), so ``work`` should be numpy array operations. Each slab is 1/:data:`SLAB_THREADS` of
    :data:`SLAB_VOXELS`: the threads together hold one slab's worth of temporaries."""
    parts = slabs(n_slices, plane * SLAB_THREADS)
    if len(parts) == 1 or SLAB_THREADS == 1:
        for part in parts:
            work(part)
        return
    with ThreadPoolExecutor(min(SLAB_THREADS, len(parts))) as pool:
        for _ in pool.map(work, parts):  # re-raises a slab's exception
            pass


def fill_holes_in_plane(mask: np.ndarray) -> np.ndarray:
    """``ndimage.binary_fill_holes`` of every slice of a (slices, rows, cols) mask: the background
    is what connects (4-connected, in its slice) to the slice's edge; everything else is filled.
    ``fill_voids.fill`` of each slice: the same voxels (a flood of the background from the
    slice's edge), ~5x faster than a labelling of the background."""
    mask = np.asarray(mask, dtype=bool)
    filled = np.empty(mask.shape, dtype=bool)
    if mask.size == 0:
        return filled
    for k in range(mask.shape[0]):
        filled[k] = fill_voids.fill(mask[k], in_place=False)
    return filled


def fill_per_slice(mask: np.ndarray) -> np.ndarray:
    """Fill holes slice by slice, within the mask's bounding box (holes never reach outside it)."""
    out = mask.copy()
    box = bounding_box(mask)
    if box is None:
        return out
    out[box] = fill_holes_in_plane(mask[box])
    return out


def fill_small_holes(mask: np.ndarray, grid: Grid, max_mm2: float) -> np.ndarray:
    """Fill holes of at most ``max_mm2`` slice by slice: vessels inside a lung, not the dome of
    the diaphragm that a lung base rings round in one slice."""
    filled = fill_per_slice(mask)
    max_pixels = max_mm2 / grid.pixel_mm2
    for k in np.flatnonzero((filled != mask).any(axis=(1, 2))):
        labels, _count = ndimage.label(filled[k] & ~mask[k])
        sizes = np.bincount(labels.ravel())
        large = np.flatnonzero(sizes > max_pixels)
        filled[k][np.isin(labels, large[large > 0])] = False  # only the small holes stay filled
    return filled


def label(
    mask: np.ndarray, structure: np.ndarray | None = None, box: tuple[slice, ...] | None = None
) -> tuple[np.ndarray, int]:
    """``ndimage.label`` into 16-bit labels while they fit (half the memory of its default
    32 bits on a whole volume), else 32-bit. ``box``: only ``mask[box]`` is labelled, into that
    box of labels the shape of ``mask`` (0 elsewhere; the same components as on the whole mask
    when nothing is set outside the box)."""

    def labelled(dtype: type[np.integer]) -> tuple[np.ndarray, int]:
        if box is None:
            labels, count = ndimage.label(mask, structure, output=dtype)
            return labels, int(count)
        labels = np.zeros(mask.shape, dtype=dtype)
        return labels, int(ndimage.label(mask[box], structure, output=labels[box]))

    try:
        return labelled(np.uint16)
    except RuntimeError:  # more than 65535 components
        return labelled(np.int32)


def label_sizes(labels: np.ndarray, count: int) -> np.ndarray:
    """Voxels per label (index 0: the background), counted slice by slice: ``np.bincount`` of a
    whole volume first copies it as 64-bit integers (8 bytes per voxel)."""
    sizes = np.zeros(count + 1, dtype=np.int64)
    for plane in labels.reshape(-1, *labels.shape[-2:]) if labels.ndim > 2 else [labels]:
        sizes += np.bincount(plane.ravel(), minlength=count + 1)
    return sizes


def largest_component(labels: np.ndarray, count: int) -> np.ndarray:
    """The largest labelled component as a mask (the caller drops its input mask before, so
    only the labels and this mask are alive)."""
    if count <= 1:
        return np.asarray(labels > 0)
    sizes = label_sizes(labels, count)
    sizes[0] = 0
    return np.asarray(labels == int(np.argmax(sizes)))


def disk(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return np.asarray((r[:, None] ** 2 + r[None, :] ** 2) <= radius**2)


def dilate_disk(mask: np.ndarray, radius: int) -> np.ndarray:
    """In-plane binary dilation of a (slices, rows, cols) mask by :func:`disk` ``(radius)``, the
    image outside counting as False: the same voxels as ``ndimage.binary_dilation(mask,
    structure=disk(radius)[None])``, several times faster on a body-sized mask (see
    :func:`_disk_morphology`)."""
    return _disk_morphology(mask, radius, erode=False)


def erode_disk(mask: np.ndarray, radius: int, border: bool = True) -> np.ndarray:
    """In-plane binary erosion by :func:`disk` ``(radius)``, the image outside counting as
    ``border`` (``ndimage.binary_erosion(..., border_value=border)``)."""
    return _disk_morphology(mask, radius, erode=True, border=border)


def _disk_morphology(mask: np.ndarray, radius: int, erode: bool, border: bool = False) -> np.ndarray:
    """A disk is a stack of row segments, one per row offset ``dy`` (half-width
    ``isqrt(radius**2 - dy**2)``): the dilation (erosion) is the OR (AND) over ``dy`` of the
    running maximum (minimum) along each row, shifted by ``dy`` rows. Each running extreme is
    read off a table of runs of doubling widths (:func:`_row_runs`): whole-array ORs (ANDs) only,
    where scipy's generic morphology visits every element of the structure at every voxel inside
    a region. ``border``: what the image outside counts as (an erosion's; a dilation's outside
    is always False). Runs slab by slab, on threads (:func:`for_slabs`)."""
    mask = np.asarray(mask, dtype=bool)
    rows = mask.shape[1]
    if erode and not border and radius >= rows:
        return np.zeros(mask.shape, dtype=bool)
    out = np.full(mask.shape, erode, dtype=bool)
    # Row offsets by half-width (several offsets share one): one running extreme per width.
    offsets: dict[int, list[int]] = {}
    for d in range(min(radius, rows - 1) + 1):
        offsets.setdefault(math.isqrt(radius * radius - d * d), []).extend({d, -d})

    def one_slab(part: slice) -> None:
        dst_slab = out[part]
        for half, run in _row_runs(mask[part], sorted(offsets), erode, border):
            for dy in offsets[half]:
                # dilation: out[y] |= run[y - dy]; erosion: out[y] &= run[y + dy] (rows whose
                # neighbour lies outside take the border: skipped when True, cleared when False)
                shift = -dy if erode else dy
                dst = dst_slab[:, shift:] if shift >= 0 else dst_slab[:, : rows + shift]
                src = run[:, : rows - shift] if shift >= 0 else run[:, -shift:]
                if erode:
                    dst &= src
                    if not border and shift > 0:
                        dst_slab[:, :shift] = False
                    elif not border and shift < 0:
                        dst_slab[:, rows + shift :] = False
                else:
                    dst |= src

    for_slabs(one_slab, mask.shape[0], rows * mask.shape[2])
    return out


def _row_runs(
    mask: np.ndarray, halves: list[int], erode: bool, border: bool
) -> Iterator[tuple[int, np.ndarray]]:
    """For each half-width ``h``, whether any voxel (dilation) or every voxel (erosion) within
    ``h`` columns along the row is set, the image outside counting as ``border`` (erosion) or
    False (dilation): the running maximum (minimum) of width ``2h + 1``. From a table of runs
    of widths 1, 2, 4... (each level the OR (AND) of two runs of the level below, side by side),
    the window is the OR (AND) of the two runs of the widest level that fits in it, one at each
    end (they overlap): a handful of whole-array boolean operations per width, where a running
    count (``np.cumsum``, a serial loop) costs several times all of them together."""
    _, _, cols = mask.shape
    widest = max(halves)
    combine = np.logical_and if erode else np.logical_or
    # The rows padded by ``widest`` columns each side with what the outside counts as, worked on
    # as one flat run of rows laid end to end: each level is a single contiguous operation. A
    # run that crosses into the next row is garbage, but lies beyond every index read below.
    padded = np.full((*mask.shape[:2], cols + 2 * widest), erode and border, dtype=bool)
    padded[:, :, widest : widest + cols] = mask
    # runs[p][..., i] (as rows): the extreme over padded columns i .. i + p - 1, for
    # i <= cols + 2 * widest - p.
    # Only the levels some window reads are kept (a slab's temporaries stay a few of its size).
    sizes = {1 << (2 * half + 1).bit_length() - 1 for half in halves}
    level = padded.reshape(-1)
    runs = {1: level} if 1 in sizes else {}
    width = 1
    while 2 * width <= max(sizes):
        doubled = np.empty_like(level)
        combine(level[: level.size - width], level[width:], out=doubled[: level.size - width])
        width, level = 2 * width, doubled
        if width in sizes:
            runs[width] = level
    shape = padded.shape
    del level, padded
    run = np.empty(mask.shape, dtype=bool)
    for half in halves:
        size = 1 << (2 * half + 1).bit_length() - 1  # the widest run that fits in the window
        first, last = widest - half, widest + half - size + 1
        table = runs[size].reshape(shape)
        combine(table[:, :, first : first + cols], table[:, :, last : last + cols], out=run)
        yield half, run


def _fill_clipped(slice2d: np.ndarray) -> np.ndarray:
    """Fill holes, counting the image edge between the body's first and last contact as body."""
    padded = np.pad(slice2d, 1)
    rows, cols = slice2d.shape
    for axis_edge, pad_index, length in (
        (slice2d[0, :], (0, slice(1, cols + 1)), cols),
        (slice2d[-1, :], (rows + 1, slice(1, cols + 1)), cols),
        (slice2d[:, 0], (slice(1, rows + 1), 0), rows),
        (slice2d[:, -1], (slice(1, rows + 1), cols + 1), rows),
    ):
        touching = np.flatnonzero(axis_edge)
        if touching.size:
            line = np.zeros(length, dtype=bool)
            line[touching[0] : touching[-1] + 1] = True
            padded[pad_index] = line
    return np.asarray(ndimage.binary_fill_holes(padded)[1:-1, 1:-1] | slice2d)


def body_mask(hu: np.ndarray, threshold: float, grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The filled body, and per slice whether the field of view clips it (it touches the edge)."""
    n, rows, cols = hu.shape
    above = hu > threshold
    # Labelled within the box of every voxel above the threshold: the same components as on the
    # whole image (nothing outside the box to join), a third fewer voxels on a typical field of view.
    within = bounding_box(above)
    if within is None:
        return above, np.zeros(n, dtype=bool)
    labels, count = label(above[within])
    del above  # before the largest component is cut out: the labels alone are alive with it
    dense = largest_component(labels, count)
    del labels
    clipped = np.zeros(n, dtype=bool)
    for edge, at_edge in ((dense[:, 0, :], within[1].start == 0), (dense[:, -1, :], within[1].stop == rows),
                          (dense[:, :, 0], within[2].start == 0), (dense[:, :, -1], within[2].stop == cols)):
        if at_edge:
            clipped[within[0]] |= edge.any(axis=1)
    radius = max(1, round(BODY_CLOSING_MM / min(grid.dx, grid.dy)))
    # The closing and filling run on the body's box grown by 2 * radius + 1 (within the image):
    # beyond it the closing gives False whatever it sees, and the box's edge is either background
    # around the body or the image's own edge, so every voxel comes out as on the whole image.
    inner = bounding_box(dense)
    body = np.zeros(hu.shape, dtype=bool)
    if inner is None:
        return body, clipped
    spans = tuple(slice(w.start + i.start, w.start + i.stop) for w, i in zip(within, inner))
    grown, box = embed(dense[inner], spans, 2 * radius + 1, hu.shape)
    del dense
    closed = erode_disk(dilate_disk(grown, radius), radius)  # in-plane only
    del grown
    body[box] = fill_holes_in_plane(closed)
    for k in np.flatnonzero(clipped):
        full = np.zeros(hu.shape[1:], dtype=bool)
        full[box[1:]] = closed[k - box[0].start]
        body[k] = _fill_clipped(full)
    return body, clipped


def open_air(air: np.ndarray) -> np.ndarray:
    """In-plane opening: removes lines a pixel or two wide (dark streaks of metal artefacts)."""
    # disk(1) is the 4-connected cross; scipy's opening erodes with the outside False. Slab by
    # slab: the opening is in-plane, and only the result is volume-sized.
    opened = np.empty(air.shape, dtype=bool)

    def one_slab(part: slice) -> None:
        opened[part] = dilate_disk(erode_disk(air[part], 1, border=False), 1)

    for_slabs(one_slab, air.shape[0], air.shape[1] * air.shape[2])
    return opened


def air_components(air: np.ndarray, grid: Grid, min_ml: float) -> tuple[np.ndarray, int]:
    """3D components of ``air`` of at least ``min_ml``, numbered by size (1 = largest). Labelled
    within the box of the air, into that box of the labels (the same components as on the whole
    array, numbered in the same raster order): the air is a fraction of the body's box."""
    box = bounding_box(air)
    if box is None:
        return np.zeros(air.shape, dtype=np.uint16), 0
    labels, count = label(air, box=box)
    if count == 0:
        return labels, 0
    crop = labels[box]
    # Each voxel weighs its slice's own thickness (uneven spacing keeps volumes right): voxel
    # counts per label slice by slice, so no per-voxel weight array is ever built.
    volumes = np.zeros(count + 1)
    for k, plane in enumerate(crop, start=box[0].start):
        volumes += np.bincount(plane.ravel(), minlength=count + 1) * float(grid.thickness[k])
    volumes *= grid.pixel_mm2 / 1000.0
    order = [int(i) for i in np.argsort(-volumes) if i > 0 and volumes[i] >= min_ml]
    relabel = np.zeros(count + 1, dtype=labels.dtype)
    for new, old in enumerate(order, start=1):
        relabel[old] = new
    for plane in crop:  # in place, slice by slice: no second label volume
        plane[...] = relabel[plane]
    return labels, len(order)


def trace_airway(air: np.ndarray, body: np.ndarray, grid: Grid) -> Airway:
    """Trachea and main bronchi: from a midline seed in the top air slice, followed downwards.

    The carina is where the trace splits into pieces on both sides of the trachea (the main
    bronchi), not any split (the nasal cavity and pharynx part front to back)."""
    airway = np.zeros_like(air)
    has_air = np.nonzero(air.any(axis=(1, 2)))[0]
    if has_air.size == 0:
        return Airway(airway, None)
    start = int(has_air[-1])
    pixel_cm2 = grid.pixel_mm2 / 100.0
    seed = _trachea_seed(air[start], body[start], grid, start, pixel_cm2)
    if seed is None:
        return Airway(airway, None)
    airway[start] = seed
    # A main bronchus runs up to ~55 degrees from the vertical: it moves ~1.5 slice gaps sideways.
    reach = max(1, math.ceil(BRONCHUS_DRIFT * float(np.median(grid.thickness)) / min(grid.dx, grid.dy)))
    current, carina = seed, None
    trachea_x = float(grid.slice_x(start, seed.shape)[seed].mean())
    trachea_bottom = start
    for k in range(start - 1, -1, -1):
        labels, count = ndimage.label(air[k])
        if count == 0:
            break
        near = dilate_disk(current[None], reach)[0]
        touched = set(np.unique(labels[near]).tolist()) - {0}
        areas = np.bincount(labels.ravel())
        accepted = [i for i in touched if areas[i] * pixel_cm2 <= AIRWAY_MAX_CM2]
        if not accepted:
            break
        xs = grid.slice_x(k, air[k].shape)
        centres = [float(xs[labels == i].mean()) - trachea_x for i in accepted]
        if len(accepted) == 1 and carina is None:
            trachea_x += centres[0]
            trachea_bottom = k
        elif carina is None and _bronchi_split(centres) and grid.z[start] - grid.z[trachea_bottom] >= CARINA_TRACHEA_MM:
            carina = k
        current = np.isin(labels, accepted)
        airway[k] = current
    return Airway(airway, carina)


def _bronchi_split(offsets: list[float]) -> bool:
    """Pieces both sides of the trachea's line, close to it: the main bronchi just below the
    carina (the maxillary sinuses either side of the nasal cavity lie farther out)."""
    near = [x for x in offsets if CARINA_SPLIT_MM <= abs(x) <= CARINA_REACH_MM]
    return any(x < 0 for x in near) and any(x > 0 for x in near)


def _trachea_seed(
    air2d: np.ndarray, body2d: np.ndarray, grid: Grid, k: int, pixel_cm2: float
) -> np.ndarray | None:
    """The most midline small, round air region: a trachea (not the tip of a lung base)."""
    labels, count = ndimage.label(air2d)
    if count == 0 or not body2d.any():
        return None
    xs = grid.slice_x(k, air2d.shape)
    body_x = xs[body2d]
    mid, width = float(body_x.mean()), float(body_x.max() - body_x.min())
    limit = min(TRACHEA_MIDLINE_FRACTION * width, TRACHEA_MAX_OFFSET_MM)
    rows, cols = (np.asarray(a) for a in np.indices(air2d.shape))
    best: tuple[float, int] | None = None
    for i in range(1, count + 1):
        component = labels == i
        area = component.sum() * pixel_cm2
        if not (TRACHEA_MIN_CM2 <= area <= AIRWAY_MAX_CM2):
            continue
        offset = abs(float(xs[component].mean()) - mid)
        radius2 = float(
            (((rows[component] - rows[component].mean()) * grid.dy) ** 2
             + ((cols[component] - cols[component].mean()) * grid.dx) ** 2).max()
        )
        round_enough = area * 100.0 >= TRACHEA_MIN_ROUNDNESS * math.pi * max(radius2, grid.pixel_mm2)
        if offset <= limit and round_enough and (best is None or offset < best[0]):
            best = (offset, i)
    return None if best is None else np.asarray(labels == best[1])
