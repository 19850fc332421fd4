"""``grounding dino`` end to end: a tiny random-weight Grounding DINO written by the test in the real
``save_pretrained`` format, loaded through the tool's loader, run on real DICOM (a CR with
MONOCHROME1, a CT phantom series) loaded by the node's loader."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import jsonschema
import numpy as np
import pydantic
import pytest
import torch
from pydicom.data import get_testdata_file

from config.schema import OutputConfig
from image_model.loader import load_series
from image_model.volume import Volume
from sr_templates.outputs import build_outputs
from testkit.phantoms import write_ct_phantom
from testkit.tiny_models import (
    one_torch_thread,
    tiny_grounding_settings,
    write_tiny_grounding_dino,
)
from tests.dicom_validate import dciodvfy_errors
from tools.base import ToolRefused
from tools.device import model_path_availability
from tools.grounding import (
    GroundingDinoTool,
    GroundingSettings,
    caption_and_spans,
    clean_prompts,
    select_detections,
    token_spans,
)
from tools.imaging import (
    check_normalised,
    slice_to_gray,
    to_normalised,
    to_pixels,
    volume_to_rgb,
)
from tools.registry import TOOL_MODULES, ParamsInvalid, ToolRegistry

PROMPTS = ["lung", "left kidney", "tumor"]
#: Random weights score every query; a zero threshold keeps them all so NMS and caps are exercised.
OPEN = {"box_threshold": 0.0, "text_threshold": 0.0}


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def gd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_grounding_dino(tmp_path_factory.mktemp("gdino") / "model")


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("ct")
    write_ct_phantom(folder, slices=5, rows=48, cols=64, noise_hu=0.0)
    return load_series(folder)


@pytest.fixture(scope="module")
def cr() -> Volume:
    return load_series(Path(str(get_testdata_file("RG1_UNCI.dcm"))))


def _tool(folder: Path, **extra: object) -> GroundingDinoTool:
    return GroundingDinoTool(tiny_grounding_settings(folder, **extra))


def test_2d_cr_gives_mmedagent_summary_and_normalised_boxes(gd_folder: Path, cr: Volume) -> None:
    tool = _tool(gd_folder, max_detections=7, **OPEN)
    assert tool.availability().available
    out = tool.run(cr, {"image": "<imagepath>", "prompts": PROMPTS})
    assert set(out.summary) == {"boxes", "logits", "phrases"}  # exactly MMedAgent's keys for 2D
    assert 0 < len(out.boxes) <= 7
    assert len(out.summary["boxes"]) == len(out.summary["logits"]) == len(out.summary["phrases"]) == len(out.boxes)
    assert out.summary["logits"] == sorted(out.summary["logits"], reverse=True)
    for box in out.boxes:
        x0, y0, x1, y1 = box.box
        assert 0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0
        assert box.slice_index is None and box.label in PROMPTS and 0.0 <= box.score <= 1.0
    assert out.algorithm.name == "Grounding DINO" and out.algorithm.parameters["nms_iou"] == "0.8"


def test_thresholds_filter_and_param_overrides(gd_folder: Path, ct: Volume) -> None:
    tool = _tool(gd_folder, max_detections=1000, **OPEN)
    everything = tool.run(ct, {"prompts": PROMPTS})
    strict = tool.run(ct, {"prompts": PROMPTS, "box_threshold": 0.9})
    nothing = tool.run(ct, {"prompts": PROMPTS, "box_threshold": 1.0})
    assert len(nothing.boxes) == 0
    assert len(strict.boxes) < len(everything.boxes)
    assert all(b.score > 0.9 for b in strict.boxes)
    # The defaults are MMedAgent's.
    defaults = GroundingSettings()
    assert (defaults.box_threshold, defaults.text_threshold, defaults.nms_iou) == (0.3, 0.25, 0.8)


def test_volume_is_batched_per_slice_and_batching_changes_nothing(gd_folder: Path, ct: Volume) -> None:
    batched = _tool(gd_folder, batch_size=3, **OPEN).run(ct, {"prompts": PROMPTS})
    single = _tool(gd_folder, batch_size=1, **OPEN).run(ct, {"prompts": PROMPTS})
    assert {b.slice_index for b in batched.boxes} == set(range(ct.shape[0]))
    # The planner sees the best boxes only (its context is small), with the total found.
    summary = batched.summary
    assert len(summary["boxes"]) == 30 < len(batched.boxes) == summary["total_boxes"]
    best = sorted(batched.boxes, key=lambda b: -b.score)
    assert summary["logits"] == [round(b.score, 4) for b in best[:30]]
    assert min(summary["logits"]) >= round(best[30].score, 4)
    assert set(summary["slices"]) <= set(range(ct.shape[0]))
    assert [(b.slice_index, b.label) for b in batched.boxes] == [(b.slice_index, b.label) for b in single.boxes]
    np.testing.assert_allclose([b.box for b in batched.boxes], [b.box for b in single.boxes], atol=1e-5)
    np.testing.assert_allclose([b.score for b in batched.boxes], [b.score for b in single.boxes], atol=1e-5)

    chosen = _tool(gd_folder, **OPEN).run(ct, {"prompts": PROMPTS, "slices": [3, 1]})
    assert {b.slice_index for b in chosen.boxes} == {1, 3}
    with pytest.raises(ToolRefused, match="outside the volume"):
        _tool(gd_folder, **OPEN).run(ct, {"prompts": PROMPTS, "slices": [ct.shape[0]]})


def test_nms_drops_duplicates_and_keeps_the_best() -> None:
    prompts = ["lung", "tumor"]
    caption, spans = caption_and_spans(prompts)
    assert caption == "lung. tumor."
    # [CLS] lung . tumor . [SEP]: token 1 is "lung", token 3 "tumor".
    offsets = [(0, 0), (0, 4), (4, 5), (6, 11), (11, 12), (0, 0)]
    tokens = token_spans(offsets, spans)
    assert tokens == [[1], [3]]
    probs = torch.zeros(4, 32)
    probs[0, 1], probs[1, 1], probs[2, 3], probs[3, 3] = 0.9, 0.8, 0.7, 0.2
    boxes = torch.tensor(
        [
            [0.30, 0.30, 0.20, 0.20],  # cx, cy, w, h -> (0.2, 0.2, 0.4, 0.4)
            [0.301, 0.301, 0.20, 0.20],  # a near-duplicate of the first (IoU ~0.98)
            [0.70, 0.70, 0.20, 0.20],
            [0.50, 0.50, 0.10, 0.10],  # below the box threshold
        ]
    )
    kept = select_detections(probs, boxes, tokens, prompts, GroundingSettings())
    assert [d.phrase for d in kept] == ["lung", "tumor"]
    assert kept[0].score == pytest.approx(0.9)  # the better of the duplicates survives
    np.testing.assert_allclose(kept[0].box, (0.2, 0.2, 0.4, 0.4), atol=1e-6)
    loose = select_detections(probs, boxes, tokens, prompts, GroundingSettings(nms_iou=0.99))
    assert len(loose) == 3


def test_phrase_is_the_prompt_whose_tokens_score_highest(gd_folder: Path) -> None:
    from transformers import AutoProcessor

    prompts = clean_prompts(["Left Kidney.", "lung", "lung"])
    assert prompts == ["left kidney", "lung"]
    caption, spans = caption_and_spans(prompts)
    tokenizer = AutoProcessor.from_pretrained(str(gd_folder), local_files_only=True).tokenizer
    encoded = tokenizer(caption, return_offsets_mapping=True)
    tokens = token_spans(encoded["offset_mapping"], spans)
    words = [tokenizer.convert_ids_to_tokens([encoded["input_ids"][i] for i in t]) for t in tokens]
    assert words == [["left", "kidney"], ["lung"]]
    probs = torch.zeros(1, 32)
    probs[0, tokens[0][1]] = 0.95  # "kidney" fires
    found = select_detections(probs, torch.tensor([[0.5, 0.5, 0.2, 0.2]]), tokens, prompts, GroundingSettings())
    assert [d.phrase for d in found] == ["left kidney"]


def test_box_mapping_round_trips_on_a_non_square_image() -> None:
    rows, cols = 48, 64
    box = check_normalised([0.25, 0.5, 0.75, 1.0])
    pixels = to_pixels(box, rows, cols)
    assert pixels == (16.0, 24.0, 48.0, 48.0)
    assert to_normalised(pixels, rows, cols) == box
    assert to_normalised((-3, 0, 70, 10), rows, cols)[0::2] == (0.0, 1.0)  # clipped to the image
    for bad in ([0.5, 0.5, 0.4, 0.9], [0, 0, 1.2, 1], [0, 0, 1]):
        with pytest.raises(ValueError):
            check_normalised(bad)


def test_windowing_and_monochrome1(ct: Volume, cr: Volume) -> None:
    ramp = np.linspace(-1000, 1000, 64, dtype=np.float32)[None, :].repeat(4, axis=0)
    from tools.imaging import Window

    gray = slice_to_gray(ramp, Window(40, 400), invert=False)
    assert gray[0, 0] == 0 and gray[0, -1] == 255 and np.all(np.diff(gray[0].astype(int)) >= 0)
    assert np.all(slice_to_gray(ramp, Window(40, 400), invert=True) == 255 - gray)
    rgb = volume_to_rgb(ct, [0, 2])
    assert rgb.shape == (2, *ct.shape[1:], 3) and rgb.dtype == np.uint8
    assert np.all(rgb[..., 0] == rgb[..., 2])
    # The CR is MONOCHROME1: high stored values (dense bone, collimated edges) must come out dark.
    image = volume_to_rgb(cr)[0, ..., 0].astype(float)
    high = cr.pixels[0] > np.percentile(cr.pixels[0], 90)
    low = cr.pixels[0] < np.percentile(cr.pixels[0], 10)
    assert image[high].mean() < image[low].mean()


def test_availability_settings_and_params_schema(gd_folder: Path, tmp_path: Path) -> None:
    assert GroundingDinoTool().availability().reason == "no model_path configured"
    missing = GroundingDinoTool({"model_path": str(tmp_path / "nope")}).availability()
    assert not missing.available and "does not exist" in missing.reason
    assert model_path_availability(gd_folder).available
    with pytest.raises(pydantic.ValidationError):
        GroundingDinoTool({"model_path": str(gd_folder), "box_treshold": 0.2})  # typo is caught
    # Only this area's classes: the full registry imports every helper's tool module.
    assert "tools.grounding" in TOOL_MODULES
    registry = ToolRegistry(
        {"grounding dino": tiny_grounding_settings(gd_folder)}, classes={"grounding dino": GroundingDinoTool}
    )
    assert "grounding dino" in registry.available_names()
    statuses = {s.name: s for s in registry.statuses()}
    assert statuses["grounding dino"].queue == "gpu"
    registry.validate_params("grounding dino", {"image": "<imagepath>", "prompts": ["tumor"]})
    bads: list[dict[str, object]] = [
        {"image": "x"}, {"prompts": []}, {"prompts": ["a"], "box_threshold": 2}, {"prompts": ["a"], "x": 1}
    ]
    for bad in bads:
        with pytest.raises(ParamsInvalid):
            registry.validate_params("grounding dino", bad)
    jsonschema.Draft202012Validator.check_schema(GroundingDinoTool.params_schema)


def test_boxes_encode_to_a_valid_sr(gd_folder: Path, ct: Volume, tmp_path: Path) -> None:
    out = _tool(gd_folder, max_detections=2, **OPEN).run(ct, {"prompts": ["lung"]})
    assert out.boxes
    cfg = OutputConfig(seg_series_number=91, sr_series_number=92, manufacturer="test", pipeline_version="0.0")
    datasets = build_outputs(ct, [out], "Boxes found.", cfg, "Locate the lungs.", "rules")
    assert len(datasets) == 1  # no masks -> SR only
    path = tmp_path / "sr.dcm"
    datasets[0].save_as(path)
    assert dciodvfy_errors(path) == []
