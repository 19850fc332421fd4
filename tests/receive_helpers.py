"""Shared pieces for the receive/assembly/node tests: real dcmtk peers, small CT series,
and a job runner that does real work on the spooled instances (it is not the pipeline)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from config.loader import load_config
from config.schema import AppConfig
from dicom_node.atomic import write_json_atomic
from dicom_node.jobs.pipeline import JobSpec

#: dcmtk binaries by absolute path: a pyenv shim named ``storescu`` (pynetdicom's app) shadows
#: dcmtk's on PATH here.
DCMTK_BIN = Path("/usr/bin")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


def ct_image(pixels: np.ndarray, modality: str = "CT", **values: Any) -> Dataset:
    """One single-frame CT-like image of 16-bit ``pixels`` (no file meta); ``values`` override
    attributes (new UIDs by default)."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = generate_uid()
    ds.PatientName = "Test^Receive"
    ds.PatientID = "RX-1"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [0.0, 0.0, 0.0]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.0, 1.0]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


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


def counting_runner(spec: JobSpec) -> dict[str, Any]:
    """A stand-in job runner (NOT the pipeline): decodes every spooled instance of the series and
    records the instance count, SOP UIDs and pixel sums in the manifest."""
    paths = sorted(Path(spec.series_dir).glob("*.dcm"))
    sops, sums = [], []
    for path in paths:
        ds = pydicom.dcmread(path)
        sops.append(str(ds.SOPInstanceUID))
        sums.append(int(np.asarray(ds.pixel_array, dtype=np.int64).sum()))
    manifest = {
        "job_id": spec.job_id,
        "instance_count": len(paths),
        "sop_uids": sorted(sops),
        "pixel_sums": sums,
        "files": [],
    }
    write_json_atomic(Path(spec.result_dir) / "manifest.json", manifest)
    return manifest


def wait_for(
    predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
