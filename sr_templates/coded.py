"""A code from the one code table as highdicom's CodedConcept (PS3.3 Section 8.8)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from image_model.findings import Code

if TYPE_CHECKING:
    from highdicom.sr import CodedConcept


def coded(code: Code) -> CodedConcept:
    """A :class:`image_model.findings.Code` as highdicom's CodedConcept (PS3.3 Section 8.8).

    highdicom is imported here, not at module level, so that tools read their codes from this
    module without loading it (building a tool registry stays fast)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)
