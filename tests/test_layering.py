"""The import graph points one way: ``lint-imports`` checks the layers written in setup.cfg
(``[importlinter]``) and fails on any upward or circular import between packages."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("lint-imports")
    cmd = [exe] if exe else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run(cmd, check=False, cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(cwd), "PATH": "/usr/bin:/bin"})


def test_packages_import_downward_only() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_an_upward_import_is_caught(tmp_path: Path) -> None:
    """The check can fail: a copy of the tree where the bottom layer imports the node breaks it."""
    for name in ("image_model", "config", "tools", "sr_templates", "agent", "dicom_node"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    (tmp_path / "image_model" / "upward.py").write_text(
        textwrap.dedent("from dicom_node.app import node  # noqa: F401\n"))
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "image_model is not allowed to import dicom_node" in result.stdout
