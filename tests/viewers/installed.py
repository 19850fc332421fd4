"""Where scripts/setup_viewers.sh installs the viewers, and one check that they are there.

A developer who has not run the set-up gets a skip that names the script; CI (``CI=true``, where
.ci/run has run the set-up) gets a failure instead, so a broken install never passes as skipped.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
OHIF_DIST = HERE / "ohif" / "dist"
CHROMIUM = Path("/usr/bin/chromium")
SETUP = "scripts/setup_viewers.sh"
NODE_TIMEOUT_S = 180


def require(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if shutil.which("node") is None:
        missing.append("node")
    if missing:
        message = f"viewer not installed ({', '.join(missing)}): run {SETUP}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def run_node(script: str, request: dict[str, Any], work: Path) -> dict[str, Any]:
    """Run one of this folder's Node scripts on a JSON request; its stdout's last line is the report."""
    work.mkdir(parents=True, exist_ok=True)
    request_file = work / f"{Path(script).stem}-request.json"
    request_file.write_text(json.dumps(request, default=str))
    proc = subprocess.run(
        ["node", str(HERE / script), str(request_file)], cwd=HERE, capture_output=True, text=True,
        timeout=NODE_TIMEOUT_S, check=False,
    )
    (work / f"{Path(script).stem}.log").write_text(proc.stdout + "\n" + proc.stderr)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, f"{script} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(lines[-1])
    return report
