"""Query/retrieve access: who may C-FIND / C-MOVE / C-GET, and what each caller sees.

Configured in ``query_retrieve`` apart from the storage allowlists (``node.allowed_*``): a
modality allowed to send images is not thereby allowed to read the node's holdings. The default
admits only the systems the node already sends results to, the ``destinations``, each by its AE
title *and* from the address of its configured host, so a caller that merely presents a
destination's AE title from elsewhere is refused. An AE title alone authenticates nothing (PS3.8
7.1.1.3); DICOM TLS with client certificates (``node.tls``) is the way to identify peers.

With ``visibility: own`` a caller sees only the series its own AE title delivered (the calling
AE title recorded with the series when it arrived) and the results the node made from them,
plus those of the AE titles listed for it in ``also_sees``; counts (Number of Study Related
Instances...) are computed over what it sees.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from config.schema import AppConfig


def _addresses(host: str) -> frozenset[str]:
    """The IP addresses ``host`` resolves to (the name itself if it does not resolve)."""
    try:
        return frozenset({host} | {str(info[4][0]) for info in socket.getaddrinfo(host, None)})
    except (OSError, UnicodeError):
        return frozenset({host})


@dataclass(frozen=True)
class QRAccess:
    #: AE title -> addresses it must call from (the default rule), or None: ``callers`` decides.
    destination_hosts: dict[str, frozenset[str]] | None
    #: Explicitly allowed calling AE titles (when ``destination_hosts`` is None).
    callers: frozenset[str] = frozenset()
    allowed_addresses: frozenset[str] = frozenset()
    own_only: bool = False
    also_sees: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: AppConfig) -> QRAccess:
        qr = config.query_retrieve
        hosts: dict[str, frozenset[str]] | None = None
        if qr.allowed_calling_aets is None:
            hosts = {}
            for dest in config.destinations.values():
                hosts[dest.ae_title] = hosts.get(dest.ae_title, frozenset()) | _addresses(dest.host)
        return cls(
            destination_hosts=hosts,
            callers=frozenset(qr.allowed_calling_aets or ()),
            allowed_addresses=frozenset(qr.allowed_peer_addresses),
            own_only=qr.visibility == "own",
            also_sees={k.strip(): frozenset(a.strip() for a in v) for k, v in qr.also_sees.items()},
        )

    def refusal(self, calling_ae: str, address: str) -> str | None:
        """Why this caller may not query/retrieve (words, no peer values), or None."""
        if self.allowed_addresses and address not in self.allowed_addresses:
            return "address not in query_retrieve.allowed_peer_addresses"
        if self.destination_hosts is not None:
            hosts = self.destination_hosts.get(calling_ae)
            if hosts is None:
                return "calling AE is not a configured destination (query_retrieve.allowed_calling_aets unset)"
            if address not in hosts:
                return "calling AE is a destination's, but not from that destination's host"
            return None
        if calling_ae not in self.callers:
            return "calling AE not in query_retrieve.allowed_calling_aets"
        return None

    def origins(self, calling_ae: str) -> frozenset[str] | None:
        """Calling AE titles whose deliveries this caller sees (None: everything)."""
        if not self.own_only:
            return None
        return frozenset({calling_ae}) | self.also_sees.get(calling_ae, frozenset())
