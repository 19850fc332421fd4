"""Peer-supplied text in log lines.

A value a peer sent (an AE title, a UID from a C-STORE request, a DICOM element) reaches the log
only through these helpers: control characters are escaped (a newline in a SOP Instance UID must
not start a forged log line), length is bounded, and a value that fails its own check (an invalid
UID) is not echoed at all, since it may hold patient data.

:class:`EscapingFilter` is the backstop on the log handlers of ``mmed-node``: any record whose
final message still holds a control character (from a library, or a call site that forgot) is
escaped, and the traceback of a record from pynetdicom (it logs the stack of every malformed PDU
it drops) is cut to one line, as expected bad input deserves.
"""

from __future__ import annotations

import logging
import re

from dicom_node.uids import is_valid_uid

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]|\n|\t")
#: Longest peer-supplied text a log line carries.
MAX_LOGGED_CHARS = 64
#: Libraries that log peer input: their tracebacks are cut to one line (they log the stack of
#: expected bad input) and the values they quote as invalid are redacted (they may be PHI).
LIBRARY_LOGGERS = ("pynetdicom", "pydicom", "highdicom", "py.warnings")
#: The loggers :func:`install` sets to ERROR unless verbose (their invalid-value notices).
QUIETED_LOGGERS = ("pydicom", "py.warnings")
#: A quoted value a library reports as invalid: "... value 'X'", "Invalid value for VR DA: 'X'".
_QUOTED_VALUE = re.compile(r"(?i)(value\b[^'\n]{0,24})'[^']*'")


def _escape(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}" if ord(match.group()) < 0x100 else f"\\u{ord(match.group()):04x}"


def printable(value: object, limit: int = MAX_LOGGED_CHARS) -> str:
    """``value`` as one safe line: control characters as ``\\xNN``, cut to ``limit`` characters."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "backslashreplace")
    text = _CONTROL.sub(_escape, str(value if value is not None else ""))
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def ae_title(value: object) -> str:
    """A peer's AE title for a log line (AE titles name systems, not patients)."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return printable(str(value or "").strip(), 16 + 4) or "?"


def uid(value: object) -> str:
    """A UID for a log line: itself when valid (PS3.5 9.1), else only that it is invalid."""
    text = str(value or "").rstrip("\x00 ")
    if not text:
        return "?"
    return text if is_valid_uid(text) else f"<invalid UID, {len(text)} characters>"


class EscapingFilter(logging.Filter):
    """Escape control characters in every record's message; for the loggers of
    :data:`LIBRARY_LOGGERS`, one-line tracebacks and no quoted invalid values. Attach to handlers
    (a logger's filters do not reach its children's records): :func:`install`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        library = record.name.startswith(LIBRARY_LOGGERS)
        if record.exc_info and library:
            exc = record.exc_info[1]
            if exc is not None:
                message = f"{message} ({type(exc).__name__}: {exc})"
            record.exc_info, record.exc_text = None, None
        if library:
            message = _QUOTED_VALUE.sub(r"\1'<value not logged>'", message)
        if _CONTROL.search(message):
            message = _CONTROL.sub(_escape, message)
        if message is not record.msg:
            record.msg, record.args = message, None
        return True


def install(verbose: int = 0) -> None:
    """Put :class:`EscapingFilter` on every handler of the root logger and route Python warnings
    (pydicom warns about each invalid value it reads) through logging. Unless ``verbose``, keep
    pydicom's and the warnings' invalid-value notices out of the log (at ERROR)."""
    install_filters()
    if not verbose:
        for name in QUIETED_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


def install_filters() -> None:
    """:class:`EscapingFilter` on every handler of the root logger, and Python warnings through
    logging: the part of :func:`install` that does not choose levels (a receiver process takes
    the node's levels, :func:`library_levels`)."""
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, EscapingFilter) for f in handler.filters):
            handler.addFilter(EscapingFilter())


def library_levels() -> dict[str, int]:
    """This process's effective levels of the libraries' loggers (to be set alike in another)."""
    return {name: logging.getLogger(name).getEffectiveLevel() for name in LIBRARY_LOGGERS}
