"""``mmed-node tools list`` / ``tools run`` as subprocesses, on real files written here."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import yaml

from testkit.model_files import (
    ct_phantom,
    dice,
    threshold_conv_state,
    write_bundle,
    write_series,
)
from tests.dicom_validate import dciodvfy_errors

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
EXPECTED_TOOLS = {
    "grounding dino", "MedSAM", "grounding dino + MedSAM", "organ segmentation 3d", "ct lung segmentation",
    "BiomedClip", "metadata classification", "report generation", "retrieval",
}


def _cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("mmed-node")
    cmd = [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    bundle = write_bundle(
        root / "bundle",
        {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1},
        threshold_conv_state(0.6), {"0": "background", "1": "liver"},
        pixdim=[1.5, 1.5, 2.0], window=(-1000.0, 1000.0), roi_size=[16, 16, 16],
    )
    kb = root / "kb"
    kb.mkdir()
    (kb / "liver.md").write_text("# Liver\n\n## Size\nAn adult liver holds 1200 to 1800 mL.\n\n"
                                 "## Cysts\nSimple hepatic cysts are benign fluid-filled lesions.\n", encoding="utf-8")
    config = root / "node.yaml"
    config.write_text(yaml.safe_dump({"tools": {
        "organ segmentation 3d": {"bundle_dir": str(bundle), "device": "cpu"},
        "BiomedClip": {"model_path": str(root / "no-such-clip")},
        "retrieval": {"knowledge_dir": str(kb), "method": "bm25"},
    }}), encoding="utf-8")
    phantom = ct_phantom(shape=(16, 40, 40), spacing=(2.5, 1.0, 1.0), descending=True)
    np.save(root / "organ.npy", phantom.organ)
    series = root / "series"
    write_series(list(reversed(phantom.volume.datasets)), series)  # file order != slice order
    return {"root": root, "config": config, "series": series, "organ": root / "organ.npy"}


def test_tools_list_json(setup: dict[str, Path]) -> None:
    proc = _cli("tools", "list", "--json", "--config", str(setup["config"]))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["name"] for r in rows} == EXPECTED_TOOLS
    assert all({"name", "available", "reason"} <= set(r) for r in rows)
    by = {r["name"]: r for r in rows}
    assert by["organ segmentation 3d"]["available"] is True and by["retrieval"]["available"] is True
    assert by["BiomedClip"]["available"] is False and "no-such-clip" in by["BiomedClip"]["reason"]
    assert by["metadata classification"]["available"] is True
    table = _cli("tools", "list", "--config", str(setup["config"]))
    assert table.returncode == 0 and "organ segmentation 3d" in table.stdout and "no-such-clip" in table.stdout


#: Model frameworks the tool modules import only where a model is loaded or run.
HEAVY_MODULES = ("torch", "torchvision", "transformers", "monai", "segment_anything", "open_clip",
                 "sentence_transformers")


def test_building_a_registry_imports_no_model_framework(setup: dict[str, Path]) -> None:
    """Every ``mmed-node`` process builds a ToolRegistry (``tools list``, ``serve``, workers); with
    tools configured it must still not import torch & co. (seconds of start-up each)."""
    code = (
        "import json, sys\n"
        "from config.loader import load_config\n"
        "from tools.registry import ToolRegistry\n"
        f"registry = ToolRegistry(dict(load_config({str(setup['config'])!r}).tools))\n"
        "print(json.dumps([registry.available_names(), sorted(sys.modules)]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    available, modules = json.loads(proc.stdout)
    assert "organ segmentation 3d" in available and "retrieval" in available
    assert [m for m in HEAVY_MODULES if m in modules] == []


def test_tools_run_organ3d_writes_summary_seg_and_sr(setup: dict[str, Path]) -> None:
    out = setup["root"] / "out-organ"
    proc = _cli("tools", "run", "organ segmentation 3d", "--series", str(setup["series"]),
                "--params", '{"image": "<imagepath>"}', "--config", str(setup["config"]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["labels"] == ["liver"] and summary["segments"][0]["shape"] == [16, 40, 40]
    assert summary["segments"][0]["measurements"][0]["unit"]["value"] == "mL"
    assert sorted(json.loads(proc.stdout.strip().splitlines()[-1])["files"]) == ["seg.dcm", "sr.dcm", "summary.json"]
    seg = hd.seg.segread(out / "seg.dcm")
    assert seg.get_segment_description(1).segment_label == "liver"
    # The SEG frames, read back per source instance, must cover the phantom organ.
    from image_model.loader import load_series

    volume = load_series(setup["series"])
    uids = [str(ds.SOPInstanceUID) for ds in volume.datasets]
    mask = seg.get_pixels_by_source_instance(uids, segment_numbers=[1], ignore_spatial_locations=True)[..., 0] > 0
    # Ground truth per source instance: the phantom's slice k is the instance with InstanceNumber k+1.
    organ = np.load(setup["organ"])
    truth = organ[[int(ds.InstanceNumber) - 1 for ds in volume.datasets]]
    assert mask.shape == organ.shape and dice(mask, truth) > 0.85
    sr = hd.sr.srread(out / "sr.dcm")
    assert sr.SOPClassUID == COMPREHENSIVE_3D_SR and sr.Modality == "SR"
    assert dciodvfy_errors(out / "seg.dcm") == [] and dciodvfy_errors(out / "sr.dcm") == []


def test_tools_run_gives_each_tool_and_parameters_its_own_uids(setup: dict[str, Path]) -> None:
    """Two tools, or one tool with other parameters, on one image never share an SR or SEG UID
    (a PACS keeps the first object of a UID and drops the next); the same request gives the same
    UIDs again (a re-run replaces)."""

    def run(name: str, params: dict[str, object], out: str) -> dict[str, tuple[str, str]]:
        folder = setup["root"] / out
        proc = _cli("tools", "run", name, "--series", str(setup["series"]), "--params", json.dumps(params),
                    "--config", str(setup["config"]), "--out", str(folder))
        assert proc.returncode == 0, proc.stderr
        return {p.name: (str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))
                for p in sorted(folder.glob("*.dcm")) for ds in [pydicom.dcmread(p, stop_before_pixels=True)]}

    first = run("metadata classification", {}, "uid-meta-1")
    again = run("metadata classification", {}, "uid-meta-2")
    other_params = run("metadata classification", {"labels": ["abdomen CT", "chest CT"]}, "uid-meta-3")
    other_tool = run("organ segmentation 3d", {"labels": ["liver"]}, "uid-organ")
    assert list(first) == ["sr.dcm"] and sorted(other_tool) == ["seg.dcm", "sr.dcm"]
    assert again == first
    uids = [uid for result in (first, other_params, other_tool) for pair in result.values() for uid in pair]
    assert len(set(uids)) == len(uids) == 8


def test_tools_run_retrieval_without_dicom(setup: dict[str, Path]) -> None:
    out = setup["root"] / "out-rag"
    proc = _cli("tools", "run", "retrieval", "--series", str(setup["series"]), "--config", str(setup["config"]),
                "--params", '{"query": "benign fluid filled hepatic lesions"}', "--out", str(out), "--no-dicom")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["summary"]["passages"][0]["section"] == "Liver > Cysts"
    assert "[1] liver.md § Liver > Cysts" in summary["text"]
    assert sorted(p.name for p in out.iterdir()) == ["summary.json"]


def test_tools_run_errors(setup: dict[str, Path]) -> None:
    bad = _cli("tools", "run", "retrieval", "--series", str(setup["series"]), "--config", str(setup["config"]),
               "--params", '{"top_k": 2}')
    assert bad.returncode == 2 and "query" in bad.stderr
    off = _cli("tools", "run", "BiomedClip", "--series", str(setup["series"]), "--config", str(setup["config"]))
    assert off.returncode == 2 and "not available" in off.stderr and "no-such-clip" in off.stderr
