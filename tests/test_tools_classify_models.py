"""BiomedClip through its real loader with a tiny random-weight transformers CLIP, and the
weight-free metadata classifier on real pydicom-data files and CT phantoms."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.data import get_testdata_file

from image_model.loader import load_series
from testkit.model_files import (
    ct_datasets,
    ct_phantom,
    write_series,
    write_tiny_clip,
    write_tiny_open_clip,
)
from tools.base import ToolRefused
from tools.classify import (
    MMEDAGENT_LABELS,
    BiomedClip,
    MetadataClassification,
    parse_label,
)
from tools.imaging import volume_to_rgb


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")


def _testdata_volume(name: str):  # type: ignore[no-untyped-def]
    path = get_testdata_file(name)
    assert path, f"pydicom-data lacks {name}"
    return load_series([Path(path)])


def test_zero_shot_scores_match_the_model_with_mmedagent_prompts(clip_dir: Path) -> None:
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    tool = BiomedClip({"model_path": str(clip_dir), "device": "cpu"})
    assert tool.availability().available, tool.availability().reason
    volume = _testdata_volume("RG1_UNCI.dcm")  # real chest CR, MONOCHROME1, 1955x1841
    out = tool.run(volume, {"image": "<imagepath>"})
    assert sorted(s.label for s in out.labels) == sorted(MMEDAGENT_LABELS)
    scores = [s.score for s in out.labels]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert out.summary["labels"] == [s.label for s in out.labels[:3]]

    # Recompute independently: same checkpoint, MMedAgent's prompt, the windowed RGB slice.
    model = CLIPModel.from_pretrained(clip_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir, local_files_only=True)
    proc = AutoImageProcessor.from_pretrained(clip_dir, local_files_only=True)
    prompts = [f"the photo can be classified as {label}" for label in MMEDAGENT_LABELS]
    text = tok(prompts, padding=True, return_tensors="pt")
    rgb = volume_to_rgb(volume, [0])[0]
    assert rgb.shape == (1955, 1841, 3) and rgb.dtype == np.uint8
    with torch.no_grad():
        logits = model(**text, pixel_values=proc(images=[rgb], return_tensors="pt")["pixel_values"]).logits_per_image
    expected = dict(zip(MMEDAGENT_LABELS, torch.softmax(logits[0], -1).tolist()))
    for s in out.labels:
        assert s.score == pytest.approx(expected[s.label], abs=1e-5)
    # A different template changes the scores: the template really reaches the model.
    other = BiomedClip({"model_path": str(clip_dir), "device": "cpu", "template": "this is a photo of {label}"})
    assert [s.score for s in other.run(volume, {}).labels] != scores


def test_labels_param_and_slice_choice(clip_dir: Path) -> None:
    tool = BiomedClip({"model_path": str(clip_dir), "device": "cpu", "top_k": 2})
    phantom = ct_phantom(shape=(6, 24, 24))
    out = tool.run(phantom.volume, {"labels": ["abdomen CT", "brain MRI", "chest X-ray"], "slice_index": 5})
    assert {s.label for s in out.labels} == {"abdomen CT", "brain MRI", "chest X-ray"}
    assert len(out.summary["labels"]) == 2 and out.summary["slice_index"] == 5
    assert tool.run(phantom.volume, {}).summary["slice_index"] == 3  # middle slice by default
    with pytest.raises(ToolRefused, match="outside the volume"):
        tool.run(phantom.volume, {"slice_index": 6})
    assert tool.scorer() is tool.scorer()  # loaded once


def test_clip_availability_reasons(tmp_path: Path) -> None:
    assert "no model configured" in BiomedClip(None).availability().reason
    assert "does not exist" in BiomedClip({"model_path": str(tmp_path / "x")}).availability().reason
    assert "neither" in BiomedClip({"model_path": str(tmp_path)}).availability().reason
    bad = BiomedClip({"model_path": str(tmp_path), "template": "no placeholder"}).availability()
    assert not bad.available and "template" in bad.reason


def test_parse_label() -> None:
    assert (parse_label("brain MRI").kind, parse_label("brain MRI").region) == ("mri", "brain")
    assert (parse_label("lung CT").kind, parse_label("lung CT").region) == ("ct", "lung")
    assert (parse_label("chest X-ray").kind, parse_label("chest X-ray").region) == ("x-ray", "chest")
    assert parse_label("pie chart").kind is None
    assert parse_label("hematoxylin and eosin histopathology").kind == "histopathology"


@pytest.mark.parametrize(
    "name,label,min_conf",
    [("RG1_UNCI.dcm", "chest X-ray", 0.9), ("emri_small.dcm", "brain MRI", 0.9)],
)
def test_metadata_classification_on_real_files(name: str, label: str, min_conf: float) -> None:
    out = MetadataClassification(None).run(_testdata_volume(name), {})
    assert out.summary["label"] == label and out.summary["confidence"] >= min_conf
    assert out.summary["in_label_set"] is True
    assert any(e.startswith("Modality=") for e in out.summary["evidence"])
    assert out.labels[0].label == label


def test_metadata_ct_without_body_part_says_ct_and_no_more() -> None:
    out = MetadataClassification(None).run(_testdata_volume("CT_small.dcm"), {})
    assert out.summary["label"] == "CT" and out.summary["in_label_set"] is False
    assert set(out.summary["candidates"]) == {"abdomen CT", "lung CT"}
    assert out.summary["confidence"] < 0.5
    assert "BodyPartExamined" not in " ".join(out.summary["evidence"])


@pytest.mark.parametrize(
    "body_part,description,label,conf",
    [
        ("CHEST", "CT CHEST", "lung CT", 0.9),
        ("ABDOMEN", "CT ABD", "abdomen CT", 0.9),
        ("", "CT ABDOMEN PELVIS W CONTRAST", "abdomen CT", 0.75),
    ],
)
def test_metadata_ct_series_through_the_loader(
    tmp_path: Path, body_part: str, description: str, label: str, conf: float
) -> None:
    ph = ct_phantom(shape=(5, 16, 16))
    datasets = ct_datasets(ph.volume.pixels, ph.volume.spacing, ph.volume.positions, ph.volume.orientation,
                           body_part=body_part)
    for ds in datasets:
        ds.StudyDescription = description
        ds.SeriesDescription = ""
    volume = load_series(write_series(datasets, tmp_path / "ct"))
    out = MetadataClassification({"labels": list(MMEDAGENT_LABELS)}).run(volume, {})
    assert (out.summary["label"], out.summary["confidence"]) == (label, conf)
    assert "slices=5" in out.summary["evidence"]


def test_metadata_other_body_part_excludes_labels_and_localizers_are_capped(tmp_path: Path) -> None:
    ph = ct_phantom(shape=(1, 16, 16))
    (ds,) = ct_datasets(ph.volume.pixels, ph.volume.spacing, ph.volume.positions, ph.volume.orientation,
                        body_part="HEAD")
    volume = load_series(write_series([ds], tmp_path / "head"))
    out = MetadataClassification(None).run(volume, {})
    assert out.summary["label"] == "head CT" and out.summary["in_label_set"] is False
    assert out.summary["candidates"] == []
    custom = MetadataClassification(None).run(volume, {"labels": ["brain CT", "lung CT"]})
    assert custom.summary["label"] == "brain CT" and custom.summary["confidence"] == 0.9


def test_open_clip_checkpoint_through_local_dir(tmp_path: Path) -> None:
    import open_clip
    from PIL import Image

    folder = write_tiny_open_clip(tmp_path / "oc")
    tool = BiomedClip({"model_path": str(folder), "device": "cpu", "labels": ["chest X-ray", "brain MRI", "gross"]})
    assert tool.availability().available and tool.scorer().backend == "open_clip"
    volume = ct_phantom(shape=(3, 40, 48)).volume
    out = tool.run(volume, {"slice_index": 2})
    model, preprocess = open_clip.create_model_from_pretrained(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    image = preprocess(Image.fromarray(volume_to_rgb(volume, [2])[0]))[None]
    labels = ["chest X-ray", "brain MRI", "gross"]
    with torch.no_grad():
        img_f, txt_f, scale = model.eval()(image, tokenizer([f"the photo can be classified as {x}" for x in labels]))[:3]
        expected = dict(zip(labels, torch.softmax(scale * img_f @ txt_f.t(), -1)[0].tolist()))
    for s in out.labels:
        assert s.score == pytest.approx(expected[s.label], abs=1e-5)
