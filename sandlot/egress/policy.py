"""A sandbox's network policy: which hosts and addresses its proxy may connect to.

Rules (``NetworkPolicy.allow``), matched case-insensitively, a trailing dot ignored:

- ``api.example.com``: that host name; ``*.example.com``: any name below it (``a.example.com``,
  ``a.b.example.com``), not ``example.com`` itself. A wildcard needs at least two labels after
  ``*.`` (``*.com`` is refused: that is nearly everything).
- ``10.0.0.5``, ``::1``: that address; ``10.0.0.0/8``, ``fd00::/8``: that network.
- A port suffix limits a rule to one port: ``api.example.com:443``, ``*.example.com:443``,
  ``10.0.0.5:8080``, ``10.0.0.0/8:80``, and for IPv6 in brackets, ``[::1]:8080``,
  ``[fd00::/8]:443``. Without a port, any port.

A name rule lets the proxy resolve the name; what it resolves to must be a public (global)
address, or be covered by an address rule: a name cannot lead to loopback, a private network or
a cloud's metadata service (169.254.169.254) unless the policy names that address too. An IP
literal is reached only through an address rule, public or not. ``resolve`` pins names to
addresses (as ``curl --resolve`` does), used instead of DNS; the same checks apply.

The proxy connects only to the addresses :func:`decide` checked, never resolving again, so a
name that resolves differently a moment later (DNS rebinding) changes nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator, model_validator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]
"""``(host, port) -> addresses``: a name's IP addresses, in the order to try them."""

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_PORT = re.compile(r"[0-9]{1,5}")
_BRACKETED = re.compile(r"\[([^\[\]]+)\](?::([^:]*))?")


# -- addresses ------------------------------------------------------------------------------

# Not reachable through a name unless a rule names them. IANA's special-purpose registries, and
# more: this Python's ``is_global`` is not trusted alone (3.11 before 3.11.10 calls multicast,
# site-local and 192.0.0.0/24 global). A NAT64 or 6to4 address is judged by the IPv4 address
# it embeds (see :func:`embedded_ipv4`).
_NON_PUBLIC_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", 0.0.0.0
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # carrier-grade NAT
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, cloud metadata (169.254.169.254)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.88.99.0/24",  # 6to4 relay anycast
        "192.168.0.0/16",  # private
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, broadcast
    )
)
_NON_PUBLIC_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/8",  # unspecified, loopback, IPv4-compatible, reserved (NAT64 is judged before)
        "100::/64",  # discard
        "2001::/23",  # IETF protocol assignments, Teredo
        "2001:db8::/32",  # documentation
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local
        "ff00::/8",  # multicast
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")


def parse_address(text: str) -> IPAddress | None:
    """An IP literal (IPv6 possibly in brackets) as an address, IPv4-mapped IPv6
    (``::ffff:a.b.c.d``) as its IPv4 address; None if ``text`` is no IP literal."""
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if "%" in text:  # no zone ids: a scope is a host-local notion
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    return _unmapped(address)


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address leads to."""
    if isinstance(address, ipaddress.IPv6Address):
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address in _SIX_TO_FOUR:
            return address.sixtofour
    return None


def is_public(address: IPAddress | str) -> bool:
    """Whether ``address`` is a global unicast address: not private, loopback, link-local,
    carrier-grade NAT, multicast, unspecified, reserved, documentation or site-local, nor an
    IPv4-mapped, NAT64 or 6to4 form of one."""
    if isinstance(address, str):
        parsed = parse_address(address)
        if parsed is None:
            raise ValueError(f"{address!r} is not an IP address")
        address = parsed
    address = _unmapped(address)
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    if isinstance(address, ipaddress.IPv4Address):
        if any(address in network for network in _NON_PUBLIC_V4):
            return False
    elif address in _NAT64_LOCAL or any(address in network for network in _NON_PUBLIC_V6):
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


# -- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One parsed allow rule. ``kind`` says which of ``name`` or ``network`` is set."""

    text: str
    kind: Literal["name", "wildcard", "network"]
    name: str = ""  # lower case, no trailing dot; for a wildcard, the part after "*."
    network: IPNetwork | None = None  # an address rule is a /32 or /128 network
    port: int | None = None

    def matches_name(self, host: str, port: int) -> bool:
        """``host``: a normalised name (:func:`normalise_name`)."""
        if self.port is not None and self.port != port:
            return False
        if self.kind == "name":
            return host == self.name
        if self.kind == "wildcard":
            return host.endswith("." + self.name)
        return False

    def covers(self, address: IPAddress, port: int) -> bool:
        if self.network is None or (self.port is not None and self.port != port):
            return False
        address = _unmapped(address)
        return address.version == self.network.version and address in self.network


