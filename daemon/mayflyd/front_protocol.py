"""The front end's control channel; a mirror of csrc/wire/front_protocol.h.

The supervisor sends mayflyd-front a whole routing table (ROUTES) over one
SOCK_SEQPACKET socket; the front end answers ROUTES_ACK once every loop routes
by it, or ROUTES_REFUSED (the old table stays). HOST_ATTACH hands a loop a
host's data channel, HOST_DETACH takes a host out of service (each loop
answers HOST_DRAINED once nothing is in flight there), TENANT_STATE says
whether requests for a tenant without a host wait (STARTING) or get 503
(DOWN), LEAVING that the node drains: every answer closes its connection.
Frames are protocol.py's 24-byte header with types of their own range.
tests/unit/test_front_control.py compiles a small program against the C header to check that both agree.
"""
from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mayflyd.protocol import ProtocolError, pack_frame, parse_frame

__all__ = [
    "MSG_ROUTES", "MSG_ROUTES_ACK", "MSG_ROUTES_REFUSED", "MAX_ROUTES_PAYLOAD", "MAX_TENANTS", "MAX_NAME",
    "MAX_PROXIES", "ROUTE_DEFAULT", "ROUTES_ACCESS_LOG", "STRUCTS", "RouteLimits", "TenantRoute", "RoutesAnswer",
    "encode_routes", "decode_answer", "MSG_HOST_ATTACH", "MSG_HOST_DETACH", "MSG_TENANT_STATE",
    "MSG_HOST_DRAINED", "TENANT_STARTING", "TENANT_DOWN", "HostDrained", "encode_host_attach",
    "encode_host_detach", "encode_tenant_state", "decode_from_front", "MSG_LEAVING", "encode_leaving",
]

MSG_ROUTES: Final = 96
MSG_HOST_ATTACH: Final = 97
MSG_HOST_DETACH: Final = 98
MSG_TENANT_STATE: Final = 99
MSG_LEAVING: Final = 100
MSG_ROUTES_ACK: Final = 112
MSG_ROUTES_REFUSED: Final = 113
MSG_HOST_DRAINED: Final = 114

TENANT_STARTING: Final = 1
TENANT_DOWN: Final = 2

MAX_ROUTES_PAYLOAD: Final = 128 * 1024
MAX_TENANTS: Final = 4096
MAX_NAME: Final = 255
MAX_PROXIES: Final = 1024
ROUTE_DEFAULT: Final = 1
ROUTES_ACCESS_LOG: Final = 1

# Native byte order, standard sizes, no padding, as in protocol.py.
ROUTES_HEAD: Final = struct.Struct("=QIIII")
ROUTE_TENANT: Final = struct.Struct("=QQIIIIIIII")
ROUTE_HOST: Final = struct.Struct("=II")
ROUTE_PROXY: Final = struct.Struct("=16sII")
ROUTES_ACK: Final = struct.Struct("=Q")
HOST_ATTACH: Final = struct.Struct("=QIIII")
HOST_DETACH: Final = struct.Struct("=Q")
HOST_DRAINED: Final = struct.Struct("=QII")
TENANT_STATE: Final = struct.Struct("=II")

# struct name -> (struct, field names in order), for the layout test.
STRUCTS: Final[dict[str, tuple[struct.Struct, tuple[str, ...]]]] = {
    "mf_routes_head": (ROUTES_HEAD, ("generation", "tenant_count", "flags", "proxy_count", "reserved")),
    "mf_route_tenant": (ROUTE_TENANT, ("max_body", "max_response", "request_timeout_ms", "concurrency",
                                       "flags", "name_len", "host_count", "queue", "slot", "request_cpu_ms")),
    "mf_route_host": (ROUTE_HOST, ("len", "reserved")),
    "mf_route_proxy": (ROUTE_PROXY, ("addr", "prefix", "reserved")),
    "mf_routes_ack": (ROUTES_ACK, ("generation",)),
    "mf_host_attach": (HOST_ATTACH, ("host_id", "thread", "name_len", "engine", "reserved")),
    "mf_host_detach": (HOST_DETACH, ("host_id",)),
    "mf_host_drained": (HOST_DRAINED, ("host_id", "thread", "reserved")),
    "mf_tenant_state": (TENANT_STATE, ("state", "name_len")),
}


@dataclass(frozen=True, slots=True)
class RouteLimits:
    max_body: int
    max_response: int
    request_timeout_ms: int
    concurrency: int
    queue: int = 256
    request_cpu_ms: int = 0  # the host enforces it; the front end names it in its 504


@dataclass(frozen=True, slots=True)
class TenantRoute:
    name: str
    hosts: tuple[str, ...]  # exact names and "*.suffix", normalised as the config keeps them
    default: bool
    limits: RouteLimits
    slot: int = 0  # the tenant's metrics slot, fixed for the daemon's lifetime


