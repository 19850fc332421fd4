"""``MedSAM`` and ``grounding dino + MedSAM`` end to end: tiny random-weight checkpoints written by
the test in the real formats (a SAM state dict; a Grounding DINO ``save_pretrained`` folder), loaded
through the tools' loaders, run on a CT phantom series loaded by the node's loader, and encoded to
SEG + SR that dciodvfy accepts and highdicom reads back voxel for voxel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydantic
import pytest
import torch

from config.schema import OutputConfig
from image_model.codes import concept, unit
from image_model.findings import ToolOutput
from image_model.loader import load_series
from image_model.measure import mask_volume_ml
from image_model.volume import Volume
from sr_templates.outputs import build_outputs
from testkit.phantoms import write_ct_phantom
from testkit.tiny_models import (
    TINY_SAM_ENCODER,
    build_tiny_sam,
    one_torch_thread,
    tiny_grounding_settings,
    tiny_sam_settings,
    write_tiny_grounding_dino,
    write_tiny_sam,
)
from tests.dicom_validate import dciodvfy_errors, dciodvfy_own_warnings
from tools.base import ToolRefused
from tools.device import model_dtype, resolve_device
from tools.grounded_sam import GroundedMedSAMTool
from tools.grounding import GroundingDinoTool
from tools.medsam import MedSAMTool, Prompt, SamModel, SamSettings

CFG = OutputConfig(seg_series_number=81, sr_series_number=82, manufacturer="test", pipeline_version="0.0")
BOX = [0.2, 0.25, 0.7, 0.75]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def sam_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_sam(tmp_path_factory.mktemp("sam") / "medsam_tiny.pth")


@pytest.fixture(scope="module")
def gd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_grounding_dino(tmp_path_factory.mktemp("gdino") / "model")


@pytest.fixture(scope="module")
def ct(tmp_path_factory: pytest.TempPathFactory) -> Volume:
    folder = tmp_path_factory.mktemp("ct")
    write_ct_phantom(folder, slices=6, rows=40, cols=48, noise_hu=0.0)
    return load_series(folder)


def _write_and_check(volume: Volume, out: ToolOutput, folder: Path) -> hd.seg.Segmentation:
    datasets = build_outputs(volume, [out], "Segmented.", CFG, "Segment it.", "rules")
    assert len(datasets) == 2, "a non-empty mask must give a SEG"
    seg_path, sr_path = folder / "seg.dcm", folder / "sr.dcm"
    datasets[0].save_as(seg_path)
    datasets[1].save_as(sr_path)
    source = Path(str(volume.datasets[0].filename))
    for path in (seg_path, sr_path):
        assert dciodvfy_errors(path) == []
        assert dciodvfy_own_warnings(path, source) == []
    return hd.seg.segread(seg_path)


def test_box_prompt_gives_a_volume_shaped_mask_that_encodes_to_seg(
    sam_path: Path, ct: Volume, tmp_path: Path
) -> None:
    tool = MedSAMTool(tiny_sam_settings(sam_path))
    assert tool.availability().available and tool.queue == "gpu"
    out = tool.run(ct, {"image": "<imagepath>", "boxes": [BOX], "labels": ["liver"]})
    (segment,) = out.segments
    assert segment.mask.shape == ct.shape and segment.mask.dtype == bool and segment.mask.any()
    assert segment.label == "liver" and segment.type.value == "10200004"  # SCT Liver
    (volume_ml,) = segment.measurements
    assert volume_ml.unit.value == "mL"
    assert volume_ml.value == pytest.approx(mask_volume_ml(segment.mask, ct))
    assert out.summary["segments"][0]["pixels"] == int(segment.mask.sum())

    seg = _write_and_check(ct, out, tmp_path)
    uids = [str(ds.SOPInstanceUID) for ds in ct.datasets]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])
    np.testing.assert_array_equal(pixels[..., 0].astype(bool), segment.mask)
    algorithms = seg.get_segment_description(1).algorithm_identification
    assert algorithms is not None and algorithms[0].AlgorithmName == "MedSAM"


def test_chosen_slices_only_and_batching_changes_nothing(sam_path: Path, ct: Volume) -> None:
    out = MedSAMTool(tiny_sam_settings(sam_path, batch_size=4)).run(ct, {"boxes": [BOX], "slices": [4, 1]})
    mask = out.segments[0].mask
    assert [z for z in range(ct.shape[0]) if mask[z].any()] == [1, 4]
    one = MedSAMTool(tiny_sam_settings(sam_path, batch_size=1)).run(ct, {"boxes": [BOX], "slices": [4, 1]})
    np.testing.assert_array_equal(one.segments[0].mask, mask)
    with pytest.raises(ToolRefused, match="outside the volume"):
        MedSAMTool(tiny_sam_settings(sam_path)).run(ct, {"boxes": [BOX], "slices": [99]})


def test_batched_box_decoding_matches_one_at_a_time_and_points_work(sam_path: Path) -> None:
    model = SamModel(SamSettings.model_validate(tiny_sam_settings(sam_path)))
    assert model.img_size == TINY_SAM_ENCODER["img_size"]
    images = np.random.default_rng(0).integers(0, 255, (3, 30, 50, 3), dtype=np.uint8)
    embeddings = model.embed(images)
    assert embeddings.shape[0] == 3
    np.testing.assert_allclose(embeddings[1:2], model.embed(images[1:2]), atol=1e-5)
    prompts = [Prompt(box=(0.1, 0.1, 0.5, 0.6)), Prompt(box=(0.4, 0.2, 0.9, 0.9)), Prompt(points=((0.5, 0.5),))]
    together = model.decode(embeddings[0], prompts, 30, 50)
    assert together.shape == (3, 30, 50)
    for n, prompt in enumerate(prompts):
        np.testing.assert_array_equal(model.decode(embeddings[0], [prompt], 30, 50)[0], together[n])
    # Images without prompts are never encoded; their mask list is empty.
    per_image = model.segment(images, [[prompts[0]], [], [prompts[1], prompts[2]]])
    assert [m.shape[0] for m in per_image] == [1, 0, 2]
    np.testing.assert_array_equal(per_image[0][0], together[0])


def test_checkpoint_loading_is_strict_and_accepts_nested_state(sam_path: Path, tmp_path: Path) -> None:
    nested = tmp_path / "nested.pth"
    torch.save({"model": torch.load(sam_path, weights_only=True), "epoch": 3}, nested)
    a = SamModel(SamSettings.model_validate(tiny_sam_settings(nested)))
    reference = build_tiny_sam()
    torch.testing.assert_close(a.sam.state_dict(), reference.state_dict())
    other = dict(TINY_SAM_ENCODER, depth=3, global_attn_indexes=[2])
    with pytest.raises(RuntimeError, match="state_dict"):
        SamModel(SamSettings.model_validate({"model_path": str(sam_path), "device": "cpu", "encoder": other}))
    with pytest.raises(pydantic.ValidationError):
        SamSettings.model_validate({"model_path": str(sam_path), "encoder": dict(TINY_SAM_ENCODER, img_size=70)})
    with pytest.raises(pydantic.ValidationError):
        MedSAMTool({"model_path": str(sam_path), "modeltype": "vit_b"})
    assert MedSAMTool().availability().reason == "no model_path configured"
    assert "does not exist" in MedSAMTool({"model_path": str(tmp_path / "x.pth")}).availability().reason
    assert SamSettings().model_type == "vit_b"


def test_prompt_validation(sam_path: Path, ct: Volume) -> None:
    tool = MedSAMTool(tiny_sam_settings(sam_path))
    with pytest.raises(ToolRefused, match="empty"):
        tool.run(ct, {"boxes": [[0.6, 0.2, 0.3, 0.9]]})
    with pytest.raises(ToolRefused, match="point_labels"):
        tool.run(ct, {"points": [[0.5, 0.5]], "point_labels": [1, 0]})
    out = tool.run(ct, {"points": [[0.5, 0.5], [0.1, 0.1]], "point_labels": [1, 0], "slices": [2]})
    assert out.summary["empty_prompts"] + len(out.segments) == 1


def test_grounded_medsam_chains_and_labels_segments_by_phrase(
    gd_folder: Path, sam_path: Path, ct: Volume, tmp_path: Path
) -> None:
    grounding = tiny_grounding_settings(gd_folder, box_threshold=0.0, text_threshold=0.0, max_detections=2)
    tool = GroundedMedSAMTool({"grounding": grounding, "medsam": tiny_sam_settings(sam_path)})
    assert tool.availability().available
    out = tool.run(ct, {"image": "<imagepath>", "prompts": ["lung", "tumor"], "slices": [1, 2, 3]})
    assert out.boxes and {b.slice_index for b in out.boxes} == {1, 2, 3}
    assert set(out.summary) >= {"boxes", "logits", "phrases", "slices", "segments"}
    assert out.segments and {s.label for s in out.segments} <= {"lung", "tumor"}
    for segment in out.segments:
        assert segment.mask.shape == ct.shape
        with_box = {b.slice_index for b in out.boxes if b.label == segment.label}
        assert {z for z in range(ct.shape[0]) if segment.mask[z].any()} <= with_box
    # Each phrase's mask is the union of MedSAM's masks for that phrase's boxes on each slice.
    medsam = MedSAMTool(tiny_sam_settings(sam_path))
    first = out.segments[0]
    boxes = [b for b in out.boxes if b.label == first.label and b.slice_index == 2]
    expected = np.zeros(ct.shape[1:], dtype=bool)
    for mask in medsam.segment_slices(ct, [(2, Prompt(box=b.box)) for b in boxes]):
        expected |= mask
    np.testing.assert_array_equal(first.mask[2], expected)
    # Models are shared with the standalone tools configured the same way (loaded once).
    assert GroundingDinoTool(grounding).model() is tool.grounding.model()
    assert medsam.model() is tool.medsam.model()

    seg = _write_and_check(ct, out, tmp_path)
    assert {seg.get_segment_description(n).segment_label for n in seg.get_segment_numbers()} == {
        s.label for s in out.segments
    }


def test_grounded_availability_names_the_missing_part(sam_path: Path) -> None:
    status = GroundedMedSAMTool({"medsam": tiny_sam_settings(sam_path)}).availability()
    assert not status.available and status.reason == "grounding: no model_path configured"


def test_device_resolution() -> None:
    cpu = resolve_device("cpu")
    assert cpu.type == "cpu" and model_dtype(cpu) == torch.float32
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        from tools.device import DeviceUnavailable

        with pytest.raises(DeviceUnavailable):
            resolve_device("cuda:0")
    else:
        assert model_dtype(resolve_device("cuda"), "fp16") == torch.float16
    with pytest.raises(ValueError):
        model_dtype(cpu, "int8")  # type: ignore[arg-type]


def test_2d_cr_gets_an_area_and_a_valid_seg(sam_path: Path, tmp_path: Path) -> None:
    from pydicom.data import get_testdata_file

    cr = load_series(Path(str(get_testdata_file("RG1_UNCI.dcm"))))
    assert not cr.is_3d
    out = MedSAMTool(tiny_sam_settings(sam_path)).run(cr, {"boxes": [BOX], "labels": ["right lung"]})
    (segment,) = out.segments
    (area,) = segment.measurements
    # This CR's Pixel Spacing is 0\0 and it has no Imager Pixel Spacing: the area is a pixel
    # count, and its unit says so (never mm2 equal to the pixel count).
    assert area.unit == unit("pixels") and area.value == segment.mask.sum()
    assert out.summary["segments"][0]["area_pixels"] == segment.mask.sum()
    assert segment.laterality == concept("right") and segment.type.meaning == "Lung"
    assert "slices" not in out.summary["segments"][0]
    seg = _write_and_check(cr, out, tmp_path)
    assert seg.get_segment_description(1).segment_label == "right lung"
