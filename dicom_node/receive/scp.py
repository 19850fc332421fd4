"""The storage SCP: which SOP classes and transfer syntaxes the node accepts, and the AE itself.

Accepted: image storage SOP classes a PACS forwards (CT, MR, CR, DX, MG, US, PT, NM, XA, RF,
secondary capture incl. multi-frame, enhanced CT/MR), plus Segmentation and SR storage so results
of other systems do not bounce; the Verification SOP class. Transfer syntaxes: the native ones,
deflate and the usual compressions; compressed data is stored as received (PS3.5 A.4).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydicom import config as pydicom_config
from pydicom import uid as tsuid
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config

from config.schema import NodeConfig
from dicom_node.receive import handlers
from dicom_node.receive.balance import LoadBoard
from dicom_node.receive.gate import GatedServer, start_gated_server
from dicom_node.receive.handlers import AssociationPolicy, HandlerDeps
from dicom_node.receive.ledger import Ledger
from dicom_node.receive.refusals import Refusals
from dicom_node.tls import server_tls_context

log = logging.getLogger(__name__)

#: Transfer syntaxes accepted for storage, in order of preference (PS3.5 Annex A).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    tsuid.ExplicitVRLittleEndian,
    tsuid.ImplicitVRLittleEndian,
    tsuid.DeflatedExplicitVRLittleEndian,
    tsuid.JPEGBaseline8Bit,
    tsuid.JPEGExtended12Bit,
    tsuid.JPEGLossless,
    tsuid.JPEGLosslessSV1,
    tsuid.JPEGLSLossless,
    tsuid.JPEGLSNearLossless,
    tsuid.JPEG2000Lossless,
    tsuid.JPEG2000,
    tsuid.RLELossless,
)

#: Verification SOP Class (PS3.4 Annex A).
VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")

#: Storage SOP classes accepted (PS3.4 Annex B.5).
STORAGE_SOP_CLASSES: tuple[str, ...] = (
    tsuid.CTImageStorage,
    tsuid.EnhancedCTImageStorage,
    tsuid.LegacyConvertedEnhancedCTImageStorage,
    tsuid.MRImageStorage,
    tsuid.EnhancedMRImageStorage,
    tsuid.EnhancedMRColorImageStorage,
    tsuid.LegacyConvertedEnhancedMRImageStorage,
    tsuid.ComputedRadiographyImageStorage,
    tsuid.DigitalXRayImageStorageForPresentation,
    tsuid.DigitalXRayImageStorageForProcessing,
    tsuid.DigitalMammographyXRayImageStorageForPresentation,
    tsuid.DigitalMammographyXRayImageStorageForProcessing,
    tsuid.UltrasoundImageStorage,
    tsuid.UltrasoundMultiFrameImageStorage,
    tsuid.PositronEmissionTomographyImageStorage,
    tsuid.EnhancedPETImageStorage,
    tsuid.NuclearMedicineImageStorage,
    tsuid.XRayAngiographicImageStorage,
    tsuid.EnhancedXAImageStorage,
    tsuid.XRayRadiofluoroscopicImageStorage,
    tsuid.EnhancedXRFImageStorage,
    tsuid.SecondaryCaptureImageStorage,
    tsuid.MultiFrameSingleBitSecondaryCaptureImageStorage,
    tsuid.MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    tsuid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    tsuid.MultiFrameTrueColorSecondaryCaptureImageStorage,
    tsuid.SegmentationStorage,
    tsuid.BasicTextSRStorage,
    tsuid.EnhancedSRStorage,
    tsuid.ComprehensiveSRStorage,
    tsuid.Comprehensive3DSRStorage,
)


@dataclass
class RunningSCP:
    server: GatedServer
    ae: AE
    refusals: Refusals

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop listening and abort associations still open (their senders retry later)."""
        self.server.shutdown()
        self.ae.shutdown()


def build_ae(node: NodeConfig) -> AE:
    """The application entity with its supported presentation contexts (no handlers yet)."""
    ae = AE(ae_title=node.ae_title)
    ae.maximum_pdu_size = node.max_pdu
    # The gate (gate.py) enforces the limits first; pynetdicom's own count agrees with it.
    ae.maximum_associations = node.limits.max_associations
    ae.network_timeout = node.limits.idle_timeout_seconds
    # ARTIM (PS3.8 9.1.5): how long a closing association waits for the peer to close.
    ae.acse_timeout = node.limits.associate_timeout_seconds
    # The allowlists are enforced in handlers.handle_requested, so both checks log the same way.
    for sop_class in STORAGE_SOP_CLASSES:
        ae.add_supported_context(sop_class, list(TRANSFER_SYNTAXES))
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    # Senders such as dcmtk storescu propose many contexts per association; keep the default limits.
    return ae


