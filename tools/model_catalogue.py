"""The model catalogue: for each tool, which model it needs and where the official release lives.

The catalogue is data (``model_catalogue.json`` beside this module), validated by the pydantic models
below: per entry the tools that use it, the on-disk format the tool's loader reads, the release page,
licence, pinned revision, the expected files with their download URL and published checksum (null
where the release publishes none: never guessed), the steps when there is no direct download, the
``tools:``/``planner:`` config to paste (``{dir}`` stands for the model folder) and where each fact
came from. ``mmed-node models list|verify|fetch`` (``dicom_node/app/commands/models.py``) read it;
:mod:`tools.model_verify` and :mod:`tools.model_fetch` act on it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CATALOGUE_FILE = Path(__file__).with_name("model_catalogue.json")
#: Written by ``models fetch`` into the model folder: what was downloaded, with its SHA256.
MANIFEST_NAME = ".mmed-model.json"
DIR_PLACEHOLDER = "{dir}"

#: On-disk formats, each read by one loader of the project:
#: sam-state-dict (tools.medsam), grounding-dino-hf (tools.grounding), monai-bundle
#: (tools.monai_loading), open-clip (tools.classify), hf-causal-lm (tools.report),
#: sentence-transformers (tools.retrieval), llava-planner (agent.planners.hf); and
#: grounding-dino-original, a checkpoint that must be converted first.
ModelFormat = Literal[
    "sam-state-dict", "grounding-dino-hf", "grounding-dino-original", "monai-bundle", "open-clip",
    "hf-causal-lm", "sentence-transformers", "llava-planner",
]
_HEX = {"sha256": 64, "md5": 32, "sha1": 40}
#: Suffixes of weight files: ``fetch`` accepts one without a published checksum only when told to.
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _relative(path: str) -> str:
    pure = PurePosixPath(path)
    if pure.is_absolute() or ".." in pure.parts or not pure.parts or "\\" in path:
        raise ValueError(f"{path!r} must be a relative path inside the model folder")
    return pure.as_posix()


def _url(url: str | None) -> str | None:
    if url is not None and not re.match(r"^https?://[^/\s]+/", url):
        raise ValueError(f"{url!r} is not an http(s) URL")
    return url


class Checksums(_Strict):
    """Digests as the release publishes them (hex); at most what was published."""

    sha256: str | None = None
    md5: str | None = None
    sha1: str | None = None
    #: Where the checksum comes from, or why there is none.
    checksum_note: str | None = None

    @model_validator(mode="after")
    def _hex(self) -> Checksums:
        for name, length in _HEX.items():
            value = getattr(self, name)
            if value is not None and not re.fullmatch(rf"[0-9a-f]{{{length}}}", value):
                raise ValueError(f"{name} must be {length} lower-case hex digits")
        return self

    def published(self) -> dict[str, str]:
        """algorithm -> expected hex digest, for the ones published."""
        return {name: getattr(self, name) for name in _HEX if getattr(self, name)}


class ModelFile(Checksums):
    #: Where the file goes inside the model folder (POSIX, relative).
    path: str
    #: Direct download URL of the official release; null when there is none.
    url: str | None = None
    size_bytes: int | None = Field(None, ge=0)
    #: Optional files are checked when present (a licence file, an md5 list).
    required: bool = True

    _path = field_validator("path")(classmethod(lambda cls, v: _relative(v)))
    _link = field_validator("url")(classmethod(lambda cls, v: _url(v)))


class Archive(Checksums):
    """A release shipped as one zip whose members are the entry's files."""

    filename: str
    url: str | None = None
    #: Leading folder of every member, removed on extraction.
    strip_prefix: str = ""

    _link = field_validator("url")(classmethod(lambda cls, v: _url(v)))

    @field_validator("filename")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if "/" in v or "\\" in v or v in ("", ".", ".."):
            raise ValueError("archive filename must be a plain file name")
        return v


class JsonRewrite(_Strict):
    """After download, set one key of a JSON file (``{dir}`` = the model folder)."""

    file: str
    pointer: list[str] = Field(min_length=1)
    value: str

    _path = field_validator("file")(classmethod(lambda cls, v: _relative(v)))


class ModelEntry(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    title: str
    #: Tool API names (and planner/retrieval roles) that read this model.
    used_by: list[str] = Field(min_length=1)
    format: ModelFormat
    #: The official release page.
    release: str
    licence: str
    licence_note: str | None = None
    revision: str | None = None
    files: list[ModelFile] = Field(default_factory=list)
    archive: Archive | None = None
    #: Steps when the release has no direct download (or needs conversion).
    manual: str | None = None
    #: Config to paste; ``{dir}`` stands for the model folder.
    config: dict[str, Any]
    rewrites: list[JsonRewrite] = Field(default_factory=list)
    #: Where the facts of this entry come from.
    sources: list[str] = Field(min_length=1)
    notes: list[str] = Field(default_factory=list)

    _link = field_validator("release")(classmethod(lambda cls, v: _url(v)))

    @model_validator(mode="after")
    def _fetchable_or_explained(self) -> ModelEntry:
        paths = [f.path for f in self.files]
        if len(paths) != len(set(paths)):
            raise ValueError(f"{self.name}: a file is listed twice")
        if not self.direct_download() and not self.manual:
            raise ValueError(f"{self.name}: no direct download for every file, so `manual` steps are required")
        if DIR_PLACEHOLDER not in json.dumps(self.config):
            raise ValueError(f"{self.name}: config must name the model folder as {DIR_PLACEHOLDER}")
        return self

    def direct_download(self) -> bool:
        """Whether ``fetch`` can get every required file from the official release."""
        if self.archive is not None:
            return self.archive.url is not None
        required = [f for f in self.files if f.required]
        return bool(required) and all(f.url for f in required)

    def unverified_weights(self) -> list[str]:
        """Downloads holding weights that no published checksum covers (the archive, or weight
        files; small config and tokenizer files are listed in the fetch manifest instead)."""
        if self.archive is not None:
            return [] if self.archive.published() else [self.archive.filename]
        return [f.path for f in self.files if f.path.endswith(WEIGHT_SUFFIXES) and not f.published()]

    def rendered_config(self, folder: Path) -> dict[str, Any]:
        """:attr:`config` with ``{dir}`` replaced by ``folder`` (absolute)."""
        return _render(self.config, str(folder.resolve()))


def _render(value: Any, folder: str) -> Any:
    if isinstance(value, str):
        return value.replace(DIR_PLACEHOLDER, folder)
    if isinstance(value, list):
        return [_render(v, folder) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, folder) for k, v in value.items()}
    return value


class Catalogue(_Strict):
    schema_version: Literal[1]
    about: str = ""
    entries: list[ModelEntry]

    @model_validator(mode="after")
    def _unique(self) -> Catalogue:
        names = [e.name for e in self.entries]
        if len(names) != len(set(names)):
            raise ValueError("two catalogue entries share a name")
        return self

    def get(self, name: str) -> ModelEntry:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"no model {name!r} in the catalogue; known: {', '.join(e.name for e in self.entries)}")


def load_catalogue(path: Path | None = None) -> Catalogue:
    """The catalogue at ``path`` (default: the one shipped with the node), validated."""
    source = path or CATALOGUE_FILE
    return Catalogue.model_validate(json.loads(source.read_text(encoding="utf-8")))
