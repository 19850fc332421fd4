"""UID checks (PS3.5 Section 9.1) applied before a UID becomes part of a file path.

A UID read off the network is untrusted input: ``../`` or a 2 kB string must never reach the
file system. PS3.5 9.1: components of digits separated by ``.``, no leading zero in a
multi-digit component, at most 64 characters in total.
"""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")


class InvalidUID(ValueError):
    """A value that is not a valid DICOM UID; the message names the attribute, never the value.
    ``attribute`` is that name."""

    def __init__(self, message: str, attribute: str = "UID") -> None:
        super().__init__(message)
        self.attribute = attribute


def validate_uid(value: object, what: str = "UID") -> str:
    """Return ``value`` as a clean UID string or raise :class:`InvalidUID`.

    Trailing NUL/space padding (PS3.5 6.2: UI values are padded with NUL to even length) is
    removed first; nothing else is altered.
    """
    if value is None:
        raise InvalidUID(f"{what} is missing", what)
    text = str(value).rstrip("\x00 ")
    if not text:
        raise InvalidUID(f"{what} is empty", what)
    if len(text) > MAX_UID_LENGTH:
        raise InvalidUID(
            f"{what} is {len(text)} characters long (PS3.5 9.1 allows {MAX_UID_LENGTH})", what
        )
    if not _UID.fullmatch(text):
        # The value itself stays out of the message: it came from a peer and may be anything.
        raise InvalidUID(f"{what} is not a valid UID (PS3.5 9.1: digits and dots only)", what)
    return text


def is_valid_uid(value: object) -> bool:
    try:
        validate_uid(value)
    except InvalidUID:
        return False
    return True