def normalise_name(host: str) -> str | None:
    """``host`` in lower case without its trailing dot, or None if it is no valid DNS name
    (labels of letters, digits, ``-`` and ``_``; the last one not all digits)."""
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > 253:
        return None
    labels = name.split(".")
    if not all(_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        return None
    return name


def _parse_port(text: str, rule: str) -> int:
    if not _PORT.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"rule {rule!r}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def _parse_network(text: str, rule: str, version: int) -> IPNetwork:
    try:
        if "/" in text:
            network = ipaddress.ip_network(text, strict=True)
        else:
            if "%" in text:
                raise ValueError("a zone id is not part of a rule")
            network = ipaddress.ip_network(ipaddress.ip_address(text))
    except ValueError as exc:
        hint = ""
        if "host bits set" in str(exc):
            hint = f"; did you mean {ipaddress.ip_network(text, strict=False)}?"
        raise ValueError(
            f"rule {rule!r}: {text!r} is not a valid IP address or network{hint}"
        ) from None
    if network.version != version:
        raise ValueError(f"rule {rule!r}: {text!r} is not an IPv{version} address or network")
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 128:
        mapped = network.network_address.ipv4_mapped
        if mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
            return ipaddress.IPv4Network(mapped)
    return network


def parse_rule(text: str) -> Rule:
    """Parse one allow rule; ValueError naming the rule and what is wrong with it."""
    if not isinstance(text, str) or not text:
        raise ValueError("an empty rule allows nothing; remove it")
    if any(c.isspace() for c in text):
        raise ValueError(f"rule {text!r}: contains white space")
    if "://" in text or any(c in text for c in "@?#"):
        raise ValueError(
            f"rule {text!r}: give a host, address or network (with an optional :port), not a URL"
        )
    if text.startswith("["):  # [v6], [v6]:port, [v6/len], [v6/len]:port
        match = _BRACKETED.fullmatch(text)
        if match is None:
            raise ValueError(f"rule {text!r}: expected [IPv6 address or network] or [...]:port")
        port = None if match.group(2) is None else _parse_port(match.group(2), text)
        return Rule(text, "network", network=_parse_network(match.group(1), text, 6), port=port)
    if text.count(":") >= 2:  # a bare IPv6 address or network: no port
        try:
            return Rule(text, "network", network=_parse_network(text, text, 6))
        except ValueError as exc:
            raise ValueError(f"{exc} (an IPv6 address with a port: [::1]:8080)") from None
    host, port = text, None
    if ":" in text:
        host, _, port_text = text.partition(":")
        port = _parse_port(port_text, text)
    if "/" in host:
        if not all(c.isdigit() or c in "./" for c in host):
            raise ValueError(
                f"rule {text!r}: a path is not part of a rule; give a host, address or network"
            )
        return Rule(text, "network", network=_parse_network(host, text, 4), port=port)
    if parse_address(host) is not None:
        return Rule(text, "network", network=_parse_network(host, text, 4), port=port)
    if host == "*":
        raise ValueError(f"rule {text!r}: '*' alone would allow everything; name the hosts")
    wildcard = host.startswith("*.")
    rest = host[2:] if wildcard else host
    if "*" in rest:
        raise ValueError(f"rule {text!r}: a wildcard is allowed only as a leading '*.'")
    name = normalise_name(rest)
    if name is None:
        if all(c.isdigit() or c == "." for c in rest):
            raise ValueError(f"rule {text!r}: {rest!r} is not a valid IPv4 address")
        raise ValueError(f"rule {text!r}: {rest!r} is not a valid host name")
    if wildcard:
        if "." not in name:
            raise ValueError(
                f"rule {text!r}: a wildcard over a top-level domain allows nearly everything; "
                "name at least two labels after '*.'"
            )
        return Rule(text, "wildcard", name=name, port=port)
    return Rule(text, "name", name=name, port=port)


# -- the policy -----------------------------------------------------------------------------


class NetworkPolicy(BaseModel):
    """What a sandbox's proxy may connect to (see the module's documentation)."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    allow: list[str] = []
    """Allow rules: host names, ``*.`` wildcards, IP addresses and networks, each with an
    optional ``:port``. Nothing else is reachable; an empty list allows nothing."""
    resolve: dict[str, str | list[str]] = {}
    """Names pinned to IP addresses, used instead of DNS (as ``curl --resolve`` does)."""

    _rules: tuple[Rule, ...] = PrivateAttr(default=())

    @field_validator("resolve")
    @classmethod
    def _check_resolve(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        checked: dict[str, str | list[str]] = {}
        for key, target in value.items():
            name = normalise_name(key) if isinstance(key, str) else None
            if name is None or parse_address(key) is not None:
                raise ValueError(f"resolve: {key!r} is not a valid host name")
            items = [target] if isinstance(target, str) else target
            if not items:
                raise ValueError(f"resolve: {key!r} needs at least one address")
            addresses = []
            for item in items:
                address = parse_address(item)
                if address is None:
                    raise ValueError(f"resolve: {key!r} -> {item!r} is not an IP address")
                addresses.append(str(address))
            checked[name] = addresses[0] if isinstance(target, str) else addresses
        return checked

    @model_validator(mode="after")
    def _parse_rules(self) -> NetworkPolicy:
        errors, rules = [], []
        for text in self.allow:
            try:
                rules.append(parse_rule(text))
            except ValueError as exc:
                errors.append(str(exc))
        if errors:
            raise ValueError("; ".join(errors))
        self._rules = tuple(rules)
        return self

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def pinned(self, host: str) -> list[str] | None:
        """The addresses ``resolve`` pins ``host`` to, if any."""
        name = normalise_name(host)
        target = self.resolve.get(name) if name is not None else None
        if target is None:
            return None
        return [target] if isinstance(target, str) else list(target)


# -- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressCheck:
    """Whether one address may be connected to, and why."""

    allowed: bool
    rule: str | None  # the address rule that covers it, if any
    reason: str


def check_address(
    rules: Sequence[Rule], address: IPAddress | str, port: int, *, via_name: bool
) -> AddressCheck:
    """May the proxy connect to ``address``:``port``? Through a name an allow rule matched
    (``via_name``), a public address may; anything else needs an address rule covering it."""
    parsed = parse_address(address) if isinstance(address, str) else _unmapped(address)
    if parsed is None:
        return AddressCheck(False, None, f"{address!r} is not an IP address")
    for rule in rules:
        if rule.covers(parsed, port):
            return AddressCheck(True, rule.text, f"allowed by {rule.text!r}")
    if via_name and is_public(parsed):
        return AddressCheck(True, None, "a public address")
    if via_name:
        return AddressCheck(False, None, f"{parsed}, a {_describe(parsed)} address no rule names")
    where = _host_port(str(parsed), port)
    if is_public(parsed):
        return AddressCheck(False, None, f"no rule allows {where}")
    return AddressCheck(False, None, f"no rule allows {where}, a {_describe(parsed)} address")


def _describe(address: IPAddress) -> str:
    inner = embedded_ipv4(address)
    if inner is not None:
        return f"NAT64/6to4 form of a {_describe(inner)}"
    if address.is_loopback:
        return "loopback"
    if address == ipaddress.IPv4Address("169.254.169.254"):
        return "link-local (cloud metadata)"
    if address.is_link_local:
        return "link-local"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified:
        return "unspecified"
    if address in ipaddress.IPv4Network("100.64.0.0/10"):
        return "carrier-grade NAT"
    if isinstance(address, ipaddress.IPv6Address) and address.is_site_local:
        return "site-local"
    if address.is_private:
        return "private"
    return "non-public"


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Decision:
    """The policy's answer for one destination. ``addresses`` are the checked addresses to
    connect to, in order; connect to nothing else."""

    allowed: bool
    addresses: list[str] = field(default_factory=list)
    rule: str | None = None  # the rule that allowed it
    reason: str = ""  # why refused (or what allowed it), for people and logs


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's resolver (``getaddrinfo``): unique addresses in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    seen: dict[str, None] = {}
    for _family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), None)
    return list(seen)


async def decide(
    policy: NetworkPolicy, host: str, port: int, *, resolver: Resolver | None = None
) -> Decision:
    """May a sandbox connect to ``host``:``port``? ``host`` is a name or an IP literal (IPv6
    possibly in brackets). Names pinned by ``policy.resolve`` are not looked up; others go to
    ``resolver`` (default: the system's). Never raises for bad input: it refuses."""
    where = _host_port(host.strip("[]"), port)
    if not 1 <= port <= 65535:
        return Decision(False, reason=f"{where}: port out of range")
    address = parse_address(host)
    if address is not None:
        check = check_address(policy.rules, address, port, via_name=False)
        if not check.allowed:
            return Decision(False, reason=check.reason)
        return Decision(True, [str(address)], check.rule, check.reason)

    name = normalise_name(host)
    if name is None:
        return Decision(False, reason=f"{host!r} is not a valid host name")
    where = f"{name}:{port}"
    rule = next((r for r in policy.rules if r.matches_name(name, port)), None)
    if rule is None:
        return Decision(False, reason=f"no rule allows {where}")

    pinned = policy.pinned(name)
    if pinned is not None:
        found = pinned
    else:
        try:
            found = list(await (resolver or system_resolver)(name, port))
        except (OSError, UnicodeError, ValueError) as exc:
            return Decision(False, reason=f"{name} could not be resolved: {exc}")
        if not found:
            return Decision(False, reason=f"{name} resolves to no address")

    addresses: list[str] = []
    refused: list[str] = []
    for item in found:
        check = check_address(policy.rules, item, port, via_name=True)
        if check.allowed:
            text = str(parse_address(item))
            if text not in addresses:
                addresses.append(text)
        else:
            refused.append(check.reason)
    if not addresses:
        return Decision(False, reason=f"{name} resolves to {'; '.join(refused)}")
    return Decision(True, addresses, rule.text, f"allowed by {rule.text!r}")
