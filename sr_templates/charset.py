"""Character set of an output (PS3.3 C.12.1.1.2, PS3.5 6.1).

highdicom copies the source's Specific Character Set, which is right while everything the node
adds is ASCII. Agent answers and labels are free text and may hold any character ("≥", "—",
non-Latin scripts) that the source's repertoire (often the default, ASCII only) cannot encode:
then the output is declared UTF-8 (ISO_IR 192), which encodes every value, including the source
patient attributes pydicom decodes and re-encodes on write.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

UTF8 = "ISO_IR 192"


def character_set_for(added_texts: Iterable[str | None]) -> str | None:
    """None (keep the source's character set) when every added text is ASCII, else UTF-8."""
    if all(text is None or text.isascii() for text in added_texts):
        return None
    return UTF8


def charset_kwargs(charset: str | None) -> dict[str, Any]:
    """highdicom constructor keyword: absent (copy the source's) or the chosen character set."""
    return {"specific_character_set": charset} if charset else {}
