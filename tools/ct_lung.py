"""``ct lung segmentation``: left and right lungs from Hounsfield units alone (no model weights).

The classic threshold-and-components method (after Hu, Hoffman & Reinhardt, IEEE TMI 2001), made
safe for the CTs a PACS really routes (abdomens, heads, pelvises, chests cut by the field of view):
air inside a body is not all lung, so every air region must behave like one before it is called
lung, and a lung only partly in the volume is reported as such.

1. **View** (:mod:`tools.lung_geometry`): the volume in a canonical orientation (slices to the
   head, rows to the back, columns to the patient's left), whatever the image orientation or slice
   order; masks go back to the volume's own order at the end.
2. **Masks** (:mod:`tools.lung_masks`): the filled body, the air inside it, the airway (trachea and
   main bronchi, removed so they neither count as lung nor join the lungs; the trace tells whether
   the carina is in view).
3. **Candidates** (:mod:`tools.lung_pick`, :mod:`tools.lung_candidates`): the largest air regions,
   split where one spans both sides, each judged anatomically (parenchymal attenuation, not a
   mottle, tall enough, lateral, reaching the back, inside the ribs, on the airway, above the
   bowel). Rejected regions keep their reasons: in the tool's summary and the log (volumes and
   reasons only, no patient data).
4. **Refusal**: no plausible region -> :class:`~tools.base.ToolRefused` with the reasons (the job
   ends with them, nothing is sent).
5. **Coverage** (:mod:`tools.lung_coverage`): a lung touching the first or last slice, or cut by a
   field of view that clips the body, is partial: its segment says which part is seen, its volume
   is "within the field of view", and the summary never calls it a lung volume.
6. **Measurements**: volume integrates each slice's area over that slice's own thickness (half the
   gap to each neighbour, :func:`image_model.geometry.slice_thicknesses`), so uneven spacing and a
   missing slice keep volumes right; mean HU over the lung mask.

Refused with a reason: not CT, fewer than ``MIN_SLICES`` slices, slices not roughly axial (the
slice normal more than ``MAX_AXIAL_TILT_DEG`` from the patient's z axis), no geometry, values not
in HU, no lungs.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from image_model.codes import concept, segment_codes, unit
from image_model.findings import AlgorithmInfo, Coverage, Measurement, Segment, ToolOutput
from image_model.geometry import slice_normal
from tools.base import Tool, ToolRefused
from tools.lung_candidates import RIB_HU, SKELETON_ML, Candidate, Scene
from tools.lung_coverage import lung_coverage
from tools.lung_geometry import CanonicalView, Grid, canonical
from tools.lung_masks import Airway, air_components, body_mask, bounding_box, open_air, trace_airway
from tools.lung_pick import MAX_CANDIDATES, find_candidates, pick_lungs
from tools.registry import register_tool
from tools.targets import TARGET_PARAMS, select_segments

if TYPE_CHECKING:
    from image_model.volume import Volume

log = logging.getLogger(__name__)

ALGORITHM_NAME = "mmed-node HU lung segmentation"
ALGORITHM_VERSION = "2.0"
#: CID 7162 "Morphological Operations": thresholds, connected components, erosion (no learning).
FAMILY = concept("morphological_operations")
VOLUME = concept("volume")
MEAN = concept("mean")
ML = unit("mL")
HU = unit("HU")

MIN_SLICES = 3
MAX_AXIAL_TILT_DEG = 30.0
#: Rejected regions listed in a refusal or the summary (the largest first).
REASONS_SHOWN = 4


class CTLungSettings(BaseModel):
    """Config (``tools: {"ct lung segmentation": {...}}``) and per-call parameter defaults."""

    model_config = ConfigDict(extra="forbid")

    body_threshold_hu: float = Field(-500.0, ge=-1000, le=0)
    lung_threshold_hu: float = Field(-320.0, ge=-1000, le=-100)
    min_lung_ml: float = Field(20.0, ge=0)
    min_component_ml: float = Field(2.0, ge=0)


@register_tool
class CTLungSegmentation(Tool):
    api_name = "ct lung segmentation"
    description = (
        "Segments the left and right lungs on a CT volume from Hounsfield units (no model), "
        "checking that each region is anatomically a lung, and measures each lung's volume (mL, "
        "within the field of view when the lung is cut by it) and mean attenuation (HU)."
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
        _check_input(volume)
        view, grid = canonical(volume)
        hu = view.forward(volume.pixels)  # a view (flips, transpose): never a copy of the volume
        body, clipped = body_mask(hu, cfg.body_threshold_hu, grid)
        in_plane = bounding_box(body)
        if in_plane is None:
            raise ToolRefused(f"no lungs found: no body (nothing above {cfg.body_threshold_hu:g} HU) in the volume")
        # From here on the tool works in the body's in-plane box (every slice kept, so the first
        # and last slices stay the volume's): nothing it looks for lies outside the body, and
        # every mask is the box's size, not the image's. The lungs go back to the whole image.
        window = (slice(0, hu.shape[0]), *in_plane[1:])
        body = np.array(body[window])  # a copy: the whole-image mask goes
        box_hu, box_grid = hu[window], grid.window(window)
        air = open_air(body & (box_hu < cfg.lung_threshold_hu))
        airway = trace_airway(air, body, box_grid)
        air &= ~airway.mask
        labels, count = air_components(air, box_grid, cfg.min_component_ml)
        del air  # one byte per voxel less while the candidates are judged
        if count == 0:
            raise ToolRefused("no lungs found: no air region inside the body")
        skeleton = box_grid.volume_ml(body & (box_hu > RIB_HU)) >= SKELETON_ML
        scene = Scene(box_hu, body, box_grid, airway, cfg.min_lung_ml, skeleton)
        candidates, separation = find_candidates(labels, count, scene)
        del labels  # the candidates keep their own boxes
        picked = pick_lungs(candidates, separation, max(0, count - MAX_CANDIDATES), scene)
        rejected = [c for c in picked.candidates if not c.plausible]
        for candidate in rejected:
            log.info("ct lung segmentation: %s rejected: %s", candidate.describe(), "; ".join(candidate.reasons))
        if not picked.lungs:
            raise ToolRefused(_refusal(picked.candidates, picked.ignored))
        not_lung = [_short(c) for c in rejected[:REASONS_SHOWN]]
        separation = picked.separation
        del candidates, rejected, scene, body  # the candidates' boxes go; their reasons stay
        picked.candidates.clear()
        # One at a time, each box's mask dropped as its whole mask is made.
        lungs = {side: _place(picked.lungs.pop(side), window, volume.pixels.shape, view) for side in list(picked.lungs)}
        segments, summary = _describe(lungs, hu, grid, clipped, airway, view.backward)
        kept, missing = select_segments(segments, params.get("targets"), params.get("exclude"))
        if len(kept) < len(segments):  # one side asked for: the summary states only that side
            asked = {side for side in lungs if any(s.label.lower().startswith(side) for s in kept)}
            segments, summary = [], {}
            if asked:
                segments, summary = _describe(
                    {side: mask for side, mask in lungs.items() if side in asked}, hu, grid, clipped,
                    airway, view.backward,
                )
                summary = {k: v for k, v in summary.items() if not k.startswith("total_") and v is not None}
        if missing:
            summary["not_found"] = missing
        separation = separation if len(lungs) == 2 else "one lung found"
        summary.update(airway_removed_ml=round(box_grid.volume_ml(airway.mask), 1), separation=separation)
        if not_lung:
            summary["not_lung"] = not_lung
        notes = _notes(volume)
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

def _check_input(volume: Volume) -> None:
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


def _notes(volume: Volume) -> list[str]:
    notes = []
    if volume.meta.get("uneven_spacing"):
        notes.append("uneven slice spacing: volumes integrate each slice's own thickness")
    if volume.meta.get("gantry_tilt_deg"):
        notes.append(f"gantry tilt {volume.meta['gantry_tilt_deg']} deg: thickness measured along the slice normal")
    return notes


# --- results ---------------------------------------------------------------------------------

def _place(crop: np.ndarray, box: tuple[slice, ...], shape: tuple[int, ...], view: CanonicalView) -> np.ndarray:
    """``crop`` (the box ``box`` of the canonical view) as a whole mask in the canonical view: a
    view of a mask of ``shape`` in the volume's own order, so that turning it back copies nothing."""
    whole = np.zeros(shape, dtype=bool)
    canonical_mask = view.forward(whole)
    canonical_mask[box] = crop
    return canonical_mask


