"""What a planner sends to a remote endpoint: the chat messages and image after de-identification.

The rules are :mod:`image_model.deidentify` (PS3.15 Annex E Basic Profile); this module applies them
to one planning request: every message's text is scrubbed of the values the profile removes from the
series header (names, IDs, dates, accession, institution, physicians, descriptions, comments...),
of dates and UIDs written anywhere (a question may quote them), and the rendered image is withheld
when the header flags burned-in annotation. The result is recorded as a
:class:`~image_model.deidentify.Disclosure`.
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from agent.prompting import ChatMessage
from image_model.deidentify import (
    Disclosure,
    deidentify_texts,
    endpoint_host,
    image_verdict,
    record_disclosure,
)

if TYPE_CHECKING:
    import numpy as np
    from pydicom.dataset import Dataset


def deidentify_request(
    messages: list[ChatMessage], image: np.ndarray | None, header: Dataset | None, *, endpoint: str,
    purpose: str = "planner",
) -> tuple[list[ChatMessage], np.ndarray | None]:
    """``messages`` and ``image`` as they may leave for the remote ``endpoint``; records the disclosure."""
    disclosure = Disclosure(purpose=purpose, endpoint=endpoint_host(endpoint))
    texts = deidentify_texts([m.text for m in messages], header, disclosure)
    if image is not None:
        verdict = image_verdict(header)
        disclosure.image = "sent" if verdict.allowed else f"withheld: {verdict.reason}"
        if not verdict.allowed:
            image = None
    record_disclosure(disclosure)
    return [replace(m, text=t) for m, t in zip(messages, texts)], image
