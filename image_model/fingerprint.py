"""The fingerprint of a series' instance set: which exact instances a job or an output covers."""
from __future__ import annotations

import hashlib
from collections.abc import Iterable


def instance_set_fingerprint(instance_uids: Iterable[str]) -> str:
    """SHA-256 hex digest of the sorted, de-duplicated SOP Instance UIDs of a series.

    Order of arrival and duplicate deliveries do not change it; any added or removed instance does.
    Each UID is followed by a newline, so no two different sets hash the same byte string.
    """
    digest = hashlib.sha256()
    for uid in sorted({str(uid).strip() for uid in instance_uids}):
        digest.update(uid.encode("ascii") + b"\n")
    return digest.hexdigest()
