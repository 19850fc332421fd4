"""Build a tiny random-weight LLaVA checkpoint folder, in the real Hugging Face format.

The folder holds what a real LLaVA-family checkpoint holds (``config.json``, ``model.safetensors``,
tokenizer files with a chat template, ``preprocessor_config.json``, ``processor_config.json``), so
the planner and the trainer load it through exactly the code that loads a 7B model.

The tokenizer is word-level: a small vocabulary of protocol words (``thoughts``, ``API_name``,
tool-name pieces, and the words and recurring chunks of any ``corpus`` texts given) plus every
single character (JSON punctuation, digits...), so any ASCII text (and any character of the corpus)
round-trips losslessly. A regex pre-tokenizer cuts known pieces out first (longest first) and falls
back to single characters; a ``Fuse``
decoder glues tokens back without inserting spaces (a plain word-level decoder would put spaces
around every brace and quote, and nothing the model says would parse).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.prompting import LLAVA_V1_CHAT_TEMPLATE

#: Words every protocol text uses; whole tokens keep sequences short.
BASE_WORDS: tuple[str, ...] = (
    "thoughts", "actions", "value", "API_name", "API_params", "image", "imagepath", "prompts",
    "boxes", "logits", "phrases", "output", "Answer", "my", "first", "question", "Please", "wait",
    "grounding", "dino", "MedSAM", "medsam", "segment", "segmentation", "biomedclip",
    "classification", "chatcad", "report", "generation", "rag", "retrieval", "vqa", "tumor",
    "USER", "ASSISTANT", "null", "true", "false",
)

#: Most frequent corpus chunks made single tokens (bounds the embedding table).
MAX_CHUNKS = 1500

SPECIAL_TOKENS: dict[str, str] = {
    "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
}
IMAGE_TOKEN = "<image>"


@dataclass(frozen=True)
class TinyLlavaSpec:
    """Sizes of the tiny model. Defaults give ~100k parameters plus the embedding table."""

    hidden_size: int = 64
    intermediate_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    max_positions: int = 4096
    image_size: int = 32
    patch_size: int = 8
    vision_hidden: int = 32
    vision_layers: int = 2
    seed: int = 0
    #: Larger than Llama's 0.02: with a frozen LM head (LoRA training) and a 64-wide hidden state,
    #: 0.02 caps every logit near +-1.3, so the tiny model could never become confident of a token.
    initializer_range: float = 0.2


def _vocabulary(corpus: Iterable[str]) -> tuple[list[str], list[str]]:
    """(vocabulary, multi-character pieces). Pieces are the base words, the corpus' words, and
    its most frequent space-led chunks (`` (string);``, `` "API_name":``), so a long
    system prompt costs a few hundred tokens, not one per character."""
    pieces = set(BASE_WORDS)
    chars = set(string.printable) | {"\n", "\t"}
    counts: Counter[str] = Counter()
    for text in corpus:
        pieces.update(re.findall(r"[A-Za-z_]{3,}", text))
        counts.update(re.findall(r" ?[^\s]{2,}", text))
        chars.update(text)
    pieces.update(chunk for chunk, _ in counts.most_common(MAX_CHUNKS) if IMAGE_TOKEN not in chunk)
    specials = [SPECIAL_TOKENS[k] for k in ("unk_token", "bos_token", "eos_token", "pad_token")]
    ordered = sorted(pieces, key=lambda w: (-len(w), w))
    return specials + [IMAGE_TOKEN] + ordered + sorted(chars - pieces), ordered


def build_tokenizer(corpus: Iterable[str] = ()) -> Any:
    """A lossless word-level tokenizer: known pieces whole (longest first), anything else one
    character a token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab_list, pieces = _vocabulary(corpus)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    pattern = "|".join(re.escape(w) for w in pieces) + r"|[\s\S]"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, **SPECIAL_TOKENS, extra_special_tokens={"image_token": IMAGE_TOKEN},
        chat_template=LLAVA_V1_CHAT_TEMPLATE, padding_side="left", model_max_length=4096,
    )
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return fast


def build_tiny_llava(folder: Path, corpus: Iterable[str] = (), spec: TinyLlavaSpec = TinyLlavaSpec()) -> Path:
    """Write a random-weight LLaVA checkpoint folder at ``folder`` and return it.

    ``corpus``: texts the model will see (system prompt, training records); their words become
    single tokens and their characters join the vocabulary, so nothing maps to ``<unk>``.
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(corpus)
    text_config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        initializer_range=spec.initializer_range,
    )
    vision_config = CLIPVisionConfig(
        hidden_size=spec.vision_hidden, intermediate_size=2 * spec.vision_hidden,
        num_hidden_layers=spec.vision_layers, num_attention_heads=2, image_size=spec.image_size,
        patch_size=spec.patch_size, projection_dim=spec.vision_hidden,
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    num_patches = (spec.image_size // spec.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id,
        image_seq_length=num_patches, vision_feature_select_strategy="default",
        vision_feature_layer=-2, projector_hidden_act="gelu",
    )
    torch.manual_seed(spec.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
    )
    processor = LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=spec.patch_size,
        vision_feature_select_strategy="default", chat_template=LLAVA_V1_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    processor.save_pretrained(folder)
    return folder
