"""Benchmark (not a test): latency of ``organ segmentation 3d`` (sliding-window inference on a
100-slice CT volume) and ``BiomedClip`` (zero-shot on a 512x512 image), through the real tools and
loaders with random-weight networks of real size, plus the weight-free metadata classifier.

    python bench/bench_tools_3d.py                 # CPU (default), prints a table
    python bench/bench_tools_3d.py --device cuda --net full   # on a GPU, real-size networks
    python bench/bench_tools_3d.py --quick         # smaller networks/volume, for a smoke run

Random weights change nothing about latency: the work per voxel is the same as a trained model's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from image_model.volume import Volume
from tools.classify import BiomedClip, MetadataClassification
from tools.organ3d import OrganSegmentation3D


def synthetic_ct(slices: int, size: int, spacing: tuple[float, float, float]) -> Volume:
    """A body-shaped HU volume (no DICOM headers needed by these tools)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    body = ((yy - size / 2) / (size * 0.4)) ** 2 + (
        (xx - size / 2) / (size * 0.45)
    ) ** 2 <= 1
    plane = np.where(body, 40.0, -1000.0).astype(np.float32)
    pixels = np.repeat(plane[None], slices, axis=0) + rng.normal(
        0, 10, (slices, size, size)
    ).astype(np.float32)
    positions = np.array(
        [
            [-size * spacing[2] / 2, -size * spacing[1] / 2, k * spacing[0]]
            for k in range(slices)
        ]
    )
    return Volume(
        pixels=pixels,
        spacing=spacing,
        positions=positions,
        orientation=(1, 0, 0, 0, 1, 0),
        datasets=[],
        modality="CT",
        meta={"window_center": 40.0, "window_width": 400.0},
    )


def write_segresnet_bundle(
    folder: Path, small: bool, out_channels: int, roi: int
) -> dict[str, Any]:
    from monai.networks.nets import SegResNet

    from testkit.model_files import write_bundle

    kwargs: dict[str, Any] = {
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": out_channels,
        "init_filters": 8 if small else 16,
        "blocks_down": [1, 1, 1] if small else [1, 2, 2, 4],
        "blocks_up": [1, 1] if small else [1, 1, 1],
    }
    net = SegResNet(**kwargs)
    params = sum(p.numel() for p in net.parameters())
    channel_def = {
        "0": "background",
        **{str(i): f"organ {i}" for i in range(1, out_channels)},
    }
    write_bundle(
        folder,
        {"_target_": "SegResNet", **kwargs},
        net.state_dict(),
        channel_def,
        pixdim=[1.5, 1.5, 2.0],
        window=(-1000.0, 1000.0),
        roi_size=[roi] * 3,
    )
    return {"params_m": params / 1e6}


def write_clip(folder: Path, small: bool) -> dict[str, Any]:
    """Random CLIP: ViT-B/16 at 224 px with a 12-layer text tower (BiomedCLIP's image tower size)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from testkit.model_files import write_tiny_clip

    write_tiny_clip(folder)  # tokenizer + processor files (the model is replaced below)
    if small:
        return {
            "params_m": sum(
                p.numel() for p in CLIPModel.from_pretrained(folder).parameters()
            )
            / 1e6
        }
    tiny = json.loads((folder / "config.json").read_text())
    config = CLIPConfig(
        text_config={
            "vocab_size": tiny["text_config"]["vocab_size"],
            "max_position_embeddings": 128,
            "bos_token_id": tiny["text_config"]["bos_token_id"],
            "eos_token_id": tiny["text_config"]["eos_token_id"],
            "pad_token_id": tiny["text_config"]["pad_token_id"],
        },
        vision_config={"image_size": 224, "patch_size": 16},
        projection_dim=512,
    )
    model = CLIPModel(config)
    model.save_pretrained(folder)
    CLIPImageProcessor(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}
    ).save_pretrained(folder)
    return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6}


def timed(fn: Callable[[], Any], repeats: int, device: str) -> tuple[float, float, Any]:
    """(first call s, median of the following calls s, last result); the first includes loading."""

    def once() -> tuple[float, Any]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        result = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, result

    first, result = once()
    rest = [once()[0] for _ in range(repeats)]
    return first, statistics.median(rest) if rest else first, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--roi", type=int, default=96)
    parser.add_argument(
        "--organs", type=int, default=14, help="output channels incl. background"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--net",
        choices=["small", "full"],
        default="small",
        help="small: SegResNet 8 filters/3 levels + tiny CLIP (CPU); full: SegResNet 16 "
        "filters (1,2,2,4) + CLIP ViT-B/16 (GPU)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="40x256x256 volume, roi 64 (smoke run)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads (0: torch default)"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.slices, args.size, args.roi = (
            min(args.slices, 40),
            min(args.size, 256),
            min(args.roi, 64),
        )

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        volume = synthetic_ct(args.slices, args.size, (2.5, 0.8, 0.8))
        info = write_segresnet_bundle(
            root / "bundle", args.net == "small", args.organs, args.roi
        )
        organ = OrganSegmentation3D(
            {"bundle_dir": str(root / "bundle"), "device": args.device}
        )
        first, median, out = timed(
            lambda: organ.run(volume, {}), args.repeats, args.device
        )
        grid = out.algorithm.parameters["network_grid"]
        rows.append(
            {
                "tool": "organ segmentation 3d",
                "input": f"{args.slices}x{args.size}x{args.size} CT",
                "model": f"SegResNet {info['params_m']:.1f}M, roi {args.roi}^3, grid {grid}",
                "first_s": first,
                "median_s": median,
                "per_s": f"{1 / median:.3f} volumes/s",
            }
        )

        image = synthetic_ct(1, 512, (1.0, 0.7, 0.7))
        info = write_clip(root / "clip", args.net == "small")
        clip = BiomedClip({"model_path": str(root / "clip"), "device": args.device})
        first, median, _ = timed(
            lambda: clip.run(image, {}), max(args.repeats, 5), args.device
        )
        rows.append(
            {
                "tool": "BiomedClip (14 labels)",
                "input": "512x512 image",
                "model": f"CLIP {'tiny' if args.net == 'small' else 'ViT-B/16'} {info['params_m']:.1f}M",
                "first_s": first,
                "median_s": median,
                "per_s": f"{1 / median:.1f} images/s",
            }
        )

        meta = MetadataClassification(None)
        first, median, _ = timed(lambda: meta.run(image, {}), 20, args.device)
        rows.append(
            {
                "tool": "metadata classification",
                "input": "header",
                "model": "rules",
                "first_s": first,
                "median_s": median,
                "per_s": f"{1 / median:.0f} series/s",
            }
        )

    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(f"device: {device}; torch {torch.__version__}")
    print(
        f"{'tool':<26} {'input':<20} {'model':<52} {'first s':>8} {'median s':>9}  throughput"
    )
    for r in rows:
        print(
            f"{r['tool']:<26} {r['input']:<20} {r['model']:<52} {r['first_s']:>8.3f} {r['median_s']:>9.3f}  {r['per_s']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
