"""Shared pieces for the receive/assembly/node tests: real dcmtk peers, small CT series, node
configs; the stand-in job runner and the waiting helpers come from testkit/served_node.py."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from config.loader import load_config
from config.schema import AppConfig
from testkit.crafted import ct_image

# Re-exported: the tests import them from here (and name the runner tests.receive_helpers:...).
from testkit.served_node import PROJECT_ROOT, counting_runner, free_port, wait_for  # noqa: F401

#: dcmtk binaries by absolute path: a pyenv shim named ``storescu`` (pynetdicom's app) shadows
#: dcmtk's on PATH here.
DCMTK_BIN = Path("/usr/bin")


def dcmtk_env() -> dict[str, str]:
    return {**os.environ, "TCP_NODELAY": "1"}


def storescu(
    port: int,
    files: Sequence[Path],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "MMEDNODE",
    options: Sequence[str] = (),
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` in one association with dcmtk storescu (keeps going after a failed store)."""
    cmd = [
        str(DCMTK_BIN / "storescu"),
        "-nh",
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *options,
        "127.0.0.1",
        str(port),
        *map(str, files),
    ]
    return subprocess.run(
        cmd,
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dcmtk_env(),
    )


def echoscu(port: int, calling_ae: str = "ECHOSCU") -> subprocess.CompletedProcess[str]:
    cmd = [
        str(DCMTK_BIN / "echoscu"),
        "-aet",
        calling_ae,
        "-aec",
        "MMEDNODE",
        "127.0.0.1",
        str(port),
    ]
    return subprocess.run(
        cmd, check=False, capture_output=True, text=True, timeout=30, env=dcmtk_env()
    )


def make_ct_series(
    out_dir: Path,
    n: int = 4,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    modality: str = "CT",
    rows: int = 16,
    cols: int = 16,
    start: int = 1,
) -> list[Path]:
    """Write ``n`` small single-frame CT files (explicit VR LE) of one series; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    paths = []
    rng = np.random.default_rng(len(series_uid) + start)
    for i in range(start, start + n):
        ds = ct_image(
            rng.integers(0, 2000, (rows, cols), dtype=np.uint16), modality=modality, InstanceNumber=i,
            StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid, FrameOfReferenceUID=frame_uid,
            ImagePositionPatient=[0.0, 0.0, float(i) * 2.0],
        )
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out_dir / f"IM{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def node_config(data_dir: Path, port: int, **node_overrides: Any) -> AppConfig:
    """Config for a test node: CT route without destinations, short quiet period."""
    overrides: dict[str, Any] = {
        "node": {
            "port": port,
            "data_dir": str(data_dir),
            "series_quiet_seconds": 0.3,
            **node_overrides,
        },
        "routes": [
            {
                "name": "ct-count",
                "match": {"Modality": "CT"},
                "instruction": "Count the slices.",
                "send_to": [],
            }
        ],
    }
    return load_config(overrides=overrides)


