"""Character set of an output (PS3.3 C.12.1.1.2, PS3.5 6.1).

highdicom copies the source's Specific Character Set, which is right while everything the node
adds is ASCII. Agent answers and labels are free text and may hold any character ("≥", "—",
non-Latin scripts) that the source's repertoire (often the default, ASCII only) cannot encode:
then the output is declared UTF-8 (ISO_IR 192), which encodes every value, including the source
patient attributes pydicom decodes and re-encodes on write.

A source value highdicom cannot copy as it is gets an explicit equivalent: the usual ISO 2022 form
with an empty first value (``\\ISO 2022 IR 87``, Japanese) names its default repertoire
``ISO 2022 IR 6`` (PS3.3 C.12.1.1.2: an empty value 1 means ISO 2022 IR 6); an empty or unknown
value becomes UTF-8, which encodes whatever pydicom decoded.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from highdicom.valuerep import SpecificCharacterSetValues

if TYPE_CHECKING:
    from image_model.volume import Volume

UTF8 = "ISO_IR 192"
#: The default repertoire under ISO 2022 code extensions (PS3.3 C.12.1.1.2, Table C.12-3).
ISO2022_DEFAULT = "ISO 2022 IR 6"
_KNOWN = frozenset(value.value for value in SpecificCharacterSetValues)


def character_set_for(
    added_texts: Iterable[str | None], source: str | Sequence[str] | None = None
) -> str | list[str] | None:
    """None (keep the source's character set ``source``) when every added text is ASCII and
    highdicom can copy ``source`` as it is; else an explicit equivalent of it, or UTF-8."""
    if not all(text is None or text.isascii() for text in added_texts):
        return UTF8
    return _explicit_source(source)


def _explicit_source(source: str | Sequence[str] | None) -> str | list[str] | None:
    if source is None:
        return None
    given = [str(v) for v in ([source] if isinstance(source, str) else source)]
    values = [v.strip() for v in given]
    if len(values) > 1 and not values[0]:
        values[0] = ISO2022_DEFAULT
    if not all(v in _KNOWN for v in values):
        return UTF8
    if values == given:
        return None
    return values[0] if len(values) == 1 else values


def charset_kwargs(charset: str | list[str] | None) -> dict[str, Any]:
    """highdicom constructor keyword: absent (copy the source's) or the chosen character set."""
    return {"specific_character_set": charset} if charset else {}


def source_charset(volume: Volume) -> str | list[str] | None:
    """The Specific Character Set of the source's first instance (what highdicom would copy)."""
    if not volume.datasets:
        return None
    value = volume.datasets[0].get("SpecificCharacterSet")
    return None if value is None else (value if isinstance(value, str) else list(value))
