"""``mmed-node rules test`` run as a subprocess, on real DICOM files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.outbox_helpers import payload

RULES: dict[str, Any] = {
    "destinations": {
        "pacs": {"ae_title": "PACS", "host": "127.0.0.1", "port": 4242},
        "viewer": {"ae_title": "VIEWER", "host": "127.0.0.1", "port": 4243},
    },
    "routing_mode": "all",
    "routes": [
        {"name": "ct-lungs", "instruction": "Segment the lungs.", "send_to": ["pacs", "viewer"],
         "match": {"Modality": "CT", "ImageType": {"contains": "AXIAL"},
                   "SliceThickness": {"le": 5}}},
        {"name": "mr-from-er", "instruction": "Describe.", "priority": 10, "send_to": ["pacs"],
         "match": {"Modality": "MR", "CallingAETitle": "ER_PACS"}},
        {"name": "catch-all", "fallback": True, "instruction": "Classify."},
    ],
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dicom_node.app.cli", "rules", "test", *args],
                          capture_output=True, text=True, timeout=60, check=False)


def write_config(tmp_path: Path, data: dict[str, Any]) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_ct_file_fires_ct_route_and_explains(tmp_path: Path) -> None:
    (ct,) = payload(tmp_path / "in", "CT_small.dcm")
    proc = run_cli(str(ct), "--config", str(write_config(tmp_path, RULES)), "--calling-ae", "ORTHANC")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "ct-lungs (priority 0): FIRES" in out
    assert "SliceThickness le 5.0: held (value '5.000000' <= 5)" in out
    assert "mr-from-er (priority 10): no match" in out
    assert "CallingAETitle equals 'ER_PACS': failed (value 'ORTHANC')" in out
    assert "catch-all" in out and "fallback: another route fired" in out
    assert "send to: pacs, viewer" in out


def test_folder_json_and_called_ae(tmp_path: Path) -> None:
    folder = tmp_path / "series"
    payload(folder, "MR_small.dcm")
    (folder / "README.txt").write_text("not DICOM")  # skipped: the first DICOM file is used
    proc = run_cli(str(folder), "--config", str(write_config(tmp_path, RULES)),
                   "--calling-ae", "ER_PACS", "--json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["fired"] == ["mr-from-er"]
    assert data["file"].endswith("MR_small.dcm")
    assert data["called_ae"] == "MMEDNODE"
    routes = {r["name"]: r for r in data["routes"]}
    assert routes["mr-from-er"]["fires"] and routes["mr-from-er"]["matched"]
    assert not routes["ct-lungs"]["matched"]
    assert {c["key"] for c in routes["mr-from-er"]["checks"]} == {"Modality", "CallingAETitle"}


def test_no_route_exits_1_and_errors_exit_2(tmp_path: Path) -> None:
    (mr,) = payload(tmp_path / "in", "MR_small.dcm")
    strict = {**RULES, "routes": RULES["routes"][:1]}
    proc = run_cli(str(mr), "--config", str(write_config(tmp_path, strict)))
    assert proc.returncode == 1
    assert "no route fires" in proc.stdout

    assert run_cli(str(tmp_path / "missing.dcm")).returncode == 2
    bad = {"routes": [{"name": "oops", "instruction": "x", "match": {"Modality": {"regexp": "CT"}}}]}
    proc = run_cli(str(mr), "--config", str(write_config(tmp_path, bad)))
    assert proc.returncode == 2
    assert "routes.0.match.Modality.regexp (route 'oops')" in proc.stderr
