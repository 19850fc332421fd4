"""organ segmentation 3d through its two real loaders (MONAI bundle folder; architecture + weights)
with tiny random-weight networks, plus settings validation and refusals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.networks.nets import SegResNet, UNet
from safetensors.torch import save_file

from image_model.measure import mask_volume_ml
from image_model.volume import Volume
from testkit.model_files import TINY_SEGRESNET, ct_phantom, write_bundle
from tools.base import ToolRefused
from tools.organ3d import OrganSegmentation3D
from tools.registry import ToolRegistry

UNET_KWARGS = {
    "spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0,
}


def _segresnet_bundle(folder: Path) -> Path:
    torch.manual_seed(0)
    kwargs = {k: v for k, v in TINY_SEGRESNET.items() if k != "_target_"}
    net = SegResNet(**kwargs)
    # Bias the last layer so that some voxels go to each organ channel with random weights.
    return write_bundle(
        folder, TINY_SEGRESNET, net.state_dict(), {"0": "background", "1": "liver", "2": "spleen"},
        pixdim=[2.0, 2.0, 3.0], window=(-200.0, 300.0), roi_size=[16, 16, 16],
    )


def _check_segments(out, volume: Volume) -> None:  # type: ignore[no-untyped-def]
    shape = volume.shape
    union = np.zeros(shape, dtype=np.int32)
    for seg in out.segments:
        assert seg.mask.shape == shape and seg.mask.dtype == bool and seg.mask.any()
        union += seg.mask
        (vol_m,) = seg.measurements
        assert vol_m.name.meaning == "Volume" and vol_m.unit.value == "mL"
        assert vol_m.value == pytest.approx(mask_volume_ml(seg.mask, volume), rel=1e-3)
        assert out.summary["volumes_ml"][seg.label] == pytest.approx(vol_m.value, abs=0.01)
    assert union.max() <= 1, "segments from one label map never overlap"


def test_bundle_folder_with_random_weights(tmp_path: Path) -> None:
    bundle = _segresnet_bundle(tmp_path / "bundle")
    phantom = ct_phantom(shape=(14, 36, 30), spacing=(3.0, 1.2, 1.2))
    tool = OrganSegmentation3D({"bundle_dir": str(bundle), "device": "cpu", "overlap": 0.5})
    out = tool.run(phantom.volume, {})
    assert out.api_name == "organ segmentation 3d"
    assert out.algorithm.name == "tiny test bundle" and out.algorithm.version == "0.0.1"
    assert out.algorithm.family.meaning == "Artificial Intelligence"
    assert out.algorithm.parameters["roi_size"] == "[16, 16, 16]"
    assert out.algorithm.parameters["overlap"] == "0.5"  # settings win over the bundle's 0.25
    names = {s.label for s in out.segments} | set(out.summary["not_found"])
    assert names == {"liver", "spleen"}
    _check_segments(out, phantom.volume)
    # Loaded once per tool instance: a second run reuses the same module.
    net = tool._loaded.network  # type: ignore[union-attr]
    tool.run(phantom.volume, {"labels": ["liver"]})
    assert tool._loaded.network is net  # type: ignore[union-attr]
    assert not net.training


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_architecture_and_weights(tmp_path: Path, suffix: str) -> None:
    torch.manual_seed(1)
    net = UNet(**UNET_KWARGS)
    with torch.no_grad():  # make both organ channels win somewhere
        net.model[-1].conv.bias.copy_(torch.tensor([0.0, 0.05, 0.05]))  # type: ignore[index,union-attr]
    weights = tmp_path / f"unet{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": net.state_dict()}, weights)
    else:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    settings = {
        "architecture": "UNet",
        "network_kwargs": UNET_KWARGS,
        "weights": str(weights),
        "labels": [
            {"index": 1, "name": "liver"},
            {"index": 2, "name": "left kidney mass", "code": {"value": "4147007", "meaning": "Mass"},
             "category": {"value": "49755003", "meaning": "Morphologically Abnormal Structure"}},
        ],
        "spacing": [2.0, 2.0, 4.0],
        "roi_size": [16, 16, 8],
        "device": "cpu",
    }
    tool = OrganSegmentation3D(settings)
    assert tool.availability().available, tool.availability().reason
    phantom = ct_phantom(shape=(10, 32, 32), spacing=(4.0, 1.5, 1.5), descending=True)
    out = tool.run(phantom.volume, {})
    _check_segments(out, phantom.volume)
    by_name = {s.label: s for s in out.segments}
    if "liver" in by_name:
        assert by_name["liver"].type.value == "10200004"
    if "left kidney mass" in by_name:
        assert by_name["left kidney mass"].type.meaning == "Mass"
        assert by_name["left kidney mass"].category.value == "49755003"
    assert out.algorithm.name == "MONAI UNet"


def test_unconfigured_and_broken_settings_explain_themselves(tmp_path: Path) -> None:
    assert OrganSegmentation3D(None).availability().reason.startswith("no model configured")
    both = OrganSegmentation3D({"bundle_dir": str(tmp_path), "architecture": "UNet"}).availability()
    assert not both.available and "exactly one" in both.reason
    typo = OrganSegmentation3D({"bundle_dir": str(tmp_path), "roi": [1, 2, 3]}).availability()
    assert not typo.available and "roi" in typo.reason
    missing = OrganSegmentation3D({"bundle_dir": str(tmp_path / "nope")}).availability()
    assert not missing.available and "does not exist" in missing.reason
    no_weights = OrganSegmentation3D(
        {"architecture": "UNet", "weights": str(tmp_path / "w.pt"), "labels": [{"index": 1, "name": "x"}]}
    ).availability()
    assert not no_weights.available and "w.pt" in no_weights.reason
    registry = ToolRegistry(
        {"organ segmentation 3d": {"bundle_dir": str(tmp_path / "nope")}},
        classes={"organ segmentation 3d": OrganSegmentation3D},
    )
    (status,) = [s for s in registry.statuses() if s.name == "organ segmentation 3d"]
    assert not status.available and "organ segmentation 3d" not in registry.available_names()


def test_refuses_single_images_and_other_modalities(tmp_path: Path) -> None:
    tool = OrganSegmentation3D({"bundle_dir": str(_segresnet_bundle(tmp_path / "b")), "device": "cpu"})
    phantom = ct_phantom(shape=(2, 16, 16))
    with pytest.raises(ToolRefused, match="at least 4 slices"):
        tool.run(phantom.volume, {})
    phantom = ct_phantom(shape=(8, 16, 16))
    phantom.volume.modality = "CR"
    with pytest.raises(ToolRefused, match="this series is CR"):
        tool.run(phantom.volume, {})
