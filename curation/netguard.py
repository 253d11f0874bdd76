"""The SSRF guard: which addresses a crawler may connect to.

URL lists are untrusted and workers run inside cloud networks, where ``169.254.169.254`` answers with
credentials. So a host name is resolved once, every resolved address is checked, and the connection goes
to the checked address (no second lookup that DNS rebinding could answer differently). Redirects are
followed by the fetcher itself and each hop goes through this check again.

Refused: private, loopback, link-local, multicast, reserved, unspecified and shared (CGNAT) addresses,
IPv4-mapped IPv6 forms of those, unless the address lies in one of ``allowed_networks``.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence

_CGNAT = ipaddress.ip_network("100.64.0.0/10")


class BlockedAddress(Exception):
    """The URL's host resolves to an address the configuration does not allow."""


def _normalise(addr: ipaddress._BaseAddress) -> ipaddress._BaseAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_public(addr: ipaddress._BaseAddress) -> bool:
    addr = _normalise(addr)
    if isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT:
        return False
    return not (addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast
                or addr.is_reserved or addr.is_unspecified or not addr.is_global)


class NetGuard:
    def __init__(self, allowed_networks: Sequence[str] = ()):
        self.allowed = [ipaddress.ip_network(c, strict=False) for c in allowed_networks]

    def address_allowed(self, ip: str) -> bool:
        addr = _normalise(ipaddress.ip_address(ip.split("%", 1)[0]))
        if any(addr.version == net.version and addr in net for net in self.allowed):
            return True
        return is_public(addr)

    def resolve(self, host: str, port: int) -> str:
        """Resolve ``host`` and return one address to connect to; raise BlockedAddress if any is refused.

        Every address must pass, not just the one we would pick: a name resolving to both a public and a
        private address is an attack pattern, not a configuration to guess about.
        """
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as err:
            raise OSError(f"dns: {err}") from err
        addrs = sorted({info[4][0] for info in infos})
        if not addrs:
            raise OSError(f"dns: no address for {host}")
        refused = [a for a in addrs if not self.address_allowed(a)]
        if refused:
            raise BlockedAddress(f"{host} resolves to refused address {refused[0]}")
        # Prefer IPv4 for determinism of the connection, then the lowest address.
        return sorted(addrs, key=lambda a: (":" in a, a))[0]
