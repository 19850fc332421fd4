"""Every model tool carries its own confidence, and the SR marks what the node is unsure of.

Tiny random-weight checkpoints in the real formats, loaded by the tools' own loaders: MedSAM's
predicted IoU (recomputed here from the checkpoint's mask decoder), organ3d's mean softmax per
label (recomputed from the network), Grounding DINO's detection scores, BiomedCLIP's softmax
probabilities and the metadata classifier's header evidence. Each becomes a
:class:`image_model.findings.Confidence`; results below their threshold are written to the SR as
"uncertain" next to the result, not stated flatly.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch

from config.schema import OutputConfig
from image_model.findings import Confidence, ToolOutput, caveats
from image_model.loader import load_series
from image_model.volume import Volume
from sr_templates.outputs import build_outputs
from testkit.model_files import TINY_SEGRESNET, ct_phantom, write_bundle, write_tiny_clip
from testkit.phantoms import write_ct_phantom
from testkit.tiny_models import (
    one_torch_thread,
    tiny_grounding_settings,
    tiny_sam_settings,
    write_tiny_grounding_dino,
    write_tiny_sam,
)
from tests.dicom_validate import dciodvfy_errors
from tools.classify import BiomedClip, MetadataClassification
from tools.grounding import GroundingDinoTool
from tools.medsam import MedSAMTool, Prompt
from tools.organ3d import OrganSegmentation3D

CFG = OutputConfig(seg_series_number=81, sr_series_number=82, manufacturer="test", pipeline_version="0.0")
BOX = [0.2, 0.25, 0.7, 0.75]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("ct")
    write_ct_phantom(folder, slices=5, rows=40, cols=48, noise_hu=0.0)
    return load_series(folder)


def sr_texts(volume: Volume, output: ToolOutput, folder: Path) -> list[str]:
    """The report's TEXT values, after dciodvfy accepted it."""
    datasets = build_outputs(volume, [output], "Answer.", CFG, "Question.", "rules")
    path = folder / "sr.dcm"
    datasets[-1].save_as(path)
    assert dciodvfy_errors(path) == []
    texts: list[str] = []

    def walk(item: object) -> None:
        for child in getattr(item, "ContentSequence", []):
            if getattr(child, "ValueType", "") == "TEXT":
                texts.append(str(child.TextValue))
            walk(child)

    walk(hd.sr.srread(path))
    return texts


def test_confidence_words() -> None:
    sure, unsure = Confidence("predicted IoU", 0.91, 0.7), Confidence("predicted IoU", 0.42, 0.7)
    assert not sure.uncertain and sure.describe() == "predicted IoU 0.91"
    assert unsure.uncertain and unsure.describe() == "uncertain: predicted IoU 0.42, below 0.70"
    assert Confidence("x", float("nan"), 0.5).uncertain


def test_medsam_carries_its_predicted_iou(tmp_path: Path, ct: Volume) -> None:
    sam_path = write_tiny_sam(tmp_path / "sam.pth")
    tool = MedSAMTool(tiny_sam_settings(sam_path, uncertain_below_iou=1.0))
    out = tool.run(ct, {"boxes": [BOX], "labels": ["liver"], "slices": [1, 2, 3]})
    (segment,) = out.segments
    assert segment.confidence is not None and segment.confidence.measure == "predicted IoU"
    # The same number from the checkpoint itself: the decoder's IoU head on those slices.
    masks, ious = tool.segment_slices_scored(ct, [(i, Prompt(box=tuple(BOX))) for i in (1, 2, 3)])  # type: ignore[arg-type]
    expected = np.clip(np.mean([iou for mask, iou in zip(masks, ious) if mask.any()]), 0.0, 1.0)
    assert segment.confidence.value == pytest.approx(expected)
    assert segment.confidence.uncertain  # threshold 1.0: nothing predicted is that sure
    assert out.summary["segments"][0]["confidence"].startswith("uncertain: predicted IoU")
    assert any(t.startswith("uncertain: predicted IoU") for t in sr_texts(ct, out, tmp_path))
    lenient = MedSAMTool(tiny_sam_settings(sam_path, uncertain_below_iou=0.0)).run(ct, {"boxes": [BOX]})
    assert lenient.segments[0].confidence is not None and not lenient.segments[0].confidence.uncertain


