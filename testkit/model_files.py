"""Fixtures for the organ3d / classification / report / retrieval / tools-CLI tests: CT phantoms
with known anatomy (as real CT Image Storage datasets and as a Volume), and tiny checkpoints
written in the formats the real loaders read (MONAI bundle folder, state dict, transformers CLIP).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from image_model.volume import Volume

#: Deterministic UID root for test data (a fixed prefix keeps UIDs <= 64 chars).
UID_PREFIX = "1.2.826.0.1.3680043.10.1234."


@dataclass
class Phantom:
    volume: Volume
    #: Boolean mask (slices, rows, cols) of the bright "organ" (the ground truth).
    organ: np.ndarray
    #: Patient-space (LPS, mm) centre of the organ.
    organ_centre: np.ndarray


def ct_phantom(
    shape: tuple[int, int, int] = (20, 40, 40),
    spacing: tuple[float, float, float] = (2.5, 1.0, 1.0),
    *,
    descending: bool = False,
    flip_rows: bool = False,
    organ_hu: float = 300.0,
    seed: int = 0,
) -> Phantom:
    """A CT volume: air, an elliptic body (40 HU), and a bright ellipsoid "organ" on the patient's
    left, posterior and cranial side, so any flipped axis moves it measurably.

    ``descending`` orders slices head-to-foot (positions decreasing in z); ``flip_rows`` makes the
    row index run anterior (IOP column cosines (0, -1, 0)): both are legal DICOM geometries.
    """
    n, rows, cols = shape
    dz, dy, dx = spacing
    col_dir = np.array([1.0, 0.0, 0.0])
    row_dir = np.array([0.0, -1.0, 0.0]) if flip_rows else np.array([0.0, 1.0, 0.0])
    slice_dir = np.array([0.0, 0.0, -1.0 if descending else 1.0])
    origin = -(col_dir * dx * (cols - 1) + row_dir * dy * (rows - 1)) / 2.0 + np.array([0.0, 0.0, 100.0])
    positions = np.array([origin + slice_dir * dz * k for k in range(n)])
    kk, rr, cc = np.meshgrid(np.arange(n), np.arange(rows), np.arange(cols), indexing="ij")
    world = (
        positions[0][None, None, None, :]
        + kk[..., None] * dz * slice_dir
        + rr[..., None] * dy * row_dir
        + cc[..., None] * dx * col_dir
    )
    x, y = world[..., 0], world[..., 1]
    zc = positions[:, 2].mean()
    half_x, half_y = dx * cols * 0.45, dy * rows * 0.4
    body = (x / half_x) ** 2 + (y / half_y) ** 2 <= 1.0
    # Off-centre on all three axes (left, posterior, cranial) so any flipped axis moves it.
    centre = np.array([half_x * 0.45, half_y * 0.25, zc + dz * n * 0.12])
    radii = np.array([half_x * 0.3, half_y * 0.4, dz * n * 0.28])
    organ = (((world - centre) / radii) ** 2).sum(axis=-1) <= 1.0
    rng = np.random.default_rng(seed)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[organ] = organ_hu
    hu += rng.normal(0, 5, size=shape).astype(np.float32)
    orientation = (*col_dir, *row_dir)
    datasets = ct_datasets(hu, spacing, positions, orientation)
    volume = Volume(
        pixels=hu,
        spacing=spacing,
        positions=positions,
        orientation=tuple(float(v) for v in orientation),  # type: ignore[arg-type]
        datasets=datasets,
        modality="CT",
    )
    return Phantom(volume, organ, centre)


def ct_datasets(
    hu: np.ndarray,
    spacing: tuple[float, float, float],
    positions: np.ndarray,
    orientation: tuple[float, ...],
    *,
    seed: str = "phantom",
    body_part: str = "CHEST",
) -> list[Dataset]:
    """Real CT Image Storage datasets (PS3.3 A.3) for ``hu``, one per slice, writable to files."""
    study = generate_uid(UID_PREFIX, [seed, "study"])
    series = generate_uid(UID_PREFIX, [seed, "series"])
    frame = generate_uid(UID_PREFIX, [seed, "frame"])
    out: list[Dataset] = []
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(UID_PREFIX, [seed, "sop", str(k)])
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^CT", "PH0001", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName = "20260101", "120000", "A1", ""
        ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, k + 1
        ds.Modality, ds.Manufacturer = "CT", "phantom"
        ds.BodyPartExamined, ds.StudyDescription, ds.SeriesDescription = body_part, "CT CHEST", "AXIAL"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in positions[k]]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024.0, 1.0, "HU"
        ds.WindowCenter, ds.WindowWidth = 40.0, 400.0
        ds.KVP = 120.0
        ds.PixelData = np.round(hu[k] + 1024.0).astype(np.int16).tobytes()
        out.append(ds)
    return out


def write_series(datasets: list[Dataset], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# MONAI checkpoints
# ---------------------------------------------------------------------------------------------
TINY_SEGRESNET = {
    "_target_": "SegResNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 3,
    "init_filters": 8,
    "blocks_down": [1, 1],
    "blocks_up": [1],
}


def write_bundle(
    folder: Path,
    network_def: dict[str, Any],
    state_dict: dict[str, torch.Tensor],
    channel_def: dict[str, str],
    *,
    pixdim: list[float] | None = None,
    window: tuple[float, float] | None = None,
    roi_size: list[int] | None = None,
) -> Path:
    """A MONAI bundle folder (configs/inference.json, configs/metadata.json, models/model.pt) in
    the layout of the MONAI Model Zoo bundles (e.g. spleen_ct_segmentation)."""
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    preprocessing: list[dict[str, Any]] = [
        {"_target_": "LoadImaged", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
    ]
    if pixdim:
        preprocessing.append({"_target_": "Spacingd", "keys": "image", "pixdim": pixdim, "mode": "bilinear"})
    if window:
        preprocessing.append({
            "_target_": "ScaleIntensityRanged", "keys": "image", "a_min": window[0], "a_max": window[1],
            "b_min": 0.0, "b_max": 1.0, "clip": True,
        })
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "network_def": network_def,
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi_size or [16, 16, 16],
                    "sw_batch_size": 1, "overlap": 0.25},
    }
    metadata = {
        "name": "tiny test bundle",
        "version": "0.0.1",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": 1}},
            "outputs": {"pred": {"type": "image", "num_channels": len(channel_def), "channel_def": channel_def}},
        },
    }
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2), encoding="utf-8")
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=2), encoding="utf-8")
    torch.save(state_dict, folder / "models" / "model.pt")
    return folder


def threshold_conv_state(threshold: float) -> dict[str, torch.Tensor]:
    """A 1x1x1 Conv3d(1 -> 2) whose argmax is 1 exactly where the scaled input exceeds
    ``threshold``: an identity-like network whose correct output is known voxel by voxel."""
    return {
        "weight": torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1),
        "bias": torch.tensor([0.0, -threshold]),
    }


def dice(a: np.ndarray, b: np.ndarray) -> float:
    inter = float(np.logical_and(a, b).sum())
    total = float(a.sum() + b.sum())
    return 2.0 * inter / total if total else 1.0


# ---------------------------------------------------------------------------------------------
# Tiny transformers CLIP
# ---------------------------------------------------------------------------------------------
def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for bytes: printable Latin-1 bytes stand for
    themselves, the others map to code points from 256 upwards, in byte order."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAC + 1)) | set(range(0xAE, 0xFF + 1))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def write_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """A random-weight CLIPModel with a real byte-level BPE tokenizer (every byte a token, no
    merges) and a CLIPImageProcessor, saved with ``save_pretrained`` like a hub checkpoint."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer
    chars = _byte_level_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": len(vocab), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 128,
            "bos_token_id": vocab["<|startoftext|>"], "eos_token_id": vocab["<|endoftext|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 32, "patch_size": 8,
        },
        projection_dim=16,
    )
    model = CLIPModel(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# ---------------------------------------------------------------------------------------------
# Tiny causal language model
# ---------------------------------------------------------------------------------------------
def write_tiny_causal_lm(folder: Path, seed: int = 0) -> Path:
    """A random-weight 2-layer Llama with a byte-level BPE tokenizer (no merges), saved with
    ``save_pretrained`` so AutoModelForCausalLM/AutoTokenizer load it from the folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = _byte_level_alphabet()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({"<s>": len(vocab), "</s>": len(vocab) + 1})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
        bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_tiny_open_clip(folder: Path, seed: int = 0) -> Path:
    """A random-weight open_clip model in the layout ``local-dir:`` loading reads
    (open_clip_config.json + open_clip_model.safetensors; the built-in BPE tokenizer)."""
    import open_clip
    from safetensors.torch import save_file

    model_cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    preprocess_cfg = {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711],
                      "interpolation": "bicubic", "resize_mode": "shortest"}
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(**model_cfg)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}), encoding="utf-8"
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    return folder
