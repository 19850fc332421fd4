"""Targets, sides and yes/no answers end to end: instruction -> planner -> real tools (the HU lung
tool, tiny random-weight Grounding DINO, SAM, CLIP and MONAI networks) -> SEG and SR read back."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import jsonschema
import numpy as np
import pydicom
import pytest
import torch
from monai.networks.nets import UNet
from pydicom.data import get_testdata_file

from agent.loop import run_agent
from agent.planners.rules import RulesPlanner
from config.schema import OutputConfig
from image_model.codes import concept
from image_model.findings import Box, Segment
from image_model.loader import load_series
from image_model.volume import Volume
from sr_templates.outputs import build_outputs
from testkit.model_files import ct_phantom, write_tiny_clip
from testkit.phantoms import write_ct_phantom
from testkit.tiny_models import (
    one_torch_thread,
    tiny_grounding_settings,
    tiny_sam_settings,
    write_tiny_grounding_dino,
    write_tiny_sam,
)
from tests.agent_helpers import phantom_volume, registry_of
from tests.dicom_validate import dciodvfy_errors
from tools.classify import BiomedClip
from tools.ct_lung import CTLungSegmentation
from tools.grounding import GroundingDinoTool
from tools.medsam import MedSAMTool
from tools.organ3d import OrganSegmentation3D
from tools.targets import select_boxes, select_segments

CFG = OutputConfig()


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def _segment(label: str, side: str | None = None) -> Segment:
    return Segment(label, concept("anatomical_structure"), concept("organ"), np.zeros((1, 2, 2), bool),
                   laterality=concept(side) if side else None)


def test_segments_are_selected_by_name_side_and_exclusion() -> None:
    segments = [_segment("Left lung", "left"), _segment("Right lung", "right"), _segment("kidney_left"),
                _segment("kidney_right"), _segment("liver"), _segment("spleen")]
    names = lambda found: [s.label for s in found[0]]
    assert names(select_segments(segments, ["left lung"])) == ["Left lung"]
    assert names(select_segments(segments, ["lungs"])) == ["Left lung", "Right lung"]
    assert names(select_segments(segments, ["right kidney", "liver"])) == ["kidney_right", "liver"]
    assert names(select_segments(segments, None, ["liver", "lung"])) == ["kidney_left", "kidney_right", "spleen"]
    # A side the segment does not state never matches: a wrong side is worse than none.
    kept, missing = select_segments([_segment("kidney")], ["left kidney"])
    assert kept == [] and missing == ["left kidney"]


def test_boxes_are_kept_on_the_asked_side_of_the_patient(tmp_path: Path) -> None:
    write_ct_phantom(tmp_path / "ct", slices=3, rows=32, cols=32)
    ct = load_series(tmp_path / "ct")  # axial: columns run towards the patient's left
    cr = load_series(Path(str(get_testdata_file("RG1_UNCI.dcm"))))  # PatientOrientation L\F
    left, right = Box("pleural effusion", 0.9, (0.6, 0.5, 0.9, 0.8)), Box("pleural effusion", 0.9, (0.1, 0.5, 0.4, 0.8))
    other = Box("nodule", 0.9, (0.1, 0.1, 0.2, 0.2))
    for volume in (ct, cr):
        assert select_boxes([left, right, other], ["left pleural effusion"], volume) == ([left, other], [])
        assert select_boxes([left, right], ["right pleural effusion"], volume) == ([right], [])
    cr.datasets[0].PatientOrientation = None
    kept, notes = select_boxes([left, right], ["left pleural effusion"], cr)
    assert kept == [left, right] and "orientation is not known" in notes[0]


def test_left_lung_only_gives_one_segment_and_one_sr_group(tmp_path: Path) -> None:
    volume, truth = phantom_volume(tmp_path / "ct")
    result = run_agent("Segment the left lung only.", volume, registry_of(CTLungSegmentation), RulesPlanner())
    assert result.conversation.messages[1].turn.actions[0].api_params["targets"] == ["left lung"]  # type: ignore[union-attr]
    (output,) = result.outputs
    assert [s.label for s in output.segments] == ["Left lung"]
    assert "right_lung_ml" not in output.summary and "total_lung_ml" not in output.summary
    assert "left lung" in result.answer and "right lung" not in result.answer
    seg, sr = build_outputs(volume, result.outputs, result.answer, CFG, "Segment the left lung only.", "rules")
    seg.save_as(tmp_path / "seg.dcm")
    sr.save_as(tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "seg.dcm") == [] and dciodvfy_errors(tmp_path / "sr.dcm") == []
    assert len(hd.seg.segread(tmp_path / "seg.dcm").get_segment_numbers()) == 1
    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    # The left lung and nothing else (the lung tool's in-plane opening may drop a corner voxel of
    # an end slice: Dice, not voxel identity).
    mask = output.segments[0].mask
    assert not (mask & ~truth.left_mask).any()
    assert 2 * (mask & truth.left_mask).sum() / (mask.sum() + truth.left_mask.sum()) > 0.995


def test_an_organ_list_and_exclusions_limit_the_3d_tool(tmp_path: Path) -> None:
    torch.manual_seed(1)
    kwargs = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": [4, 8], "strides": [2], "num_res_units": 0}
    net = UNet(**kwargs)
    with torch.no_grad():  # both organ channels win somewhere
        net.model[-1].conv.bias.copy_(torch.tensor([0.0, 0.05, 0.05]))  # type: ignore[index,union-attr]
    torch.save({"state_dict": net.state_dict()}, tmp_path / "unet.pt")
    tool = OrganSegmentation3D({
        "architecture": "UNet", "network_kwargs": kwargs, "weights": str(tmp_path / "unet.pt"),
        "labels": [{"index": 1, "name": "liver"}, {"index": 2, "name": "spleen"}],
        "spacing": [2.0, 2.0, 4.0], "roi_size": [16, 16, 8], "device": "cpu",
    })
    volume = ct_phantom(shape=(10, 32, 32), spacing=(4.0, 1.5, 1.5)).volume
    everything = {s.label for s in tool.run(volume, {}).segments}
    assert everything == {"liver", "spleen"}
    only = tool.run(volume, {"targets": ["spleen"]})
    assert [s.label for s in only.segments] == ["spleen"] and list(only.summary["volumes_ml"]) == ["spleen"]
    assert [s.label for s in tool.run(volume, {"exclude": ["spleen"]}).segments] == ["liver"]
    jsonschema.validate({"targets": ["left kidney"], "exclude": ["liver"]}, OrganSegmentation3D.params_schema)


def test_a_yes_no_question_gets_an_explicit_answer_in_the_sr(tmp_path: Path) -> None:
    clip = write_tiny_clip(tmp_path / "clip")
    cr = load_series(Path(str(get_testdata_file("RG1_UNCI.dcm"))))

    class TinyClip(BiomedClip):
        def __init__(self, settings: dict | None = None) -> None:
            super().__init__({"model_path": str(clip), "device": "cpu"})

    question = "Does this patient have pneumonia?"
    result = run_agent(question, cr, registry_of(TinyClip), RulesPlanner())
    plan = result.conversation.messages[1].turn
    assert plan is not None and plan.actions[0].api_params["labels"] == ["chest X-ray with pneumonia", "normal chest X-ray"]
    assert result.answer.split(" - ")[0] in {"Yes/no (pneumonia): yes", "Yes/no (pneumonia): no", "Yes/no (pneumonia): uncertain"}
    assert "BiomedClip gives pneumonia" in result.answer
    (sr,) = build_outputs(cr, result.outputs, result.answer, CFG, question, "rules")
    sr.save_as(tmp_path / "sr.dcm")
    assert dciodvfy_errors(tmp_path / "sr.dcm") == []
    texts = list(_text_values(pydicom.dcmread(tmp_path / "sr.dcm")))
    assert any(t.startswith("Yes/no (pneumonia): ") for t in texts), texts


def _text_values(item: Any) -> Iterator[str]:
    """Every TEXT content item's value anywhere in an SR's content tree."""
    for child in item.get("ContentSequence", []):
        if child.get("ValueType") == "TEXT":
            yield str(child.TextValue)
        yield from _text_values(child)


def test_grounding_boxes_are_segmented_by_medsam_in_the_next_turn(tmp_path: Path) -> None:
    gd = write_tiny_grounding_dino(tmp_path / "gdino")
    sam = write_tiny_sam(tmp_path / "sam.pth")
    write_ct_phantom(tmp_path / "ct", slices=4, rows=40, cols=48, noise_hu=0.0)
    volume: Volume = load_series(tmp_path / "ct")

    class TinyGrounding(GroundingDinoTool):
        def __init__(self, settings: dict | None = None) -> None:
            super().__init__(tiny_grounding_settings(gd, box_threshold=0.0, text_threshold=0.0, max_detections=2))

    class TinySam(MedSAMTool):
        def __init__(self, settings: dict | None = None) -> None:
            super().__init__(tiny_sam_settings(sam))

    result = run_agent("Outline the nodule.", volume, registry_of(TinyGrounding, TinySam), RulesPlanner())
    turns = [m.turn for m in result.conversation.messages if m.turn is not None]
    assert [t.api_names for t in turns] == [["grounding dino"], ["MedSAM"], []]
    grounding, medsam = result.outputs
    params = turns[1].actions[0].api_params
    assert params["boxes"] == [list(b) for b in grounding.summary["boxes"]]
    assert params["box_slices"] == grounding.summary["slices"] and set(params["labels"]) == {"nodule"}
    # One segment per label, each slice's mask from that slice's boxes only.
    assert [s.label for s in medsam.segments] in ([], ["nodule"])
    for segment in medsam.segments:
        assert {z for z in range(volume.shape[0]) if segment.mask[z].any()} <= set(params["box_slices"])
