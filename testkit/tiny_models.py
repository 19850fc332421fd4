"""Tiny random-weight checkpoints in the real on-disk formats, for the grounding/MedSAM tool tests
and the tool benchmark.

* Grounding DINO: a transformers ``save_pretrained`` folder (config.json + model.safetensors +
  processor/tokenizer files) with a 1-block-per-stage Swin backbone, a 1-layer BERT text encoder
  and a word-level BERT vocabulary written to disk. Smallest sizes transformers 5.24 accepts:
  ``d_model`` must be a multiple of 32 (the input projections use ``GroupNorm(32, d_model)``) and
  ``decoder_layers`` at least 2 (the tied ``bbox_embed.(?!0)`` weights need a layer 1 to tie), and
  the processor's input at least ~128 px on its short side (the extra 1/64 feature level is
  GroupNorm'ed and fails on a 1x1 map, e.g. for a 64 px input).
* SAM: a plain state dict (``torch.save(sam.state_dict())``), as MedSAM ships ``medsam_vit_b.pth``,
  of a 2-block 64-wide ViT encoder on a 64x64 input; the tool reads its architecture from
  ``settings["encoder"]``, which :func:`tiny_sam_settings` returns.
"""

from __future__ import annotations

import string
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from tools.device import LOADED_MODELS

#: Words the tiny tokenizer knows whole; anything else splits into letters ("##x" pieces).
VOCAB_WORDS = (
    "tumor", "tumour", "lesion", "liver", "lung", "lungs", "left", "right", "kidney", "nodule",
    "mass", "brain", "heart", "the", "a", "of",
)  # fmt: skip
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Two shared cores: torch's default intra-op threads make tiny models ~50x slower here. On
    exit the thread count is restored and the models the tools loaded meanwhile are dropped."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
        LOADED_MODELS.clear()

#: A 2-block, 64-wide SAM on a 64x64 input (patch 16 -> a 4x4 embedding grid).
TINY_SAM_ENCODER: dict[str, Any] = {
    "depth": 2,
    "embed_dim": 64,
    "num_heads": 2,
    "img_size": 64,
    "patch_size": 16,
    "window_size": 2,
    "global_attn_indexes": [1],
    "prompt_embed_dim": 32,
    "decoder_mlp_dim": 64,
    "decoder_heads": 2,
    "iou_head_hidden_dim": 32,
}


def tiny_vocab() -> dict[str, int]:
    tokens = list(SPECIAL_TOKENS) + list(string.punctuation) + list(string.ascii_lowercase) + list(string.digits)
    tokens += ["##" + c for c in string.ascii_lowercase + string.digits] + list(VOCAB_WORDS)
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def write_tiny_grounding_dino(folder: Path, *, image_size: int = 128, num_queries: int = 30, seed: int = 0) -> Path:
    """A random-weight Grounding DINO saved with its processor into ``folder``; returns it."""
    from transformers import (
        BertConfig,
        BertTokenizer,
        GroundingDinoConfig,
        GroundingDinoForObjectDetection,
        GroundingDinoImageProcessor,
        GroundingDinoProcessor,
        SwinConfig,
    )

    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    tokenizer = BertTokenizer(vocab=vocab, do_lower_case=True)
    backbone = SwinConfig(
        image_size=image_size, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
        window_size=4, out_indices=[2, 3, 4],
    )  # type: ignore[call-arg]  # fmt: skip
    text = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=64,
    )  # fmt: skip
    config = GroundingDinoConfig(
        backbone_config=backbone, text_config=text, num_queries=num_queries, d_model=32,
        encoder_layers=1, decoder_layers=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_n_points=2, decoder_n_points=2,
        max_text_len=32,
    )  # fmt: skip
    torch.manual_seed(seed)
    model = GroundingDinoForObjectDetection(config)
    model.save_pretrained(folder)
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": image_size, "longest_edge": image_size})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def build_tiny_sam(encoder: dict[str, Any] | None = None, seed: int = 0) -> torch.nn.Module:
    """A random-weight SAM of the given architecture, built by the tool's own builder."""
    from tools.medsam import SamArchitecture, build_sam_from_architecture

    torch.manual_seed(seed)
    return build_sam_from_architecture(SamArchitecture.model_validate(encoder or TINY_SAM_ENCODER))


def write_tiny_sam(path: Path, encoder: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Save a random-weight SAM state dict at ``path`` (the MedSAM checkpoint format)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(build_tiny_sam(encoder, seed).state_dict(), path)
    return path


def write_random_sam_vit_b(path: Path, seed: int = 0) -> Path:
    """A real-size (ViT-B, 1024 input) random-weight SAM state dict, ~375 MB; for benchmarks."""
    from segment_anything import sam_model_registry

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


def tiny_sam_settings(path: Path, **extra: Any) -> dict[str, Any]:
    return {"model_path": str(path), "device": "cpu", "encoder": dict(TINY_SAM_ENCODER), **extra}


def tiny_grounding_settings(folder: Path, **extra: Any) -> dict[str, Any]:
    return {"model_path": str(folder), "device": "cpu", **extra}
