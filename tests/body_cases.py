"""Named realistic CT cases (:mod:`tests.body_phantom`) and the lung tool's result on each.

:data:`LUNG_CASES` and :data:`REFUSED_CASES` are the cases the lung tool was developed on (the
held-out ones live in ``test_ct_lung_regression.py`` alone).

Each case is written once per test session (into a temporary folder removed at exit), loaded by
the one loader and run through ``ct lung segmentation``; tests of the tool, the SEG/SR and routing
share them. :func:`score` compares a result with the truth: Dice and precision per lung, and how
much of each segment is bowel, stomach or sinus gas.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from image_model.findings import ToolOutput
from image_model.loader import load_series
from image_model.volume import Volume
from tests.body_anatomy import make_patient
from tests.body_phantom import HEADERS, BodyTruth, scan_for, write_body_series
from tools.base import ToolRefused
from tools.ct_lung import CTLungSegmentation


@dataclass(frozen=True)
class Case:
    scan: str
    seed: int
    scan_options: dict[str, Any] = field(default_factory=dict)
    patient_options: dict[str, Any] = field(default_factory=dict)
    #: write_body_series keywords: localizer, reverse_order, headers (merged over HEADERS[scan]).
    write_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    case: Case
    folder: Path
    truth: BodyTruth
    volume: Volume
    output: ToolOutput | None
    refusal: str | None


@dataclass(frozen=True)
class LungScore:
    dice: float
    #: Fraction of the segment inside the true lung.
    precision: float
    #: Fraction of the segment that is mostly other gas (bowel, stomach, sinuses).
    other_gas: float


ODD_HEADERS = {"BodyPartExamined": None, "SeriesDescription": "1.0 x 5 B70f", "ProtocolName": None,
               "PatientPosition": "FFS"}

LUNG_CASES: dict[str, Case] = {
    "chest": Case("chest", 1),
    "chest-apex-clipped": Case("chest-apex-clipped", 2),
    # The old tool labelled this case's bowel gas as both lungs (zero overlap with the bases).
    "abdomen-lung-bases": Case("abdomen-lung-bases", 1),
    "abdomen-lung-bases-prone": Case("abdomen-lung-bases", 5, patient_options={"position": "prone"}),
    "abdomen-oesophageal-air-contrast": Case(
        "abdomen-lung-bases", 10, patient_options={"esophageal_air": True, "aorta_hu": 260.0}
    ),
    "neck-apices": Case("neck-apices", 6),
    "chest-clipped-fov": Case("chest", 3, scan_options={"pixel_mm": 1.9, "centre": (25.0, 0.0)}),
    "chest-metal-noise-localizer-odd-headers": Case(
        "chest", 7, scan_options={"noise_hu": 55.0, "metal": "spine rods"},
        write_options={"localizer": True, "reverse_order": True, "headers": ODD_HEADERS},
    ),
    "chest-rotated-thin-slices": Case(
        "chest-apex-clipped", 8, scan_options={"orientation": "axial-rotated", "slice_mm": 2.5}
    ),
    # 10 mm slices merge the left base with the stomach's gas through the diaphragm.
    "chest-thick-slices": Case("chest", 9, scan_options={"slice_mm": 10.0}),
}
REFUSED_CASES: dict[str, Case] = {
    "upper-abdomen": Case("upper-abdomen", 11),
    "head": Case("head", 12),
    "pelvis-hip-prosthesis": Case("pelvis", 13, scan_options={"metal": "hip", "noise_hu": 40.0}),
}


_ROOT = Path(tempfile.mkdtemp(prefix="body-cases-"))
atexit.register(shutil.rmtree, _ROOT, True)


_RESULTS: dict[str, Result] = {}


def case_result(name: str, case: Case) -> Result:
    """The case written, loaded and segmented (once per session and name)."""
    if name not in _RESULTS:
        _RESULTS[name] = _run(name, case)
    assert _RESULTS[name].case == case, f"two different cases named {name!r}"
    return _RESULTS[name]


def _run(name: str, case: Case) -> Result:
    patient = make_patient(case.seed, **case.patient_options)
    scan = scan_for(patient, case.scan, **case.scan_options)
    options = dict(case.write_options)
    headers: dict[str, str | None] = {**HEADERS[case.scan], **options.pop("headers", {})}
    folder = _ROOT / name
    truth = write_body_series(folder, patient, scan, headers=headers, **options)
    volume = load_series(folder)
    try:
        return Result(case, folder, truth, volume, CTLungSegmentation().run(volume, {}), None)
    except ToolRefused as exc:
        return Result(case, folder, truth, volume, None, str(exc))


def named(name: str) -> Result:
    """A case of :data:`LUNG_CASES` or :data:`REFUSED_CASES`, by name."""
    return case_result(name, {**LUNG_CASES, **REFUSED_CASES}[name])


def instance_files(result: Result) -> list[Path]:
    """The series' files as the node's spool would hold them (the localizer too, if written)."""
    return sorted(result.folder.glob("*.dcm"))


def side_of(label: str) -> str:
    return "left" if label.lower().startswith("left") else "right"


def score(result: Result) -> dict[str, LungScore]:
    """Per side found: Dice and precision against the true lung in view, other gas in it."""
    assert result.output is not None, result.refusal
    truth = result.truth
    assert truth.other_gas is not None
    out = {}
    for segment in result.output.segments:
        side = side_of(segment.label)
        true = truth.left_lung if side == "left" else truth.right_lung
        assert true is not None
        mask = segment.mask
        overlap = float((mask & true).sum())
        out[side] = LungScore(
            dice=2.0 * overlap / float(mask.sum() + true.sum()),
            precision=overlap / float(mask.sum()),
            other_gas=float((mask & truth.other_gas).sum()) / float(mask.sum()),
        )
    return out


def true_sides(truth: BodyTruth) -> set[str]:
    return {side for side in ("left", "right") if np.any(getattr(truth, f"{side}_lung"))}
