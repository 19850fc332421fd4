"""The studies every viewer test opens: the node's own results on the project's phantoms and on
real files, one result per tool that writes a SEG or an SR.

* ``ct-lung``: ``ct lung segmentation`` on the CT lung phantom (testkit/phantoms.py): two lungs;
* ``ct-organ``: ``organ segmentation 3d`` on the same phantom, a MONAI bundle whose network is
  a fixed 1x1x1 convolution (soft tissue -> "liver", the dense table -> "spleen"): two segments
  of other organs, other colours;
* ``ct-grounded``: ``grounding dino + MedSAM`` on the same phantom (tiny random-weight models):
  boxes in patient coordinates (SCOORD3D) and their masks;
* ``cr-medsam``: ``MedSAM`` on a real chest CR (pydicom-data ``RG1_UNCI.dcm``): a SEG on a
  projection image, 1955 x 1841 pixels (an odd packed length: a FRACTIONAL SEG);
* ``cr-grounding``: ``grounding dino`` on the same CR: boxes on the image (SCOORD), an SR alone;
* ``cr-classify``: ``metadata classification`` on the same CR: labels and text, an SR alone;
* ``ect-medsam``: ``MedSAM`` on pydicom-data's Enhanced CT (``eCT_Supplemental.dcm``, 2 frames):
  a SEG and SR on a multi-frame source.

The CT phantom joins the CR's study (same patient), so one study holds CT, CR and their results;
the Enhanced CT is its own study. Every result is made by ``mmed-node tools run`` (the CLI's own
entry point), the encoders exactly as the node runs them for a PACS. The sources, the tiny models
and every run are made in one subprocess (``python -m tests.viewers.study ROOT``), so that torch
and its friends are imported once. The tiny models' masks are arbitrary but real; what a viewer
must show is what the tool returned.

The CR copy differs from the pydicom-data file in one way: its ``PixelSpacing`` of 0\\0 is replaced
by ``ImagerPixelSpacing`` 0.15\\0.15 (what a CR usually carries). OHIF cannot display a source
image whose spacing is zero (black viewport, with or without our SEG), which would hide whatever
our SEG does; the zero-spacing case of the encoders is tested in tests/test_outputs_pydicom_data.py.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml

CR_IMAGER_PIXEL_SPACING = 0.15
#: MedSAM's box prompt on the CR (normalised x0, y0, x1, y1): the patient's right lung field.
CR_BOX = [0.2, 0.25, 0.5, 0.75]
#: MedSAM's box prompt on the Enhanced CT's frames.
ECT_BOX = [0.3, 0.3, 0.6, 0.55]
#: Tiny Grounding DINO: few queries, so a handful of boxes; thresholds that keep some of them.
GROUNDING_QUERIES = 3
GROUNDING_THRESHOLDS = {"box_threshold": 0.2, "text_threshold": 0.2}
#: The organ bundle's intensity window and its 1x1x1 convolution (background, liver, spleen):
#: channel scores 0, s - 0.5 and 2 s - 1.3 of the windowed intensity s; soft tissue (s ~ 0.69)
#: is "liver", the table (s ~ 0.87) "spleen", air and lung background.
ORGAN_WINDOW = (-1000.0, 500.0)
ORGAN_WEIGHTS = ([0.0, 1.0, 2.0], [0.0, -0.5, -1.3])
TOOLS_TIMEOUT_S = 600

#: Each result: name -> (source, tool, API_params).
RUNS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "ct-lung": ("ct", "ct lung segmentation", {}),
    "ct-organ": ("ct", "organ segmentation 3d", {}),
    "ct-grounded": ("ct", "grounding dino + MedSAM", {"prompts": ["nodule"], "slices": [12]}),
    "cr-medsam": ("cr", "MedSAM", {"boxes": [CR_BOX], "labels": ["right lung"]}),
    "cr-grounding": ("cr", "grounding dino", {"prompts": ["nodule"]}),
    "cr-classify": ("cr", "metadata classification", {}),
    "ect-medsam": ("ect", "MedSAM", {"boxes": [ECT_BOX], "labels": ["liver lesion"], "slices": [0, 1]}),
}
#: Tools that write an SR alone (no masks).
SR_ONLY_TOOLS = frozenset({"grounding dino", "metadata classification"})
#: The results with a SEG.
WITH_SEG = [name for name, (_, tool, _) in RUNS.items() if tool not in SR_ONLY_TOOLS]


@dataclass(frozen=True)
class Result:
    """One tool's run: its source series, its SEG (if the tool made masks) and SR, what the
    tool reported."""

    name: str
    source_files: list[Path]
    seg: Path | None
    sr: Path
    summary: dict[str, Any]

    @property
    def source_uids(self) -> list[str]:
        return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.source_files]

    @property
    def study_uid(self) -> str:
        return str(pydicom.dcmread(self.sr, stop_before_pixels=True).StudyInstanceUID)

    @property
    def files(self) -> list[Path]:
        return [self.sr] + ([self.seg] if self.seg is not None else [])


@dataclass(frozen=True)
class ViewerStudy:
    root: Path
    results: dict[str, Result]

    @property
    def all_files(self) -> list[Path]:
        sources = {p for result in self.results.values() for p in result.source_files}
        return sorted(sources) + [p for result in self.results.values() for p in result.files]


def _write_cr(folder: Path) -> None:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(str(get_testdata_file("RG1_UNCI.dcm")))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [CR_IMAGER_PIXEL_SPACING, CR_IMAGER_PIXEL_SPACING]
    folder.mkdir(parents=True)
    ds.save_as(folder / "cr.dcm", enforce_file_format=True)


def _write_ect(folder: Path) -> None:
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("eCT_Supplemental.dcm"), folder / "ect.dcm")


def _write_models(root: Path) -> Path:
    """Tiny models for the tools and the node config naming them; returns the config."""
    import torch

    from testkit.model_files import write_bundle
    from testkit.tiny_models import (
        tiny_grounding_settings,
        tiny_sam_settings,
        write_tiny_grounding_dino,
        write_tiny_sam,
    )

    weights, biases = ORGAN_WEIGHTS
    bundle = write_bundle(
        root / "organ-bundle",
        {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 3, "kernel_size": 1},
        {"weight": torch.tensor(weights).reshape(3, 1, 1, 1, 1), "bias": torch.tensor(biases)},
        {"0": "background", "1": "liver", "2": "spleen"}, window=ORGAN_WINDOW, roi_size=[32, 32, 16],
    )
    sam = tiny_sam_settings(write_tiny_sam(root / "sam.pt"))
    grounding = tiny_grounding_settings(
        write_tiny_grounding_dino(root / "grounding", num_queries=GROUNDING_QUERIES), **GROUNDING_THRESHOLDS
    )
    config = root / "node.yaml"
    config.write_text(yaml.safe_dump({"tools": {
        "MedSAM": sam,
        "grounding dino": grounding,
        "grounding dino + MedSAM": {"grounding": grounding, "medsam": sam},
        "organ segmentation 3d": {"bundle_dir": str(bundle), "device": "cpu"},
    }}))
    return config


def make_study(root: Path) -> None:
    """Write the sources and the tiny models under ``root`` and run every tool of :data:`RUNS`
    through the CLI into ``root/out/<name>``; in the subprocess :func:`build_viewer_study` starts."""
    import torch

    from dicom_node.app.cli import main as cli
    from testkit.phantoms import write_ct_phantom

    torch.set_num_threads(1)  # tiny models on two shared cores
    _write_cr(root / "cr")
    _write_ect(root / "ect")
    cr_header = pydicom.dcmread(root / "cr" / "cr.dcm", stop_before_pixels=True)
    write_ct_phantom(
        root / "ct", slices=24, rows=128, cols=128, slice_spacing=10.0,
        study_uid=str(cr_header.StudyInstanceUID), patient_id=str(cr_header.PatientID),
    )
    config = _write_models(root)
    for name, (source, tool, params) in RUNS.items():
        code = cli(["tools", "run", tool, "--series", str(root / source), "--params", json.dumps(params),
                    "--config", str(config), "--out", str(root / "out" / name)])
        if code != 0:
            raise SystemExit(f"{name}: tools run exited {code}")


def build_viewer_study(root: Path) -> ViewerStudy:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.viewers.study", str(root)],
        capture_output=True, text=True, env=env, timeout=TOOLS_TIMEOUT_S, check=False,
    )
    assert proc.returncode == 0, f"making the viewer study failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    results = {}
    for name, (source, _, _) in RUNS.items():
        out = root / "out" / name
        results[name] = Result(
            name, sorted((root / source).iterdir()), out / "seg.dcm" if (out / "seg.dcm").is_file() else None,
            out / "sr.dcm", json.loads((out / "summary.json").read_text()),
        )
    return ViewerStudy(root=root, results=results)


@pytest.fixture(scope="session")
def viewer_study(tmp_path_factory: pytest.TempPathFactory) -> ViewerStudy:
    """Built once per session and shared by the OHIF, Cornerstone, dcmqi and dciodvfy tests."""
    return build_viewer_study(tmp_path_factory.mktemp("viewer-study"))


if __name__ == "__main__":
    make_study(Path(sys.argv[1]))
