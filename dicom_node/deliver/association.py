"""Opening an outgoing association, and saying in words why one could not be opened.

The one place the node's SCUs (the C-STORE sender, the Q/R client) request an association:
timeouts, DICOM TLS (PS3.15 B.1) and the failure reason live here.

pynetdicom can report a rejected association as merely not established: when the peer sends
A-ASSOCIATE-RJ and closes the connection at once (dcmtk ``storescp --refuse`` does), the
requestor may see the closed socket before it reads the reply, and aborts. The reply was read
and decoded by then, so an ``EVT_PDU_RECV`` handler keeps it, and the reject's result, source
and reason (PS3.8 9.3.4) still reach the operator.
"""
from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from config.schema import DestinationConfig
from dicom_node.tls import tls_context

#: Seconds allowed for the TCP connect, association negotiation, and each DIMSE response.
DEFAULT_TIMEOUT_SECONDS = 30.0


class AssociationFailed(Exception):
    """No association with a peer; the message says why, ``permanent`` whether retrying can help,
    ``local`` whether our own settings are at fault (the TLS certificates), not the peer."""

    def __init__(self, message: str, permanent: bool = False, local: bool = False):
        super().__init__(message)
        self.permanent = permanent
        self.local = local


def peer_name(dest: DestinationConfig) -> str:
    """``AE@host:port``: how logs and reports name a peer."""
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


def open_association(
    ae: AE,
    dest: DestinationConfig,
    *,
    contexts: Sequence[PresentationContext] | None = None,
    timeout: float = DEFAULT_TIMEOUT_SECONDS,
    evt_handlers: list[Any] | None = None,
    ext_neg: list[Any] | None = None,
) -> Association:
    """An established association from ``ae`` to ``dest``; raises :class:`AssociationFailed`.

    ``contexts`` default to the ones already requested on ``ae``.
    """
    peer = peer_name(dest)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = timeout
    try:
        tls_args = (tls_context(dest.tls), dest.host) if dest.tls.enabled else None
    except (OSError, ssl.SSLError) as exc:
        raise AssociationFailed(f"TLS setup for {peer} failed: {exc}", local=True) from exc

    rejects: list[A_ASSOCIATE_RJ] = []

    def keep_reject(event: Event) -> None:
        pdu = event.pdu  # set for EVT_PDU_RECV
        if isinstance(pdu, A_ASSOCIATE_RJ):
            rejects.append(pdu)

    handlers = [*(evt_handlers or []), (evt.EVT_PDU_RECV, keep_reject)]
    kwargs: dict[str, Any] = {"ae_title": dest.ae_title, "tls_args": tls_args,
                              "evt_handlers": handlers, "ext_neg": ext_neg}
    if contexts is not None:
        kwargs["contexts"] = list(contexts)
    assoc = ae.associate(dest.host, dest.port, **kwargs)
    if assoc.is_established:
        return assoc
    message, permanent = describe_failure(assoc, dest, rejects[0] if rejects else None)
    raise AssociationFailed(message, permanent)


def describe_failure(
    assoc: Association, dest: DestinationConfig, reject: A_ASSOCIATE_RJ | None = None
) -> tuple[str, bool]:
    """Why ``assoc`` is not established, and whether retrying cannot help.

    ``reject`` is an A-ASSOCIATE-RJ PDU seen on the wire, for when pynetdicom aborted before
    taking it as the reply (see the module docstring).
    """
    peer = peer_name(dest)
    rsp = assoc.acceptor.primitive
    said: A_ASSOCIATE | A_ASSOCIATE_RJ | None = rsp if assoc.is_rejected and rsp is not None else reject
    if said is not None:
        reject_text = f"{said.result_str}; source: {said.source_str}; reason: {said.reason_str}"
        return f"association rejected by {peer} ({reject_text})", False
    if rsp is not None and not assoc.accepted_contexts:
        refused = sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts})
        return f"{peer} accepted none of the proposed SOP classes: {', '.join(refused)}", True
    if rsp is not None:
        return f"association to {peer} aborted during negotiation", False
    tls = " over TLS (the log has the handshake error)" if dest.tls.enabled else ""
    return f"cannot connect to {peer}{tls}: refused, unreachable, timed out or aborted", False
