"""MMedAgent-format record files (LLaVA JSON lines): reading the conversations and their images.

Shared by ``agent eval`` (:mod:`agent.evaluate`) and ``agent train`` (:mod:`agent.training`), so a
record's image is what the planner would see live in both: a PNG/JPEG as RGB, or a DICOM file or
series folder rendered by :func:`agent.render.render_key_image` (windowing, key slice).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from agent.protocol import Conversation, ProtocolError

if TYPE_CHECKING:
    from image_model.volume import Volume


def read_records(path: Path) -> list[Conversation]:
    """Every conversation in a JSON-lines file (blank lines skipped); errors name the line."""
    records = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(Conversation.from_llava_json(line))
            except ProtocolError as exc:
                raise ProtocolError(f"{path}:{number}: {exc}") from None
    return records


@dataclass(frozen=True)
class RecordImage:
    """A record's image as the planner sees it (uint8 RGB, rows x cols x 3), and the series it was
    rendered from (None for a PNG/JPEG)."""

    rgb: np.ndarray
    volume: Volume | None = None


def is_dicom_image(path: Path) -> bool:
    """A record names DICOM by a series folder, a ``.dcm`` file or a file without suffix."""
    return path.is_dir() or path.suffix.lower() in (".dcm", "")


def load_record_image(path: Path) -> RecordImage:
    """The image at ``path`` (already joined to the data file's folder) as the planner sees it."""
    if is_dicom_image(path):
        from agent.render import render_key_image
        from image_model.loader import load_series

        volume = load_series(path)
        return RecordImage(render_key_image(volume), volume)
    from PIL import Image

    with Image.open(path) as img:
        return RecordImage(np.asarray(img.convert("RGB")))