@dataclass(frozen=True)
class ExtraService:
    """Another DIMSE service the same listener hosts (the Q/R SCP): how it adds its presentation
    contexts to the AE, and its event handlers. The receive side does not import it; the
    application passes it in."""

    add_contexts: Callable[[AE], None]
    handlers: list[Any]


def start_scp(
    node: NodeConfig, deps: HandlerDeps, extra: ExtraService | None = None,
    listening: socket.socket | None = None, ledger: Ledger | None = None, board: LoadBoard | None = None,
) -> RunningSCP:
    """Start listening on ``node.host:node.port`` (port 0: any free port) in background threads.

    With ``extra`` the AE also hosts that service (the node passes its Q/R SCP); with
    ``node.tls`` enabled the listener accepts DICOM TLS only (tls.py). Connections pass the
    receive gate (gate.py) before pynetdicom sees them: ``node.limits`` apply there and on every
    PDU (guard.py). A receiver process (processes.py) passes the node's ``listening`` socket and
    the ``ledger`` of associations all receivers share and the ``board`` of their loads."""
    ssl_context = server_tls_context(node.tls) if node.tls.enabled else None
    quiet_reading_validation()
    quiet_protocol_summaries()
    ae = build_ae(node)
    if extra is not None:
        extra.add_contexts(ae)
    ended = handlers.bind_notification(handlers.handle_association_ended, deps)
    evt_handlers: list[Any] = [
        (
            evt.EVT_REQUESTED,
            handlers.bind_notification(handlers.handle_requested, deps),
        ),
        (evt.EVT_C_ECHO, handlers.bind(handlers.handle_echo, deps)),
        (evt.EVT_C_STORE, handlers.bind(handlers.handle_store, deps)),
        (evt.EVT_RELEASED, ended),
        (evt.EVT_ABORTED, ended),
        (evt.EVT_CONN_CLOSE, ended),
    ]
    if extra is not None:
        evt_handlers.extend(extra.handlers)
    # C-STORE requests served straight from their PDUs (direct_store.py) by the same service as
    # the EVT_C_STORE handler above: only while that is the one C-STORE handler.
    direct = None if sum(event is evt.EVT_C_STORE for event, *_ in evt_handlers) > 1 else handlers.serve_store(deps)
    refusals = deps.refusals
    server = start_gated_server(ae, node, evt_handlers, refusals, ssl_context, listening, ledger, board, direct)
    log.log(
        logging.INFO if listening is None else logging.DEBUG,
        "DICOM SCP %s listening on %s:%d",
        node.ae_title,
        node.host,
        server.server_address[1],
    )
    return RunningSCP(server, ae, refusals)


def quiet_reading_validation() -> None:
    """Turn off pydicom's validation of values as they are read (``reading_validation_mode``),
    for the whole process.

    In its default mode it only warns, never refuses; its warnings put the peer's values into
    the log unescaped; and it validates again every UID pynetdicom makes while decoding and
    negotiating an A-ASSOCIATE-RQ (about 1100 for dcmtk storescu's 128 proposed contexts, a
    third of the interpreter's time spent on each association). What the node refuses is
    decided by its own checks (dicom_node/uids.py, image_model/parse_policy.py) and
    pynetdicom's, which stay as they are."""
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE


def quiet_protocol_summaries() -> None:
    """Bind pynetdicom's logging handlers to new associations only while its logger would print
    what they write (INFO: the operator asked for ``-vv`` or set ``node.log_phi``; app/cli.py).

    pynetdicom binds them to every association by default (``LOG_HANDLER_LEVEL``): they summarise
    each PDU and DIMSE message at DEBUG and INFO, building their text whether or not the logger
    prints it: every proposed presentation context of an A-ASSOCIATE-RQ by name, each answered
    in the A-ASSOCIATE-AC, about a tenth of the interpreter's time spent setting up an
    association with dcmtk storescu's 128 contexts. Applies to associations created after the
    call, for the whole process."""
    wanted = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    pynetdicom_config.LOG_HANDLER_LEVEL = "standard" if wanted else "none"


def policy_from_config(node: NodeConfig) -> AssociationPolicy:
    return AssociationPolicy(
        allowed_calling_aets=frozenset(node.allowed_calling_aets),
        allowed_peer_addresses=frozenset(node.allowed_peer_addresses),
    )
