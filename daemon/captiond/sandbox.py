"""What the sample systemd unit's sandbox does to the daemon, told in the journal where it would otherwise be silent.

The unit allows network access only to the addresses in `IPAddressAllow=` (below). A model server elsewhere
is not refused: its packets are dropped, so the daemon sees only timeouts. When the server cannot be reached
and the daemon runs under systemd, it names the addresses outside those ranges and the drop-in line that
allows them.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

# The unit's IPAddressAllow= (systemd/captiond.service; a test keeps the two equal): `localhost`, `link-local`
# and the private ranges: RFC 1918, shared address space (Tailscale, carrier-grade NAT), IPv6 unique local.
UNIT_ALLOWED = ("localhost", "link-local", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                "fc00::/7")
_KEYWORDS = {"localhost": ("127.0.0.0/8", "::1/128"), "link-local": ("169.254.0.0/16", "fe80::/64")}
_NETWORKS = tuple(ipaddress.ip_network(network) for entry in UNIT_ALLOWED for network in _KEYWORDS.get(entry, (entry,)))


def outside_unit_allowance(uris: Iterable[str]) -> list[str]:
    """Return the addresses of these Uris' hosts that the unit's default IPAddressAllow= does not cover."""
    outside: list[str] = []
    for uri in uris:
        host = urlsplit(uri).hostname
        if not host:
            continue
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)}
        except (OSError, UnicodeError):
            continue  # not resolvable: the error message says so already
        for address in sorted(addresses):
            ip = ipaddress.ip_address(address.split("%")[0])
            if not any(ip in network for network in _NETWORKS) and address not in outside:
                outside.append(address)
    return outside


def blocked_address_hint(uris: Iterable[str], environ: Mapping[str, str]) -> str:
    """Under systemd, return a hint naming model-server addresses the unit blocks by default, or ""."""
    if not environ.get("INVOCATION_ID"):
        return ""
    outside = outside_unit_allowance(uris)
    if not outside:
        return ""
    return (f"the model server's address {', '.join(outside)} is outside the addresses captiond.service allows "
            "(IPAddressAllow=); packets to it are dropped and requests only time out. To allow it: "
            f"`sudo systemctl edit captiond`, add the lines `[Service]` and `IPAddressAllow={' '.join(outside)}`, "
            "then `sudo systemctl restart captiond`")
