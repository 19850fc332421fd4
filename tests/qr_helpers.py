"""Shared pieces for the Query/Retrieve, TLS and Orthanc tests: phantom studies with an
accession number, dcmtk findscu/movescu/getscu wrappers, and a node fixture factory."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset

from config.loader import load_config
from config.schema import AppConfig
from dicom_node.jobs.manifest import Manifest
from dicom_node.jobs.pipeline import WorkerContext, run_job
from dicom_node.jobs.runner import JobRunner
from dicom_node.jobs.spec import JobSpec
from testkit.phantoms import PhantomTruth, write_ct_phantom
from tests.receive_helpers import DCMTK_BIN, dcmtk_env
from tools.registry import ToolRegistry

#: Small phantom: fast through the real pipeline, still a proper lung CT (see testkit/phantoms.py).
PHANTOM = {"slices": 16, "rows": 64, "cols": 64, "slice_spacing": 8.0}


def write_study(
    out_dir: Path, *, accession: str = "", patient_id: str = "PHANTOM^1", seed: int = 0,
    series_description: str = "Lung phantom",
) -> PhantomTruth:
    """A phantom CT series with the given Accession Number and Patient ID."""
    truth = write_ct_phantom(out_dir, patient_id=patient_id, seed=seed, **PHANTOM)  # type: ignore[arg-type]
    for path in truth.files:
        ds = pydicom.dcmread(path)
        ds.AccessionNumber = accession
        ds.SeriesDescription = series_description
        ds.save_as(path, enforce_file_format=True)
    return truth


def dcmtk(tool: str, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(DCMTK_BIN / tool), *args], capture_output=True, text=True, timeout=timeout,
        env=dcmtk_env(), check=False,
    )


def keys(level: str, **values: str) -> list[str]:
    """``-k`` arguments: the level plus ``Keyword=value`` (empty value: return key)."""
    out = ["-k", f"QueryRetrieveLevel={level}"]
    for keyword, value in values.items():
        out += ["-k", f"{keyword}={value}" if value else keyword]
    return out


def findscu(
    port: int, out_dir: Path, level: str, *, model: str = "-S", called: str = "MMEDNODE",
    **values: str,
) -> tuple[subprocess.CompletedProcess[str], list[Dataset]]:
    """Run dcmtk findscu (``-S`` study root, ``-P`` patient root); responses read back."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("rsp*.dcm"):
        old.unlink()
    proc = dcmtk("findscu", [
        model, "-aet", "FINDSCU", "-aec", called, "-X", "-od", str(out_dir),
        *keys(level, **values), "127.0.0.1", str(port),
    ])
    return proc, [pydicom.dcmread(p) for p in sorted(out_dir.glob("rsp*.dcm"))]


def node_config(tmp: Path, port: int, destinations: dict[str, Any], **extra: Any) -> AppConfig:
    node = {"port": port, "data_dir": str(tmp / "var"), "series_quiet_seconds": 0.3}
    node.update(extra.pop("node", {}))
    return load_config(overrides={
        "node": node,
        "destinations": destinations,
        "routes": extra.pop("routes", [{
            "name": "ct-lungs", "match": {"Modality": "CT"},
            "instruction": "Segment the lungs and measure their volumes.",
            "send_to": [],
        }]),
        **extra,
    })


@lru_cache(maxsize=1)
def tool_registry() -> ToolRegistry:
    """One tool registry for every test node of the session: building it imports and sets up
    every tool (~10 s on a busy 2-core machine); the node itself builds it once per process."""
    return ToolRegistry(load_config().tools)


def pipeline_runner(config: AppConfig) -> JobRunner:
    """The real pipeline (``run_job``) for ``config``, with the shared tool registry."""
    ctx = WorkerContext(config=config, registry=tool_registry())

    def run(spec: JobSpec) -> Manifest:
        return run_job(spec, ctx)

    return run
