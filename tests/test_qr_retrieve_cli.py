"""``mmed-node retrieve`` failure paths as a subprocess: an unknown PACS name and a PACS that is
down both end with a readable message and exit code 1; a missing identifier is a usage error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.receive_helpers import PROJECT_ROOT, free_port


def _retrieve(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node.app.cli", "retrieve", "--config", str(config), *args],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )


def test_retrieve_errors_are_readable(tmp_path: Path) -> None:
    config = tmp_path / "node.yaml"
    config.write_text(yaml.safe_dump({
        "node": {"data_dir": str(tmp_path / "var")},
        "destinations": {"pacs": {"ae_title": "DOWN", "host": "127.0.0.1", "port": free_port()}},
    }))
    unknown = _retrieve(config, "--accession", "A1", "--from", "elsewhere")
    assert unknown.returncode == 1
    assert "unknown PACS 'elsewhere'" in unknown.stdout
    down = _retrieve(config, "--accession", "A1", "--from", "pacs")
    assert down.returncode == 1
    assert "cannot connect to DOWN@127.0.0.1" in down.stdout
    usage = _retrieve(config, "--from", "pacs")
    assert usage.returncode == 2 and "one of the arguments --study --accession --patient" in usage.stderr
