"""``mmed-node`` command groups (listed in :data:`dicom_node.app.cli.COMMAND_GROUPS`), and what they share."""
from __future__ import annotations

from typing import TYPE_CHECKING, TextIO

from config.loader import ConfigError, load_config

if TYPE_CHECKING:
    from config.schema import AppConfig


def load_config_or_report(path: str | None, stream: TextIO | None = None) -> AppConfig | None:
    """``load_config(path)``, or None after printing why it failed (the :class:`ConfigError` names the
    file and the key) to ``stream`` (stdout when None); the command then returns its exit code."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=stream)
        return None
