"""Benchmark (not a test): per-tool latency of ``grounding dino``, ``MedSAM`` and
``grounding dino + MedSAM`` on a 512x512 image and a 100-slice volume.

Models are random-weight checkpoints written in the real formats (see testkit/tiny_models.py)
and loaded through the tools' real loaders: tiny ones by default (seconds on a CPU), and with
``--real-sam`` also a real-size SAM ViT-B (1024 input), whose image encoder is timed on a few
slices and reported as slices/s. Latency excludes model loading, which is reported separately.

    python -m bench.bench_tools                      # tiny models, CPU
    python -m bench.bench_tools --real-sam --device cuda --real-slices 32
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from image_model.volume import Volume
from testkit.tiny_models import (
    tiny_grounding_settings,
    tiny_sam_settings,
    write_random_sam_vit_b,
    write_tiny_grounding_dino,
    write_tiny_sam,
)
from tools.grounded_sam import GroundedMedSAMTool
from tools.grounding import GroundingDinoTool
from tools.medsam import MedSAMTool, SamModel, SamSettings

BOX = [0.25, 0.25, 0.75, 0.75]


@dataclass
class Row:
    tool: str
    model: str
    input: str
    seconds: float
    note: str = ""


def synthetic_ct(slices: int, size: int, seed: int = 0) -> Volume:
    """A CT-like volume in HU: a soft-tissue disc with two dark 'lungs', plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) ** 2 / 0.16 + (yy - 0.5) ** 2 / 0.12) < 1
    lungs = (((xx - 0.33) ** 2 + (yy - 0.5) ** 2) < 0.02) | (
        ((xx - 0.67) ** 2 + (yy - 0.5) ** 2) < 0.02
    )
    plane = np.where(body, 40.0, -1000.0) + np.where(lungs, -890.0, 0.0)
    pixels = plane[None].repeat(slices, axis=0) + rng.normal(
        0, 10, (slices, size, size)
    )
    positions = np.array([[0.0, 0.0, 2.5 * z] for z in range(slices)])
    return Volume(
        pixels=pixels.astype(np.float32),
        spacing=(2.5, 0.7, 0.7),
        positions=positions,
        orientation=(1, 0, 0, 0, 1, 0),
        datasets=[],
        modality="CT",
    )


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    """Best-of-``repeat`` wall time of ``fn`` and its last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def bench_tiny(
    work: Path, device: str, image: Volume, volume: Volume, repeat: int
) -> list[Row]:
    gd = write_tiny_grounding_dino(work / "gdino")
    sam = write_tiny_sam(work / "sam_tiny.pth")
    grounding = tiny_grounding_settings(gd, device=device)
    medsam = tiny_sam_settings(sam, device=device)
    tools: list[tuple[str, Any, dict[str, Any]]] = [
        (
            "grounding dino",
            GroundingDinoTool(grounding),
            {"prompts": ["lung", "tumor"]},
        ),
        ("MedSAM", MedSAMTool(medsam), {"boxes": [BOX]}),
        (
            "grounding dino + MedSAM",
            GroundedMedSAMTool({"grounding": grounding, "medsam": medsam}),
            {"prompts": ["lung", "tumor"]},
        ),
    ]
    rows: list[Row] = []
    for name, tool, params in tools:
        loader: Callable[[], Any] | None = getattr(
            tool, "model", None
        )  # the chain reuses the two above
        load = timed(loader, 1)[0] if loader is not None else None
        for label, vol in (
            ("512x512 image", image),
            (f"{volume.shape[0]}x512x512 volume", volume),
        ):
            seconds, out = timed(partial(tool.run, vol, params), repeat)
            note = f"{len(out.boxes)} boxes, {len(out.segments)} segments"
            rows.append(Row(name, "tiny", label, seconds, note))
        if load is not None:
            rows.append(Row(name, "tiny", "model load", load))
    return rows


def bench_real_sam(work: Path, device: str, slices: int, repeat: int) -> list[Row]:
    path = write_random_sam_vit_b(work / "sam_vit_b_random.pth")
    settings = SamSettings.model_validate(
        {"model_path": str(path), "device": device, "model_type": "vit_b"}
    )
    load, model = timed(lambda: SamModel(settings), 1)
    images = np.random.default_rng(0).integers(
        0, 255, (slices, 512, 512, 3), dtype=np.uint8
    )

    def encode() -> torch.Tensor:
        out = model.embed(images)
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        return out

    encode()  # warm-up (kernels, allocator)
    seconds, embeddings = timed(encode, repeat)
    decode, _ = timed(
        lambda: model.decode(embeddings[0], [model_prompt()], 512, 512), repeat
    )
    dtype = str(model.dtype).replace("torch.", "")
    return [
        Row("MedSAM", f"ViT-B random ({dtype})", "model load", load),
        Row(
            "MedSAM",
            f"ViT-B random ({dtype})",
            f"encoder, {slices} slices",
            seconds,
            f"{slices / seconds:.2f} slices/s, batch {settings.batch_size}",
        ),
        Row("MedSAM", f"ViT-B random ({dtype})", "decoder, 1 box", decode),
    ]


def model_prompt() -> Any:
    from tools.medsam import Prompt

    return Prompt(box=tuple(BOX))  # type: ignore[arg-type]


def print_table(rows: list[Row]) -> None:
    headers = ("tool", "model", "input", "seconds", "note")
    cells = [(r.tool, r.model, r.input, f"{r.seconds:.3f}", r.note) for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(c, widths)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)"
    )
    parser.add_argument(
        "--slices", type=int, default=100, help="slices in the volume (default 100)"
    )
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per measurement; the best is kept"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch's default)"
    )
    parser.add_argument(
        "--real-sam", action="store_true", help="also time a real-size random SAM ViT-B"
    )
    parser.add_argument(
        "--real-slices", type=int, default=2, help="slices for the ViT-B encoder timing"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} CPU threads"
    )
    image, volume = synthetic_ct(1, 512), synthetic_ct(args.slices, 512)
    with tempfile.TemporaryDirectory(prefix="bench-tools-") as tmp:
        rows = bench_tiny(Path(tmp), args.device, image, volume, args.repeat)
        if args.real_sam:
            rows += bench_real_sam(
                Path(tmp), args.device, args.real_slices, args.repeat
            )
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
