"""A loopback mirror of model releases for the ``models fetch`` tests, and catalogues pointing at it.

The mirror is a real HTTP server (the standard library's file server) on 127.0.0.1 serving a folder
laid out as ``<entry>/<file>``, the layout ``models fetch --mirror`` asks for. Its files are tiny
random-weight checkpoints in the real formats (testkit/tiny_models.py, testkit/model_files.py).
"""
from __future__ import annotations

import functools
import hashlib
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

from tests.loopback_http import quiet, serve_loopback
from tools.model_catalogue import CATALOGUE_FILE


@contextmanager
def mirror_server(root: Path) -> Iterator[str]:
    """Serve ``root`` on a free loopback port; yields the base URL."""
    with serve_loopback(functools.partial(quiet(SimpleHTTPRequestHandler), directory=str(root))) as base:
        yield base


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def real_entry(name: str) -> dict[str, Any]:
    """A copy of the shipped catalogue's entry ``name`` (as JSON data)."""
    data = json.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))
    return next(e for e in data["entries"] if e["name"] == name)


def write_catalogue(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"schema_version": 1, "entries": entries}, indent=1), encoding="utf-8")
    return path


def zip_folder(folder: Path, archive: Path, prefix: str, extra: dict[str, bytes] | None = None) -> Path:
    """``folder`` as a zip whose members sit under ``prefix`` (as MONAI bundle zips do)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, prefix + path.relative_to(folder).as_posix())
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return archive
