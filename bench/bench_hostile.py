"""Benchmark (not a test): what each attack of issue 11 costs a running node, in memory and in
latency for a legitimate peer. Targets: no single input raises the node's RSS by more than
256 MB; with 200 idle or stalled connections open, a legitimate association completes within 2 s.

Each attack runs against ``mmed-node serve`` of the working tree (default limits; its jobs load
each series through the real loader, as the pipeline does first). Before each attack the node's
peak RSS is reset (``/proc/<pid>/clear_refs``); the figure is the peak after it (jobs included)
minus the RSS before it. Run inside a private network namespace:

    bench/run.sh bench.bench_hostile [--json bench/results/hostile.json]
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless

from testkit import dicom_wire as wire
from testkit.crafted import MB, ct_dataset, ct_image, deeply_nested, deflate_bomb, rle_bomb
from testkit.served_node import ServedNode, close_all, stalled_connections


def _store(node: ServedNode, body: bytes, ds: Any, syntax: str = ExplicitVRLittleEndian) -> str:
    try:
        code = wire.store(node.port, body, ds.SOPClassUID, ds.SOPInstanceUID, syntax, calling="BENCH",
                          max_pdu=1 << 20, timeout=120)
    except ConnectionError:
        return "dropped"
    return "stored" if code == 0 else f"refused 0x{code:04x}"


def _settle(node: ServedNode, jobs_before: int, stored: bool) -> None:
    """Wait for the job a stored instance starts (quiet period, then the loader)."""
    if not stored:
        time.sleep(0.5)
        return
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        records = [json.loads(p.read_text()) for p in (node.data_dir / "jobs").glob("*.json")]
        if len([r for r in records if r["state"] in ("done", "failed")]) > jobs_before:
            return
        time.sleep(0.2)


def _private_blob(size: int) -> tuple[Any, bytes]:
    ds = ct_dataset()
    body = wire.encode_dataset(ds)
    cut = body.index(struct.pack("<HH", 0x7FE0, 0x0010))
    blob = (struct.pack("<HH", 0x0029, 0x0010) + b"LO\x08\x00HOSTILE " + struct.pack("<HH", 0x0029, 0x1000)
            + b"OB\x00\x00" + struct.pack("<L", size) + bytes(size))
    return ds, body[:cut] + blob + body[cut:]


def attack_rq_4gb(node: ServedNode) -> str:
    sent = 0
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBL", 1, 0, 0xFFFFFFFF) + bytes(68))
        try:
            while sent < 256 * MB:
                sock.sendall(bytes(MB))
                sent += MB
        except OSError:
            pass
    return f"dropped after {sent / MB:.0f} MB sent"


def attack_native_at_limit(node: ServedNode) -> str:
    side = 4096  # 4096 x 4096 x 2 bytes = max_pixel_bytes (32 MiB)
    ds = ct_image((np.arange(side * side, dtype=np.uint32) % 3000).astype(np.uint16).reshape(side, side))
    return _store(node, wire.encode_dataset(ds), ds)


def attack_rgb_at_limit(node: ServedNode) -> str:
    side = 2364  # 2364 x 2364 x 3 samples: 16 M samples, max_pixel_bytes as float32
    ds = ct_dataset(8, 8)
    ds.Rows = ds.Columns = side
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    del ds.RescaleSlope, ds.RescaleIntercept
    ds.PixelData = (np.arange(side * side * 3) % 250).astype(np.uint8).tobytes()
    return _store(node, wire.encode_dataset(ds), ds)


def attack_rle_at_limit(node: ServedNode) -> str:
    ds, body = rle_bomb(4096, 4096)
    return _store(node, body, ds, RLELossless)


ATTACKS: dict[str, tuple[Callable[[ServedNode], str], bool]] = {
    "A-ASSOCIATE-RQ announcing 4 GB, 256 MB streamed": (attack_rq_4gb, False),
    "256 MiB instance": (lambda n: _store(n, *reversed(_private_blob(256 * MB))), False),
    "instance just under max_dataset_bytes (63 MiB)": (lambda n: _store(n, *reversed(_private_blob(63 * MB))), True),
    "deflate bomb: 1 MB inflating to 1 GiB": (
        lambda n: _store(n, *reversed(deflate_bomb(1024 * MB)), DeflatedExplicitVRLittleEndian), False),
    "RLE, 956 bytes declaring 65535 x 16384": (lambda n: _store(n, *reversed(rle_bomb()), RLELossless), False),
    "RLE declaring exactly max_pixel_bytes (4096 x 4096), garbage data": (attack_rle_at_limit, True),
    "native 4096 x 4096 16-bit image (= max_pixel_bytes), loaded by a job": (attack_native_at_limit, True),
    "RGB 2364 x 2364 (16 M samples = max_pixel_bytes), loaded by a job": (attack_rgb_at_limit, True),
    "sequences nested 5000 deep": (lambda n: _store(n, *reversed(deeply_nested(5000))), False),
}


def legit_latency(node: ServedNode) -> dict[str, float]:
    """C-ECHO on a fresh association with 100 silent and 100 stalled (3 bytes) connections open."""
    idle = stalled_connections(node.port, 100) + stalled_connections(node.port, 100, b"\x01\x00\x00")
    try:
        time.sleep(0.5)
        took = [wire.echo(node.port) for _ in range(5)]
    finally:
        close_all(idle)
    return {"echo_max_ms": round(max(took) * 1000, 1), "echo_median_ms": round(sorted(took)[2] * 1000, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        node = ServedNode(Path(tmp), runner="testkit.served_node:loading_runner")
        try:
            results["node_start_rss_mb"] = round(node.start_rss / MB, 1)
            results["200 idle/stalled connections"] = legit_latency(node)
            print(f"200 idle/stalled connections: {results['200 idle/stalled connections']}", file=sys.stderr)
            for name, (attack, may_store) in ATTACKS.items():
                jobs_before = len(list((node.data_dir / "jobs").glob("*.json")))
                with node.memory() as memory:
                    outcome = attack(node)
                    _settle(node, jobs_before, may_store and outcome == "stored")
                node.assert_alive()
                echo = wire.echo(node.port)
                results[name] = {"outcome": outcome, "rss_growth_mb": round(memory["growth"] / MB, 1),
                                 "echo_after_ms": round(echo * 1000, 1)}
                print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
        finally:
            node.stop()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
