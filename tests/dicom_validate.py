"""Run dicom3tools' ``dciodvfy`` (IOD conformance, PS3.3) on a written file.

dciodvfy prints the IOD it recognised and one line per finding ("Error - ...", "Warning - ...")
on stderr; every output test asserts an empty error list.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

DCIODVFY = Path("/usr/bin/dciodvfy")
TIMEOUT_SECONDS = 60


@dataclass
class ValidationReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    output: str = ""


def dciodvfy(path: Path) -> ValidationReport:
    """All findings of ``dciodvfy path``, split into errors and warnings."""
    proc = subprocess.run(
        [str(DCIODVFY), str(path)], capture_output=True, text=True, errors="replace",
        timeout=TIMEOUT_SECONDS, check=False,
    )
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    return ValidationReport(
        errors=[line for line in lines if line.startswith("Error")],
        warnings=[line for line in lines if line.startswith("Warning")],
        output=output,
    )


def dciodvfy_errors(path: Path) -> list[str]:
    """The ``Error`` lines dciodvfy reports for ``path`` (empty when the object conforms)."""
    return dciodvfy(path).errors


def dciodvfy_warnings(path: Path) -> list[str]:
    return dciodvfy(path).warnings


def dciodvfy_own_warnings(path: Path, source: Path) -> list[str]:
    """The warnings on ``path`` that are not the source's own: attributes an output copies from
    its source (patient name, study date...) bring the source's warnings with them."""
    inherited = set(dciodvfy(source).warnings)
    return [w for w in dciodvfy(path).warnings if w not in inherited]
