"""The concept codes the SEG/SR encoders use, loaded once from ``codes.json`` (PS3.16 code tables
as data, not literals scattered through the encoders).

``concept(name)`` / ``unit(name)`` / ``procedure_for(modality)`` return
:class:`image_model.findings.Code`; :func:`sr_templates.coded.coded` turns one into highdicom's
CodedConcept.
"""
from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from typing import Any

from image_model.findings import Code

_TABLE_FILE = "codes.json"
_CODE_SECTIONS = ("concepts", "units", "procedures")


@lru_cache(maxsize=1)
def _table() -> dict[str, dict[str, Code]]:
    """Parse ``codes.json`` once per process (read-only afterwards)."""
    raw: dict[str, Any] = json.loads(
        resources.files(__package__).joinpath(_TABLE_FILE).read_text(encoding="utf-8")
    )
    tables = {
        section: {name: Code(*entry) for name, entry in raw[section].items()}
        for section in _CODE_SECTIONS
    }
    tables["text_roles"] = {role: tables["concepts"][key] for role, key in raw["text_roles"].items()}
    return tables


def _lookup(section: str, name: str) -> Code:
    try:
        return _table()[section][name]
    except KeyError:
        known = ", ".join(sorted(_table()[section]))
        raise KeyError(f"no {section[:-1]} named {name!r} in {_TABLE_FILE} (known: {known})") from None


def concept(name: str) -> Code:
    """A concept code by its table name, e.g. ``concept("volume")``."""
    return _lookup("concepts", name)


def unit(name: str) -> Code:
    """A UCUM unit code by its table name, e.g. ``unit("mL")``, ``unit("HU")``."""
    return _lookup("units", name)


def procedure_for(modality: str) -> Code:
    """Procedure reported (TID 1500 row 4; CID 100) for a source Modality."""
    procedures = _table()["procedures"]
    return procedures.get(modality.upper(), procedures["default"])


def text_role(role: str) -> Code:
    """Concept name for one kind of report free text (``answer``, ``instruction``, ``label``,
    ``tool_text``, ``box_label``), as chosen in codes.json's ``text_roles``."""
    return _lookup("text_roles", role)
