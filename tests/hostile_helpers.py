"""Shared pieces of the hostile-input tests and the fuzzer: ``mmed-node serve`` as a subprocess
whose memory is watched, raw connections that stall, and crafted instances (deflate and RLE bombs,
deep nesting, forged UIDs, invalid header values).

The node's resident memory is read from ``/proc/<pid>/status``; before each attack the peak
(VmHWM) is reset through ``/proc/<pid>/clear_refs`` so the peak after it is the attack's alone.
A watchdog kills a node whose memory runs away (an unprotected node would otherwise take the
machine with it) and the test then fails with the figure.
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import ExplicitVRLittleEndian

from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.pipeline import JobSpec
from dicom_node.jobs.pipeline import _instance_files as instance_files
from tests.dicom_wire import encode_dataset
from tests.receive_helpers import PROJECT_ROOT, ct_image, free_port, wait_for

MB = 1 << 20
#: The memory target of issue 11: no single input raises the node's RSS by more than this.
RSS_BUDGET_BYTES = 256 * MB
#: The watchdog kills a node whose RSS grows this much past its start (the attack clearly won).
WATCHDOG_BYTES = 1024 * MB


def mmed_node() -> list[str]:
    exe = shutil.which("mmed-node")
    return [exe] if exe else [sys.executable, "-m", "dicom_node.app.cli"]


def _status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


class ServedNode:
    """``mmed-node serve`` in a subprocess with a config written from ``overrides``."""

    def __init__(self, tmp: Path, overrides: dict[str, Any] | None = None,
                 runner: str | None = "tests.receive_helpers:counting_runner",
                 data_dir_bytes: int | None = None) -> None:
        """``data_dir_bytes``: give the node a data_dir of that size (a tmpfs in its own mount
        namespace, so a full disk can be had without filling the machine's)."""
        self.tmp = tmp
        self.port = free_port()
        self.data_dir = tmp / "var"
        node = {"port": self.port, "data_dir": str(self.data_dir), "series_quiet_seconds": 0.3}
        config: dict[str, Any] = {
            "node": node,
            "routes": [{"name": "ct-count", "match": {"Modality": "CT"},
                        "instruction": "Count the slices.", "send_to": []}],
        }
        for key, value in (overrides or {}).items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.config_path = tmp / "node.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log = tmp / "node.log"
        cmd = [*mmed_node(), "serve", "--config", str(self.config_path)]
        if runner:
            cmd += ["--runner", runner]
        if data_dir_bytes is not None:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            mount = f'mount -t tmpfs -o size={data_dir_bytes} tmpfs "$0" && exec "$@"'
            cmd = ["unshare", "--mount", "sh", "-c", mount, str(self.data_dir), *cmd]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd, cwd=tmp, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
                stdout=out, stderr=subprocess.STDOUT,
            )
        self.killed_at_bytes: int | None = None
        self._watch_stop = threading.Event()
        wait_for(lambda: "serving AE" in self.log_text() or self.proc.poll() is not None, timeout=120)
        assert self.proc.poll() is None, self.log_text()
        self.start_rss = self.rss()
        self._watch = threading.Thread(target=self._watchdog, daemon=True)
        self._watch.start()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def rss(self) -> int:
        return _status_kb(self.proc.pid, "VmRSS") * 1024

    def peak(self) -> int:
        return _status_kb(self.proc.pid, "VmHWM") * 1024

    def reset_peak(self) -> int:
        """Reset the peak RSS to the current RSS (Linux clear_refs 5); returns the current RSS."""
        with open(f"/proc/{self.proc.pid}/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return self.rss()

    def _watchdog(self) -> None:
        while not self._watch_stop.wait(0.02):
            try:
                rss = self.rss()
            except (OSError, KeyError):
                return
            if rss - self.start_rss > WATCHDOG_BYTES:
                self.killed_at_bytes = rss
                self.proc.kill()
                return

    @contextmanager
    def memory(self) -> Iterator[dict[str, int]]:
        """Measure one attack: ``{"before", "peak", "growth"}`` in bytes, filled on exit."""
        figures: dict[str, int] = {}
        figures["before"] = self.reset_peak()
        try:
            yield figures
        finally:
            if self.killed_at_bytes is not None:
                figures["peak"] = self.killed_at_bytes
            elif self.proc.poll() is None:
                figures["peak"] = self.peak()
            else:
                figures["peak"] = -1
            figures["growth"] = figures["peak"] - figures["before"]

    def assert_alive(self) -> None:
        assert self.killed_at_bytes is None, (
            f"node killed by the watchdog at {self.killed_at_bytes / MB:.0f} MB RSS "
            f"(started at {self.start_rss / MB:.0f} MB)")
        assert self.proc.poll() is None, f"node exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}"

    def stop(self) -> None:
        self._watch_stop.set()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def stalled_connections(port: int, count: int, payload: bytes = b"") -> list[socket.socket]:
    """``count`` TCP connections that send ``payload`` (maybe nothing) and then say nothing."""
    out = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if payload:
            sock.sendall(payload)
        out.append(sock)
    return out


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        try:
            sock.close()
        except OSError:
            pass


# ---- crafted instances -------------------------------------------------------------------


def ct_dataset(rows: int = 16, cols: int = 16, **values: Any) -> Dataset:
    """A small valid CT image (no file meta); ``values`` override attributes."""
    pixels = np.arange(rows * cols, dtype=np.uint32).reshape(rows, cols) % 4000
    return ct_image(pixels, **{"PatientName": "Hostile^Test", "PatientID": "HOSTILE-1", **values})


def deflate_bomb(inflated_bytes: int) -> tuple[Dataset, bytes]:
    """A small CT whose Deflated Explicit VR LE encoding inflates to about ``inflated_bytes``:
    a private OB element of zeros (PS3.5 A.5: the whole dataset is deflated)."""
    ds = ct_dataset()
    plain = encode_dataset(ds, ExplicitVRLittleEndian)
    cut = plain.index(struct.pack("<HH", 0x7FE0, 0x0010))
    private = struct.pack("<HH", 0x0029, 0x0010) + b"LO" + struct.pack("<H", 8) + b"HOSTILE "
    private += struct.pack("<HH", 0x0029, 0x1000) + b"OB" + bytes(2) + struct.pack("<L", inflated_bytes)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out = [deflater.compress(plain[:cut] + private)]
    zeros = bytes(16 * MB)
    left = inflated_bytes
    while left:
        n = min(left, len(zeros))
        out.append(deflater.compress(zeros[:n]))
        left -= n
    out.append(deflater.compress(plain[cut:]))
    out.append(deflater.flush())
    return ds, b"".join(out)


def rle_bomb(rows: int = 65535, cols: int = 16384, **values: Any) -> tuple[Dataset, bytes]:
    """An RLE Lossless CT of a few hundred bytes declaring ``rows`` x ``cols`` 16-bit pixels
    (PS3.5 G.3: two segments per 16-bit sample, each holding a few replicate runs)."""
    ds = ct_dataset(**values)
    ds.Rows, ds.Columns = rows, cols
    del ds.PixelData
    segment = bytes([0x81, 0x00]) * 200  # replicate runs of zeros
    header = struct.pack("<16L", 2, 64, 64 + len(segment), *([0] * 13))
    frame = header + segment + segment
    encap = struct.pack("<HHL", 0xFFFE, 0xE000, 0)  # empty basic offset table
    encap += struct.pack("<HHL", 0xFFFE, 0xE000, len(frame)) + frame
    encap += struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    body = encode_dataset(ds, ExplicitVRLittleEndian)
    body += struct.pack("<HH", 0x7FE0, 0x0010) + b"OB" + bytes(2) + struct.pack("<L", 0xFFFFFFFF) + encap
    return ds, body


def deeply_nested(depth: int = 5000, **values: Any) -> tuple[Dataset, bytes]:
    """A CT with an undefined-length sequence nested ``depth`` deep after (0020,000E): in
    (0040,0275) Request Attributes Sequence, between the header and the pixel data."""
    ds = ct_dataset(**values)
    plain = encode_dataset(ds, ExplicitVRLittleEndian)
    cut = plain.index(struct.pack("<HH", 0x7FE0, 0x0010))
    open_one = (struct.pack("<HH", 0x0040, 0x0275) + b"SQ" + bytes(2) + struct.pack("<L", 0xFFFFFFFF)
                + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF))
    close_one = struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
    return ds, plain[:cut] + open_one * depth + close_one * depth + plain[cut:]


def part10(ds: Dataset, body: bytes, transfer_syntax: str) -> bytes:
    """A Part 10 file around an encoded dataset ``body`` (as the spool stores one)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_file_meta_info(fp, meta)
    return bytes(128) + b"DICM" + fp.getvalue() + body


def loading_runner(spec: JobSpec) -> dict[str, Any]:
    """A stand-in job runner (NOT the pipeline) that loads the job's series through the real
    loader, as the pipeline does first, and records what it loaded."""
    from dicom_node.jobs.pipeline import JobFailed
    from image_model.loader import LoadError, load_series

    try:
        volume = load_series(instance_files(spec))
    except LoadError as exc:
        raise JobFailed(f"cannot load series: {exc}") from None
    manifest = {"job_id": spec.job_id, "instances": len(volume.datasets), "files": [],
                "skipped": len(volume.meta.get("skipped_files", []))}
    write_json_atomic(Path(spec.result_dir) / "manifest.json", manifest)
    return manifest
