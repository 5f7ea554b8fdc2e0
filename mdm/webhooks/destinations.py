"""Where webhooks may go: public addresses only, unless the operator allows a host (MDM_WEBHOOK_ALLOWED_HOSTS).

A webhook makes this service send requests from inside the school's network to a URL an admin typed.
Pointed at loopback, a private range or a cloud metadata address, it would reach services that trust
the network (SSRF), and its delivery log would tell which ports answer. So the URL's host is resolved
and every address it resolves to is checked when the webhook is registered and again at each send
(DNS answers change), and the sender connects to the very address it checked, so that a second,
different answer (DNS rebinding) is never asked for.
"""

import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network

import httpx

from mdm.settings import Settings

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Instance metadata services hand out cloud credentials: AWS, GCP, Azure and OpenStack share the first.
METADATA = (ip_network("169.254.169.254/32"), ip_network("fd00:ec2::254/128"), ip_network("100.100.100.200/32"))
SHARED = ip_network("100.64.0.0/10")  # carrier-grade NAT (RFC 6598): inside someone's network
# RFC 1918 and unique local: Python's is_private also counts documentation and reserved ranges, which
# are refused all the same (not is_global) but would be misnamed "private".
PRIVATE = tuple(ip_network(net) for net in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
NAT64 = ip_network("64:ff9b::/96")


class RefusedDestination(Exception):
    """The host may not be sent to. The message says why, for the admin: never for the delivery log."""


class HostNotFound(RefusedDestination):
    pass


@dataclass(frozen=True)
class AllowList:
    """Hosts the operator trusts: by name (whatever it resolves to) or by address."""

    names: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> "AllowList":
        return cls(settings.webhook_allowed_names, settings.webhook_allowed_networks)

    def allows_name(self, host: str) -> bool:
        return _normal(host) in self.names

    def allows_address(self, address: IPAddress) -> bool:
        return _within(address, self.networks)


def check_registration(host: str, allowed: AllowList) -> None:
    """Raises RefusedDestination unless every address the host resolves to may be sent to."""
    if not allowed.allows_name(host):
        addresses_for(host, allowed)


def addresses_for(host: str, allowed: AllowList) -> list[IPAddress]:
    """The addresses to connect to, in the resolver's order; raises RefusedDestination if any one is refused.

    One refused answer refuses them all: the connection must not depend on which answer comes first.
    """
    addresses = resolve(host)
    if allowed.allows_name(host):
        return addresses
    for address in addresses:
        reason = None if allowed.allows_address(address) else why_refused(address)
        if reason:
            name = _normal(host)
            said = f"{address} is" if name == str(address) else f"{name} resolves to {address},"
            raise RefusedDestination(f"{said} {reason}")
    return addresses


def resolve(host: str) -> list[IPAddress]:
    """Every A and AAAA answer. Numeric forms (0x7f000001, 2130706433, 0177.0.0.1) come back normalised."""
    try:
        answers = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise HostNotFound(f"{_normal(host)} could not be resolved") from exc
    addresses: list[IPAddress] = []
    for *_, sockaddr in answers:
        address = ip_address(str(sockaddr[0]).split("%")[0])  # an IPv6 zone (fe80::1%eth0) is not an address
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise HostNotFound(f"{_normal(host)} could not be resolved")
    return addresses


def why_refused(address: IPAddress) -> str | None:
    """Why a webhook may not go to this address (for the admin), or None for a public address.

    An IPv6 address that carries an IPv4 one (mapped, NAT64, 6to4) is judged by that one first.
    """
    for candidate in (*_embedded_ipv4(address), address):
        reason = _why_refused(candidate)
        if reason:
            return reason
    return None


def _why_refused(address: IPAddress) -> str | None:
    return next((reason for refused, reason in _REFUSALS if refused(address)), None)


# In order: the first that matches names the reason (127.0.0.1 is also "private" to Python's ipaddress).
_REFUSALS: tuple[tuple[Callable[[IPAddress], bool], str], ...] = (
    (lambda address: _within(address, METADATA), "a cloud metadata address"),
    (lambda address: address.is_unspecified, "the unspecified address"),
    (lambda address: address.is_loopback, "a loopback address"),
    (lambda address: address.is_link_local, "a link-local address"),
    (lambda address: address.is_multicast, "a multicast address"),
    (lambda address: address in SHARED, "a shared (carrier-grade NAT) address"),
    (lambda address: _within(address, PRIVATE), "a private address"),
    (lambda address: address.is_reserved, "a reserved address"),
    (lambda address: not address.is_global, "not a public address"),
)


def _embedded_ipv4(address: IPAddress) -> Iterator[IPv4Address]:
    if isinstance(address, IPv4Address):
        return
    if address.ipv4_mapped:
        yield address.ipv4_mapped
    if address.sixtofour:
        yield address.sixtofour
    if address in NAT64:
        yield IPv4Address(int(address) & 0xFFFFFFFF)


def _within(address: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in networks)  # an IPv4 address is in no IPv6 network


def _normal(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


class PinnedTransport(httpx.BaseTransport):
    """Sends each request to an address checked for it, with the URL's name kept for Host, SNI and TLS.

    Connections are never reused (no keep-alive): a pooled connection is keyed by address, and must
    not carry a request for one name over TLS that was verified for another.
    """

    def __init__(self, allowed: AllowList, verify: ssl.SSLContext | bool = True) -> None:
        self.allowed = allowed
        self.inner = httpx.HTTPTransport(verify=verify, limits=httpx.Limits(max_keepalive_connections=0))

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.raw_host.decode("ascii")
        addresses = addresses_for(host, self.allowed)
        # The Host header was set from the name when the request was built; only the connection moves.
        request.extensions = {**request.extensions, "sni_hostname": host}
        for address in addresses[:-1]:
            try:
                return self.inner.handle_request(_to(request, address))
            except httpx.ConnectError:
                continue  # e.g. an IPv6 answer on a host without IPv6: try the next checked address
        return self.inner.handle_request(_to(request, addresses[-1]))

    def close(self) -> None:
        self.inner.close()


def _to(request: httpx.Request, address: IPAddress) -> httpx.Request:
    request.url = request.url.copy_with(host=str(address))
    return request
