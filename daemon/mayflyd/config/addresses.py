"""Listen addresses and host names as written in the config.

"127.0.0.1:8080", "[::1]:8080" and "localhost:8080" are listen addresses;
"10.0.0.0/8", "192.0.2.7" and "2001:db8::/32" are (trusted proxies') networks;
tenant host names are DNS names, optionally with a leading "*." wildcard.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = ["host_name_problem", "normalize_host_name", "parse_listen", "parse_network"]

_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_HOST_WITH_PORT_RE: Final = re.compile(r".*:[0-9]*")


def parse_listen(value: str) -> tuple[str, int]:
    """Split "HOST:PORT" or "[IPv6]:PORT" into (host, port); raise ValueError."""
    if not isinstance(value, str):
        raise ValueError(f"must be a string HOST:PORT, got {type(value).__name__}")
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"missing ']' after the IPv6 address in {value!r}")
        host, rest = value[1:end], value[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"expected [IPv6]:PORT, got {value!r}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    else:
        host, colon, port_text = value.rpartition(":")
        if not colon:
            raise ValueError(f"expected HOST:PORT (e.g. 127.0.0.1:8080), got {value!r}")
        if ":" in host:
            raise ValueError(f"an IPv6 address must be in brackets, e.g. [::1]:8080, got {value!r}")
        if not host:
            raise ValueError(f"missing host in {value!r}; use 0.0.0.0:PORT or [::]:PORT for all addresses")
        _check_listen_host(host)
    if not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"port must be a number, got {port_text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, port


def parse_network(value: str) -> str:
    """An IPv4 or IPv6 address or network in CIDR notation, as its network
    ("192.0.2.7" is "192.0.2.7/32"); ValueError says what is wrong. Host bits
    past the prefix are refused: "10.0.0.1/8" is more likely a typo for
    10.0.0.1/32 than for 10.0.0.0/8, and guessing would trust the wrong hosts."""
    text = value.strip()
    if not text or text != value:
        raise ValueError(f"must be an IP address or network like 10.0.0.0/8, got {value!r}")
    if text.startswith("["):
        raise ValueError(f"write an IPv6 address without brackets, got {value!r}")
    address, slash, prefix = text.partition("/")
    if "%" in address:
        raise ValueError(f"an address with a zone (%) cannot be matched, got {value!r}")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise ValueError(f"{address!r} is not an IPv4 or IPv6 address (in {value!r})") from None
    if slash and not (prefix.isascii() and prefix.isdigit() and int(prefix) <= ip.max_prefixlen):
        raise ValueError(f"the prefix length of {value!r} must be a number from 0 to {ip.max_prefixlen}")
    try:
        return str(ipaddress.ip_network(text))
    except ValueError:
        network = ipaddress.ip_network(text, strict=False)
        raise ValueError(f"{value!r} has host bits set past the /{network.prefixlen} prefix: write the network"
                         f" {str(network)!r} or the single address {str(ip)!r}") from None


def _check_listen_host(host: str) -> None:
    try:
        ipaddress.IPv4Address(host)
        return
    except ValueError:
        pass
    labels = host.lower().split(".")
    if all(label.isdigit() for label in labels):
        # Looks like a dotted quad: don't accept "1.2.3.999" as a host name.
        raise ValueError(f"{host!r} is not an IPv4 address")
    problem = host_name_problem(host.lower())
    if problem is not None:
        raise ValueError(problem)


def normalize_host_name(host: str) -> str:
    """A host name as tenants list it: lower case, no trailing dot."""
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


def host_name_problem(host: str, *, wildcard_ok: bool = False) -> str | None:
    """Why `host` (already normalized) is not a valid host name, or None."""
    if _HOST_WITH_PORT_RE.fullmatch(host):
        return f"host names carry no port, got {host!r}"
    name = host[2:] if wildcard_ok and host.startswith("*.") else host
    if "*" in name:
        return f"a wildcard is only allowed as a leading '*.', got {host!r}"
    if not name:
        return "must not be empty"
    if len(host) > 253:
        return f"host name longer than 253 characters ({len(host)})"
    for label in name.split("."):
        if not _LABEL_RE.fullmatch(label):
            return (
                f"invalid label {label!r} in {host!r}: labels are 1-63 characters"
                " of a-z, 0-9 and '-', not starting or ending with '-'"
            )
    return None
