"""Destinations that refuse Segmentation Storage, and what they get instead: decided here only.

Some PACS reject the Segmentation Storage SOP classes (PS3.4 Annex B.5); a destination configured
with ``accepts_seg: false`` gets each SEG skipped and, where the job produced them, the
secondary-capture overlay images that stand in for it (PS3.3 A.8.1). The pipeline asks
:func:`needs_stand_ins` whether to render overlays at all; the outbox asks :func:`files_for`
which files one delivery sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from highdicom.seg import SOP_CLASS_UIDS as SEG_SOP_CLASS_UIDS
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pydicom.uid import SurfaceSegmentationStorage

from config.schema import AppConfig

#: SOP classes a destination with ``accepts_seg: false`` does not get (PS3.4 Annex B.5).
SEGMENTATION_SOP_CLASSES = frozenset({*SEG_SOP_CLASS_UIDS, str(SurfaceSegmentationStorage)})


def refuses_seg(config: AppConfig, destination: str) -> bool:
    """Whether the configured destination does not take Segmentation Storage."""
    dest = config.destinations.get(destination)
    return dest is not None and not dest.accepts_seg


def needs_stand_ins(config: AppConfig, destinations: Iterable[str]) -> bool:
    """Whether some of ``destinations`` refuses SEG, so a job sending there renders overlays."""
    return any(refuses_seg(config, name) for name in destinations)


def is_segmentation(path: Path) -> bool:
    """Whether the file is a SEG, by the SOP class in its file meta (an unreadable file is not:
    the sender reports it when it tries to send it)."""
    try:
        return str(read_file_meta_info(path).MediaStorageSOPClassUID) in SEGMENTATION_SOP_CLASSES
    except (OSError, InvalidDicomError, AttributeError):
        return False


@dataclass
class DeliveryFiles:
    """What one delivery sends: ``send``; SEG files left out with the reason (``skipped``); and
    the overlays that replace each skipped SEG (``replaced``, also in ``send``)."""

    send: list[str]
    skipped: dict[str, str] = field(default_factory=dict)
    replaced: dict[str, list[str]] = field(default_factory=dict)


def files_for(
    config: AppConfig,
    destination: str,
    paths: list[str],
    seg_files: set[str],
    stand_ins: Mapping[str, list[str]],
) -> DeliveryFiles:
    """The files of one delivery of ``paths`` to ``destination``. A destination that refuses SEG
    gets each SEG skipped and its stand-ins (if any) in its place; one that takes SEG never gets
    the stand-ins."""
    if not refuses_seg(config, destination):
        return DeliveryFiles(list(paths))
    out = DeliveryFiles([])
    for path in paths:
        out.send.append(path)
        if path not in seg_files:
            continue
        others = stand_ins.get(path, [])
        why = f"destination {destination} does not accept Segmentation Storage"
        if others:
            why += f"; replaced by {len(others)} secondary-capture overlay image(s)"
            out.replaced[path] = others
            out.send.extend(others)
        out.skipped[path] = why
    return out
