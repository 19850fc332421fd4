"""DICOM TLS on the listener (PS3.15 Annex B.1, the "TLS Secure Transport Connection Profile").

``node.tls`` becomes a server-side :class:`ssl.SSLContext`: the node presents ``cert_file`` /
``key_file``; with ``verify_peer`` it requires a client certificate signed by ``ca_file`` (mutual
TLS, the usual hospital set-up), otherwise any client may connect and the allowlists decide.
Outgoing associations use :func:`tls_context` (client side).

The handshake runs in the receive gate (dicom_node/receive/gate.py), off the accept thread and
within ``node.limits.associate_timeout_seconds``, so a client that connects and says nothing
holds neither the listener nor anyone else; :func:`handshake_failure` says why one failed.
"""

from __future__ import annotations

import ssl

from config.schema import TLSConfig

#: Oldest TLS version allowed on DICOM TLS associations (PS3.15 B.9 follows BCP 195).
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2

#: OpenSSL reasons an operator meets most, in words.
HANDSHAKE_HINTS: dict[str, str] = {
    "WRONG_VERSION_NUMBER": "not a TLS client: plain DICOM to the TLS port?",
    "HTTP_REQUEST": "not a TLS client: plain DICOM to the TLS port?",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate",
    "CERTIFICATE_VERIFY_FAILED": "the client certificate is not signed by node.tls.ca_file",
    "NO_SHARED_CIPHER": "no cipher suite in common",
    "UNSUPPORTED_PROTOCOL": "the client offers only TLS versions older than 1.2",
}


class TLSSetupError(ValueError):
    """The node's TLS settings cannot be used (missing or unreadable certificate or key)."""


def handshake_failure(exc: BaseException) -> str:
    """Why a client's TLS handshake failed, in words for the log (the TLS error: no DICOM data
    has been exchanged, so no patient data can leak)."""
    reason = str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc or type(exc).__name__)
    hint = HANDSHAKE_HINTS.get(reason)
    return f"{reason} ({hint})" if hint else reason


def server_tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """Build the listener's context from ``node.tls``; raises :class:`TLSSetupError`."""
    if tls.cert_file is None or tls.key_file is None:
        raise TLSSetupError("node.tls.enabled needs node.tls.cert_file and node.tls.key_file")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_TLS_VERSION
    try:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.verify_peer:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx.verify_mode = ssl.CERT_NONE
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"node.tls: cannot load certificates: {exc}") from exc
    return ctx


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """Client-side DICOM TLS (PS3.15 B.1): verify the peer against ``ca_file`` (chain and host
    name) when ``verify_peer``; present ``cert_file``/``key_file`` when the peer asks for them."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = MIN_TLS_VERSION
    if tls.verify_peer:
        ctx.load_verify_locations(cafile=str(tls.ca_file))
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx
