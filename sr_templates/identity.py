"""Derived identity of the node's outputs (STYLE rule 9): UIDs are a pure function of the source
series, the exact set of source instances, the pipeline version and the output kind.

So a re-run over the same instances produces the same SEG/SR UIDs (the PACS replaces, never
duplicates), while a late instance changes the fingerprint and yields new UIDs that supersede the
old results. UIDs use the ``2.25`` root with the decimal form of a name-based UUID (PS3.5 B.2).
"""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from image_model.fingerprint import instance_set_fingerprint

#: PS3.5 B.2: UUID-derived UIDs are "2.25." + the integer value, without leading zeros.
UUID_UID_ROOT = "2.25."
#: Namespace of the node's name-based UUIDs (fixed: changing it would change every output UID).
_UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mmedagent-node:derived-outputs")


class OutputKind(str, Enum):
    """What a derived UID names; part of the hashed material so kinds never collide."""

    SEG_SERIES = "seg-series"
    SEG_INSTANCE = "seg-instance"
    SR_SERIES = "sr-series"
    SR_INSTANCE = "sr-instance"


def variant_of(**parts: str) -> str:
    """A canonical :attr:`OutputIdentity.variant` from named parts (``tool=...``, ``params=...``):
    one line per part, sorted by name, so the same request always gives the same variant."""
    return "\n".join(f"{name}={value}" for name, value in sorted(parts.items()))


def derived_uid(*parts: str) -> str:
    """A deterministic ``2.25.<decimal>`` UID from ``parts``: the integer of a name-based
    (version 5) UUID of the parts, as PS3.5 B.2 prescribes for UUID-derived UIDs (<= 44 chars)."""
    name = "\x1f".join(parts)  # unit separator: ("a", "bc") and ("ab", "c") differ
    return UUID_UID_ROOT + str(uuid.uuid5(_UID_NAMESPACE, name).int)


@dataclass(frozen=True)
class OutputIdentity:
    """UIDs and series numbers of the SEG and SR derived from one source series."""

    source_series_uid: str
    fingerprint: str
    pipeline_version: str
    seg_series_uid: str
    seg_instance_uid: str
    sr_series_uid: str
    sr_instance_uid: str
    seg_series_number: int
    sr_series_number: int
    #: What else tells two results on the same instances apart (the job's route and
    #: instruction): two routes, or a question asked about a routed series, never share UIDs.
    variant: str = ""

    @property
    def _key(self) -> str:
        return self.pipeline_version if not self.variant else f"{self.pipeline_version}\n{self.variant}"

    @classmethod
    def derive(
        cls,
        source_series_uid: str,
        instance_uids: Iterable[str],
        pipeline_version: str,
        seg_series_number: int,
        sr_series_number: int,
        variant: str = "",
    ) -> OutputIdentity:
        fingerprint = instance_set_fingerprint(instance_uids)
        key = pipeline_version if not variant else f"{pipeline_version}\n{variant}"

        def uid(kind: OutputKind) -> str:
            return derived_uid(source_series_uid, fingerprint, key, kind.value)

        return cls(
            source_series_uid=source_series_uid,
            fingerprint=fingerprint,
            pipeline_version=pipeline_version,
            seg_series_uid=uid(OutputKind.SEG_SERIES),
            seg_instance_uid=uid(OutputKind.SEG_INSTANCE),
            sr_series_uid=uid(OutputKind.SR_SERIES),
            sr_instance_uid=uid(OutputKind.SR_INSTANCE),
            seg_series_number=seg_series_number,
            sr_series_number=sr_series_number,
            variant=variant,
        )

    def item_uid(self, *key: str) -> str:
        """A stable UID for an item inside the outputs (e.g. an SR tracking UID for one segment)."""
        return derived_uid(self.source_series_uid, self.fingerprint, self._key, "item", *key)