def test_organ3d_carries_its_mean_softmax(tmp_path: Path) -> None:
    torch.manual_seed(0)
    from monai.networks.nets import SegResNet

    kwargs = {k: v for k, v in TINY_SEGRESNET.items() if k != "_target_"}
    net = SegResNet(**kwargs)
    bundle = write_bundle(
        tmp_path / "bundle", TINY_SEGRESNET, net.state_dict(), {"0": "background", "1": "liver", "2": "spleen"},
        pixdim=[2.0, 2.0, 3.0], window=(-200.0, 300.0), roi_size=[16, 16, 16],
    )
    phantom = ct_phantom(shape=(14, 36, 30), spacing=(3.0, 1.2, 1.2))
    tool = OrganSegmentation3D({"bundle_dir": str(bundle), "device": "cpu", "uncertain_below": 0.99})
    out = tool.run(phantom.volume, {})
    assert out.segments
    for segment in out.segments:
        confidence = segment.confidence
        assert confidence is not None and confidence.measure == "mean softmax probability"
        assert 0.0 < confidence.value <= 1.0
        assert confidence.uncertain  # random weights are never 99% sure
    assert out.summary["uncertain"] == [s.label for s in out.segments]
    assert "label_confidence" not in out.algorithm.parameters
    # Recomputed from the network: its softmax on the network grid, averaged per winning label.
    from monai.inferers import sliding_window_inference

    from tools.network_grid import plan_mapping, to_network_grid

    loaded, used = tool._loaded, out.algorithm.parameters
    assert loaded is not None
    mapping = plan_mapping(phantom.volume, used["axcodes"], (2.0, 2.0, 3.0))
    image = ((to_network_grid(phantom.volume.pixels, mapping) + 200.0) / 500.0).clamp(0.0, 1.0)
    with torch.inference_mode():
        logits = sliding_window_inference(
            image, (16, 16, 16), 1, loaded.network, overlap=float(used["overlap"]), mode="gaussian"
        )
    assert isinstance(logits, torch.Tensor)
    probability, winner = torch.softmax(logits[0], dim=0).max(dim=0)
    for segment in out.segments:
        index = {"liver": 1, "spleen": 2}[segment.label]
        assert segment.confidence is not None
        assert segment.confidence.value == pytest.approx(float(probability[winner == index].mean()), rel=1e-4)
    assert any(t.startswith("uncertain: mean softmax probability") for t in sr_texts(phantom.volume, out, tmp_path))


def test_grounding_boxes_carry_their_score(tmp_path: Path, ct: Volume) -> None:
    folder = write_tiny_grounding_dino(tmp_path / "gd")
    tool = GroundingDinoTool(tiny_grounding_settings(folder, box_threshold=0.0, text_threshold=0.0, max_detections=5))
    out = tool.run(ct, {"prompts": ["lung", "tumor"], "slices": [2]})
    assert out.boxes
    assert set(out.summary) <= {"boxes", "logits", "phrases", "slices", "total_boxes"}  # MMedAgent's keys
    for box in out.boxes:
        assert box.confidence == Confidence("detection score", box.score, 0.5)
    strict = GroundingDinoTool(tiny_grounding_settings(
        folder, box_threshold=0.0, text_threshold=0.0, max_detections=5, uncertain_below=1.0
    )).run(ct, {"prompts": ["lung", "tumor"], "slices": [2]})
    texts = sr_texts(ct, strict, tmp_path)
    for box in strict.boxes:
        assert box.confidence is not None and box.confidence.uncertain is (box.score < 1.0)
        marker = ", uncertain" if box.confidence.uncertain else ""
        # The box's summary Comment: "lung (score 0.42, uncertain): Area ... mm2".
        assert any(t.startswith(f"{box.label} (score {box.score:.2f}{marker})") for t in texts), texts
        if box.confidence.uncertain:
            assert f"uncertain: detection score {box.score:.2f}, below 1.00" in texts


def test_classifiers_carry_probabilities(tmp_path: Path, ct: Volume) -> None:
    clip = write_tiny_clip(tmp_path / "clip")
    out = BiomedClip({"model_path": str(clip), "device": "cpu"}).run(ct, {})
    for label in out.labels:
        assert label.confidence == Confidence("softmax probability", label.score, 0.5)
    # Random weights spread the probability over 14 labels: the best one is far from sure.
    assert out.labels[0].score < 0.5 and out.text is not None and "uncertain" in out.text
    texts = sr_texts(ct, out, tmp_path)
    assert f"{out.labels[0].label} (score {out.labels[0].score:.2f}, uncertain)" in texts

    header = MetadataClassification({}).run(ct, {})
    best = header.labels[0]
    assert best.confidence is not None and best.confidence.measure == "header evidence"
    assert best.confidence.uncertain is (best.score < 0.75)


def test_caveats_of_a_result_without_confidence_are_empty(tmp_path: Path) -> None:
    from tools.ct_lung import CTLungSegmentation

    write_ct_phantom(tmp_path, slices=24, slice_spacing=10.0)
    out = CTLungSegmentation().run(load_series(tmp_path), {})
    assert all(caveats(s) == [] for s in out.segments)  # whole lungs, no model: nothing to say
