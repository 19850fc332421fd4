"""Downloading a catalogue entry into a model folder, with checksum verification.

Run on a machine with internet (or with a site mirror: ``mirror`` replaces every URL by
``<mirror>/<entry name>/<file path>``, or ``<mirror>/<entry name>/<archive filename>``). Each file
streams into a ``.part`` file beside its destination while its digests are computed; it is renamed
into place only when every published checksum matches, so a failed or tampered download leaves
nothing that looks like a model. A file already present with the published checksum is kept.
Archives (MONAI bundles are zips) are extracted member by member, refusing absolute paths, ``..``,
links and more than :data:`MAX_ARCHIVE_MEMBERS` members or :data:`MAX_ARCHIVE_BYTES` bytes.

Weight files without a published checksum are downloaded only when the caller allows it; every
download's SHA256 goes into the folder's manifest (:data:`tools.model_catalogue.MANIFEST_NAME`), so
``models verify`` can tell later whether a file changed.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from tools.model_catalogue import MANIFEST_NAME, Checksums, ModelEntry, ModelFile

CHUNK = 1 << 20
#: Bounds on an archive's contents (a MONAI bundle is tens of files and well under 1 GB).
MAX_ARCHIVE_MEMBERS = 2000
MAX_ARCHIVE_BYTES = 8 << 30
TIMEOUT_SECONDS = 60.0

#: ``progress(description, total_bytes_or_None)`` -> a callable taking the bytes just read.
ProgressFactory = Callable[[str, "int | None"], Any]


class FetchError(RuntimeError):
    """The entry could not be fetched; nothing partial is left at the destination."""


@dataclass
class FetchReport:
    entry: str
    folder: Path
    downloaded: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    #: Files whose checksum the release does not publish (their SHA256 is in the manifest).
    unverified: list[str] = field(default_factory=list)


def file_digests(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    hashes = {a: hashlib.new(a) for a in algorithms}
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            for h in hashes.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hashes.items()}


def check_digests(expected: Checksums, actual: dict[str, str], what: str) -> None:
    for algorithm, digest in expected.published().items():
        if actual.get(algorithm) != digest:
            raise FetchError(f"{what}: {algorithm} mismatch (expected {digest}, got {actual.get(algorithm)})")


def source_url(entry: ModelEntry, name: str, official: str | None, mirror: str | None) -> str:
    if mirror:
        return f"{mirror.rstrip('/')}/{entry.name}/{name}"
    if official is None:
        raise FetchError(f"{entry.name}: {name} has no direct download. {entry.manual or ''}".strip())
    return official


def _algorithms(expected: Checksums) -> tuple[str, ...]:
    return tuple(dict.fromkeys(("sha256", *expected.published())))


def download(url: str, dest: Path, expected: Checksums, *, size: int | None = None,
             progress: ProgressFactory | None = None, timeout: float = TIMEOUT_SECONDS) -> dict[str, str]:
    """Stream ``url`` to ``dest`` (via ``dest.part``), check ``expected``; the digests of the file."""
    if not url.startswith(("http://", "https://")):
        raise FetchError(f"refusing to download from {url!r}: only http(s)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    hashes = {a: hashlib.new(a) for a in _algorithms(expected)}
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "mmedagent-node models fetch"})
        with urllib.request.urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            announced = response.headers.get("Content-Length")
            total = int(announced) if announced and announced.isdigit() else size
            if size is not None and total is not None and total != size:
                raise FetchError(f"{url}: the server announces {total} bytes, the release has {size}")
            done = 0
            update = progress(dest.name, total) if progress else None
            for block in iter(lambda: response.read(CHUNK), b""):
                done += len(block)
                if size is not None and done > size:
                    raise FetchError(f"{url}: more than the {size} bytes the release has")
                for h in hashes.values():
                    h.update(block)
                out.write(block)
                if update:
                    update(len(block))
            out.flush()
            os.fsync(out.fileno())
        digests = {a: h.hexdigest() for a, h in hashes.items()}
        check_digests(expected, digests, dest.name)
        os.replace(part, dest)
        return digests
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise FetchError(f"{url}: {getattr(exc, 'reason', exc)}") from None
    finally:
        part.unlink(missing_ok=True)


def _members(archive: zipfile.ZipFile, strip: str) -> list[tuple[zipfile.ZipInfo, str]]:
    """(member, path inside the model folder) for each file of a zip, rejecting unsafe ones."""
    infos = archive.infolist()
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise FetchError(f"archive has {len(infos)} members (limit {MAX_ARCHIVE_MEMBERS})")
    if sum(i.file_size for i in infos) > MAX_ARCHIVE_BYTES:
        raise FetchError(f"archive unpacks to more than {MAX_ARCHIVE_BYTES} bytes")
    out = []
    for info in infos:
        name = info.filename
        if stat.S_ISLNK(info.external_attr >> 16):
            raise FetchError(f"archive member {name!r} is a link")
        pure = PurePosixPath(name)
        if pure.is_absolute() or ".." in pure.parts or "\\" in name:
            raise FetchError(f"archive member {name!r} escapes the model folder")
        if info.is_dir():
            continue
        if strip and not name.startswith(strip):
            raise FetchError(f"archive member {name!r} is not under {strip!r}")
        out.append((info, name[len(strip):]))
    return out


def _extract(zip_path: Path, folder: Path, strip: str) -> list[str]:
    try:
        with zipfile.ZipFile(zip_path) as archive:
            written = []
            for info, relative in _members(archive, strip):
                dest = folder / relative
                dest.parent.mkdir(parents=True, exist_ok=True)
                part = dest.with_name(dest.name + ".part")
                with archive.open(info) as src, open(part, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
                os.replace(part, dest)
                written.append(relative)
            return written
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{zip_path.name}: not a zip archive ({exc})") from None


def _present(folder: Path, spec: ModelFile) -> bool:
    """Whether ``spec`` is already in ``folder`` with its published checksum."""
    path = folder / spec.path
    if not path.is_file() or not spec.published():
        return False
    return all(file_digests(path, (a,))[a] == d for a, d in spec.published().items())


def apply_rewrites(entry: ModelEntry, folder: Path) -> None:
    """Set the JSON keys the entry names (e.g. point open_clip at its local text-tower config)."""
    for rewrite in entry.rewrites:
        path = folder / rewrite.file
        data = json.loads(path.read_text(encoding="utf-8"))
        node = data
        for key in rewrite.pointer[:-1]:
            node = node[key]
        node[rewrite.pointer[-1]] = rewrite.value.replace("{dir}", str(folder.resolve()))
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def fetch(entry: ModelEntry, folder: Path, *, mirror: str | None = None, allow_unverified: bool = False,
          progress: ProgressFactory | None = None, timeout: float = TIMEOUT_SECONDS) -> FetchReport:
    """Download ``entry`` into ``folder``; :class:`FetchError` says why it could not."""
    if not mirror and not entry.direct_download():
        raise FetchError(f"{entry.name} has no direct download. {entry.manual}")
    unverified = entry.unverified_weights()
    if unverified and not allow_unverified:
        raise FetchError(
            f"{entry.name}: no published checksum covers {', '.join(unverified)}; pass --allow-unverified "
            "to accept the download as it comes (its SHA256 is recorded in the folder's manifest)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    report = FetchReport(entry.name, folder, unverified=list(unverified))
    digests: dict[str, str] = {}
    started = time.time()
    if entry.archive is not None:
        archive = entry.archive
        url = source_url(entry, archive.filename, archive.url, mirror)
        staging = folder / ".download"
        zip_path = staging / archive.filename
        try:
            download(url, zip_path, archive, progress=progress, timeout=timeout)
            for relative in _extract(zip_path, folder, archive.strip_prefix):
                report.downloaded.append(relative)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        for spec in entry.files:
            path = folder / spec.path
            if not path.is_file():
                if spec.required:
                    raise FetchError(f"{entry.name}: the archive has no {spec.path}")
                continue
            actual = file_digests(path, _algorithms(spec))
            check_digests(spec, actual, spec.path)
    else:
        for spec in entry.files:
            if _present(folder, spec):
                report.kept.append(spec.path)
                continue
            url = source_url(entry, spec.path, spec.url, mirror)
            try:
                digests[spec.path] = download(url, folder / spec.path, spec, size=spec.size_bytes,
                                              progress=progress, timeout=timeout)["sha256"]
            except FetchError:
                if spec.required:
                    raise
                continue
            report.downloaded.append(spec.path)
    apply_rewrites(entry, folder)
    write_manifest(entry, folder, mirror, started)
    return report


def write_manifest(entry: ModelEntry, folder: Path, mirror: str | None, started: float) -> None:
    """Record the entry, its revision and the SHA256 of every file now in the folder."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(folder).as_posix()] = file_digests(path)["sha256"]
    manifest = {
        "entry": entry.name, "revision": entry.revision, "source": "mirror" if mirror else "official",
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)), "files": files,
    }
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
