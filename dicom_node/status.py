"""Named DIMSE status codes and A-ASSOCIATE-RJ reasons.

Every status the node sends is named here; the rest of the code uses these names, never bare
numbers. Sources: PS3.7 Annex C (general statuses), PS3.4 Annex B.2.3 (Storage Service Class
C-STORE statuses), PS3.4 Annex A.4 (Verification), PS3.8 Section 9.3.4 (A-ASSOCIATE-RJ PDU
result / source / reason fields).
"""

from __future__ import annotations

from enum import IntEnum


class Status(IntEnum):
    """DIMSE response statuses the node uses (the Status (0000,0900) value)."""

    #: PS3.7 C.1.1: operation completed.
    SUCCESS = 0x0000
    #: PS3.7 C.4.2: general processing failure.
    PROCESSING_FAILURE = 0x0110
    #: PS3.7 C.4.3: the SOP instance already exists (we answer duplicates with SUCCESS instead,
    #: as PACS retry logic expects; kept for completeness).
    DUPLICATE_SOP_INSTANCE = 0x0111
    #: PS3.7 C.5.13: SOP class not supported.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: PS3.7 C.5.20: refused, not authorized.
    NOT_AUTHORIZED = 0x0124
    #: PS3.4 B.2.3: Refused: out of resources (A7xx family).
    OUT_OF_RESOURCES = 0xA700
    #: PS3.4 B.2.3: Error: data set does not match SOP class (A9xx family).
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: PS3.4 B.2.3: Error: cannot understand (Cxxx family).
    CANNOT_UNDERSTAND = 0xC000
    #: PS3.4 B.2.3: Warning: coercion of data elements.
    COERCION_OF_DATA_ELEMENTS = 0xB000


# Module-level aliases so call sites read ``status.SUCCESS``.
SUCCESS = Status.SUCCESS
PROCESSING_FAILURE = Status.PROCESSING_FAILURE
DUPLICATE_SOP_INSTANCE = Status.DUPLICATE_SOP_INSTANCE
SOP_CLASS_NOT_SUPPORTED = Status.SOP_CLASS_NOT_SUPPORTED
NOT_AUTHORIZED = Status.NOT_AUTHORIZED
OUT_OF_RESOURCES = Status.OUT_OF_RESOURCES
DATASET_DOES_NOT_MATCH_SOP_CLASS = Status.DATASET_DOES_NOT_MATCH_SOP_CLASS
CANNOT_UNDERSTAND = Status.CANNOT_UNDERSTAND
COERCION_OF_DATA_ELEMENTS = Status.COERCION_OF_DATA_ELEMENTS


class RejectResult(IntEnum):
    """A-ASSOCIATE-RJ Result field (PS3.8 9.3.4)."""

    REJECTED_PERMANENT = 0x01
    REJECTED_TRANSIENT = 0x02


class RejectSource(IntEnum):
    """A-ASSOCIATE-RJ Source field (PS3.8 9.3.4)."""

    SERVICE_USER = 0x01
    SERVICE_PROVIDER_ACSE = 0x02
    SERVICE_PROVIDER_PRESENTATION = 0x03


class RejectReason(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. field when the source is the service user (PS3.8 9.3.4)."""

    NO_REASON_GIVEN = 0x01
    APPLICATION_CONTEXT_NOT_SUPPORTED = 0x02
    CALLING_AE_NOT_RECOGNIZED = 0x03
    CALLED_AE_NOT_RECOGNIZED = 0x07


class PresentationRejectReason(IntEnum):
    """A-ASSOCIATE-RJ Reason/Diag. field when the source is the service provider's presentation
    related function (PS3.8 9.3.4)."""

    TEMPORARY_CONGESTION = 0x01
    LOCAL_LIMIT_EXCEEDED = 0x02


class QRStatus(IntEnum):
    """Query/Retrieve statuses (PS3.4 C.4.1.1.4 C-FIND, C.4.2.1.5 C-MOVE, C.4.3.1.4 C-GET)."""

    SUCCESS = 0x0000
    #: Matches are continuing; the response carries one match.
    PENDING = 0xFF00
    #: Matches are continuing; one or more optional keys in the identifier were not supported.
    PENDING_WARNING = 0xFF01
    #: Matching / sub-operations terminated by a C-CANCEL.
    CANCEL = 0xFE00
    #: C-MOVE/C-GET: sub-operations complete, one or more failures or warnings.
    SUB_OPERATIONS_COMPLETE_WITH_FAILURES = 0xB000
    #: Refused: out of resources, unable to calculate number of matches.
    OUT_OF_RESOURCES_MATCHES = 0xA701
    #: Refused: out of resources, unable to perform sub-operations.
    OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702
    #: C-MOVE: Move Destination unknown (not a configured destination AE title).
    MOVE_DESTINATION_UNKNOWN = 0xA801
    #: Identifier does not match SOP class (bad Query/Retrieve Level, missing unique key).
    IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
    #: Unable to process (Cxxx family).
    UNABLE_TO_PROCESS = 0xC000
    #: Refused: not authorized (PS3.7 C.5.20): the caller may not query/retrieve.
    NOT_AUTHORIZED = 0x0124


MOVE_DESTINATION_UNKNOWN = QRStatus.MOVE_DESTINATION_UNKNOWN
