"""The study every viewer test opens: the node's own results on the project's phantoms.

One study holds a CT lung phantom (tests/phantoms.py) with the ``ct lung segmentation`` SEG and
SR, and a real chest CR (pydicom-data ``RG1_UNCI.dcm``) with a ``MedSAM`` SEG and SR (a tiny
random-weight SAM: the mask is arbitrary but real, and its truth is what the tool returned).
Both are produced by ``mmed-node tools run`` as subprocesses, the encoders exactly as the node
runs them for a PACS.

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

import pydicom
import pytest
import yaml

CR_IMAGER_PIXEL_SPACING = 0.15
#: MedSAM's box prompt on the CR (normalised x0, y0, x1, y1): the patient's right lung field.
CR_BOX = [0.2, 0.25, 0.5, 0.75]
TOOL_TIMEOUT_S = 240


@dataclass(frozen=True)
class Result:
    """One tool's run: its source series, its SEG and SR, and what the tool reported."""

    source_files: list[Path]
    seg: Path
    sr: Path
    summary: dict

    @property
    def source_uids(self) -> list[str]:
        return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in self.source_files]


@dataclass(frozen=True)
class ViewerStudy:
    root: Path
    study_uid: str
    ct: Result
    cr: Result

    @property
    def all_files(self) -> list[Path]:
        return [*self.ct.source_files, *self.cr.source_files, self.ct.seg, self.ct.sr, self.cr.seg, self.cr.sr]


def _cli() -> list[str]:
    exe = shutil.which("mmed-node")
    return [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]


def _tools_run(name: str, series: Path, out: Path, config: Path, params: dict) -> subprocess.Popen[str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.Popen(
        [*_cli(), "tools", "run", name, "--series", str(series), "--params", json.dumps(params),
         "--config", str(config), "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _finish(proc: subprocess.Popen[str], out: Path, sources: list[Path]) -> Result:
    stdout, stderr = proc.communicate(timeout=TOOL_TIMEOUT_S)
    assert proc.returncode == 0, f"tools run failed:\n{stdout}\n{stderr}"
    return Result(sources, out / "seg.dcm", out / "sr.dcm", json.loads((out / "summary.json").read_text()))


def _write_cr(folder: Path) -> Path:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(str(get_testdata_file("RG1_UNCI.dcm")))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [CR_IMAGER_PIXEL_SPACING, CR_IMAGER_PIXEL_SPACING]
    folder.mkdir(parents=True)
    path = folder / "cr.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def build_viewer_study(root: Path) -> ViewerStudy:
    from tests.phantoms import write_ct_phantom
    from tests.tools_tiny_models import tiny_sam_settings, write_tiny_sam

    cr_file = _write_cr(root / "cr")
    cr_header = pydicom.dcmread(cr_file, stop_before_pixels=True)
    # The phantom joins the CR's study (same patient), so one study holds CT, CR and results.
    truth = write_ct_phantom(
        root / "ct", slices=24, rows=128, cols=128, slice_spacing=10.0,
        study_uid=str(cr_header.StudyInstanceUID), patient_id=str(cr_header.PatientID),
    )
    config = root / "node.yaml"
    config.write_text(yaml.safe_dump({"tools": {"MedSAM": tiny_sam_settings(write_tiny_sam(root / "sam.pt"))}}))
    # Both tools at once: the suite's machine has two cores.
    ct_proc = _tools_run("ct lung segmentation", root / "ct", root / "ct-out", config, {})
    cr_proc = _tools_run("MedSAM", root / "cr", root / "cr-out", config, {"boxes": [CR_BOX], "labels": ["right lung"]})
    ct = _finish(ct_proc, root / "ct-out", list(truth.files))
    cr = _finish(cr_proc, root / "cr-out", [cr_file])
    return ViewerStudy(root=root, study_uid=str(cr_header.StudyInstanceUID), ct=ct, cr=cr)


@pytest.fixture(scope="session")
def viewer_study(tmp_path_factory: pytest.TempPathFactory) -> ViewerStudy:
    """Built once per session and shared by the OHIF, Cornerstone and dcmqi tests."""
    return build_viewer_study(tmp_path_factory.mktemp("viewer-study"))