@dataclass(frozen=True, slots=True)
class RoutesAnswer:
    generation: int
    accepted: bool
    reason: str  # why it was refused; empty when accepted


@dataclass(frozen=True, slots=True)
class HostDrained:
    """A loop of the front end has nothing in flight on a detached host and closed its channel."""

    host_id: int
    thread: int


def encode_routes(generation: int, tenants: Sequence[TenantRoute], *, access_log: bool = False,
                  trusted_proxies: Sequence[str] = ()) -> bytes:
    """One ROUTES packet; ValueError if it cannot fit one. trusted_proxies:
    networks as the config keeps them ("10.0.0.0/8", "2001:db8::/32")."""
    if len(tenants) > MAX_TENANTS:
        raise ValueError(f"{len(tenants)} tenants, at most {MAX_TENANTS}")
    if len(trusted_proxies) > MAX_PROXIES:
        raise ValueError(f"{len(trusted_proxies)} trusted proxies, at most {MAX_PROXIES}")
    parts = [ROUTES_HEAD.pack(generation, len(tenants), ROUTES_ACCESS_LOG if access_log else 0,
                              len(trusted_proxies), 0)]
    for tenant in tenants:
        name = tenant.name.encode("ascii")
        limits = tenant.limits
        parts.append(ROUTE_TENANT.pack(limits.max_body, limits.max_response, limits.request_timeout_ms,
                                       limits.concurrency, ROUTE_DEFAULT if tenant.default else 0, len(name),
                                       len(tenant.hosts), limits.queue, tenant.slot, limits.request_cpu_ms))
        parts.append(name)
        for host in tenant.hosts:
            encoded = host.encode("ascii")
            parts.append(ROUTE_HOST.pack(len(encoded), 0))
            parts.append(encoded)
    parts.extend(_proxy(network) for network in trusted_proxies)
    return pack_frame(MSG_ROUTES, 0, b"".join(parts), max_payload=MAX_ROUTES_PAYLOAD)


def _proxy(text: str) -> bytes:
    """A network as the front end matches it: IPv4 as IPv4-mapped IPv6."""
    network = ipaddress.ip_network(text)
    if isinstance(network, ipaddress.IPv4Network):
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + network.network_address.packed)
        return ROUTE_PROXY.pack(mapped.packed, network.prefixlen + 96, 0)
    return ROUTE_PROXY.pack(network.network_address.packed, network.prefixlen, 0)


def _name(name: str) -> bytes:
    encoded = name.encode("ascii")
    if not 0 < len(encoded) <= MAX_NAME:
        raise ValueError(f"tenant name of {len(encoded)} bytes")
    return encoded


def encode_host_attach(host_id: int, thread: int, tenant: str, engine: int) -> bytes:
    """HOST_ATTACH; the data channel's fd goes with it in SCM_RIGHTS.
    engine is protocol.ENGINE_FORK or ENGINE_RESET."""
    name = _name(tenant)
    return pack_frame(MSG_HOST_ATTACH, 0, HOST_ATTACH.pack(host_id, thread, len(name), engine, 0) + name)


def encode_host_detach(host_id: int) -> bytes:
    return pack_frame(MSG_HOST_DETACH, 0, HOST_DETACH.pack(host_id))


def encode_tenant_state(tenant: str, state: int, reason: str = "") -> bytes:
    name = _name(tenant)
    text = reason.encode("utf-8")[:1024]
    return pack_frame(MSG_TENANT_STATE, 0, TENANT_STATE.pack(state, len(name)) + name + text)


def encode_leaving() -> bytes:
    return pack_frame(MSG_LEAVING, 0, b"")


def decode_from_front(packet: bytes) -> RoutesAnswer | HostDrained:
    """Any message the front end sends; ProtocolError for anything else."""
    frame = parse_frame(packet)
    if frame.type == MSG_HOST_DRAINED:
        if len(frame.payload) != HOST_DRAINED.size:
            raise ProtocolError(f"HOST_DRAINED of {len(frame.payload)} bytes")
        host_id, thread, _ = HOST_DRAINED.unpack(frame.payload)
        return HostDrained(host_id, thread)
    return decode_answer(packet)


def decode_answer(packet: bytes) -> RoutesAnswer:
    """The front end's ROUTES_ACK or ROUTES_REFUSED; ProtocolError for anything else."""
    frame = parse_frame(packet)
    if len(frame.payload) < ROUTES_ACK.size:
        raise ProtocolError(f"short answer of {len(frame.payload)} bytes")
    (generation,) = ROUTES_ACK.unpack_from(frame.payload)
    rest = frame.payload[ROUTES_ACK.size:]
    if frame.type == MSG_ROUTES_ACK and not rest:
        return RoutesAnswer(generation, True, "")
    if frame.type == MSG_ROUTES_REFUSED:
        return RoutesAnswer(generation, False, rest.decode("utf-8", "replace"))
    raise ProtocolError(f"unexpected message type {frame.type} on the front end's control channel")