def _short(candidate: Candidate) -> str:
    return f"{candidate.describe()}: {', '.join(candidate.reasons)}"


def _refusal(candidates: list[Candidate], ignored: int) -> str:
    shown = "; ".join(_short(c) for c in candidates[:REASONS_SHOWN])
    more = len(candidates) - REASONS_SHOWN + ignored
    extra = f"; and {more} smaller" if more > 0 else ""
    return f"no lungs found: no air region inside the body behaves like a lung ({shown}{extra})"


def _label(side: str, coverage: Coverage) -> str:
    """Segment label (LO, at most 64 characters): the side, and the part seen when partial."""
    name = f"{side.capitalize()} lung"
    if coverage.complete:
        return name
    part = coverage.description.split(";")[0].split(":")[0]
    return f"{name} ({part})"[:64]


def _describe(
    lungs: dict[str, np.ndarray], hu: np.ndarray, grid: Grid, clipped: np.ndarray, airway: Airway,
    back: Callable[[np.ndarray], np.ndarray],
) -> tuple[list[Segment], dict[str, Any]]:
    """Segments (masks back in the volume's order) and the summary the planner states.

    A partly covered lung's volume is reported as ``<side>_lung_in_view_ml`` with the coverage in
    words, never as ``<side>_lung_ml``: the aggregator would state it as the lung's volume."""
    segments: list[Segment] = []
    volumes: dict[str, float] = {}
    summary: dict[str, Any] = {}
    all_hu: list[np.ndarray] = []
    partial: dict[str, str] = {}
    for side in ("left", "right"):
        mask = lungs.get(side)
        if mask is None or not mask.any():
            continue
        coverage = lung_coverage(mask, grid, clipped, airway.at_top(grid), airway.carina is not None)
        volume_ml = grid.volume_ml(mask)
        values = hu[mask]
        all_hu.append(values)
        mean_hu = float(values.mean())
        key = f"{side}_lung_ml" if coverage.complete else f"{side}_lung_in_view_ml"
        volumes[key] = round(volume_ml, 1)
        summary[f"{side}_lung_mean_hu"] = round(mean_hu, 1)
        if not coverage.complete:
            partial[side] = coverage.description
        # Codes from the plain name (lung, laterality); the label adds the part seen.
        codes = segment_codes(f"{side} lung")
        measurements = [Measurement(VOLUME, volume_ml, ML), Measurement(MEAN, mean_hu, HU)]
        segments.append(replace(codes.segment(_label(side, coverage), back(mask), measurements), coverage=coverage))
    mean = round(float(np.concatenate(all_hu).mean()), 1)
    if not partial:
        whole = {"left_lung_ml": volumes.get("left_lung_ml"), "right_lung_ml": volumes.get("right_lung_ml")}
        return segments, {**whole, **summary, "mean_hu": mean, "total_lung_ml": round(sum(volumes.values()), 1)}
    return segments, {
        "coverage": _coverage_words(partial),
        "partial": "volumes are within the field of view only, not whole-lung volumes",
        **volumes,
        **summary,
        "mean_hu": mean,
        "total_in_view_ml": round(sum(volumes.values()), 1),
    }


def _coverage_words(partial: dict[str, str]) -> str:
    """"lung bases only" when both lungs show the same part; else side by side."""
    words = set(partial.values())
    if len(partial) == 2 and len(words) == 1:
        only = words.pop()
        return {"base only": "lung bases only", "apex only": "lung apices only"}.get(only, f"both lungs: {only}")
    return "; ".join(f"{side} lung: {words}" for side, words in partial.items())
