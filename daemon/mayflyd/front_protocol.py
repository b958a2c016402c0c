"""The front end's control channel; a mirror of csrc/wire/front_protocol.h.

The supervisor sends mayflyd-front a whole routing table (ROUTES) over one
SOCK_SEQPACKET socket; the front end answers ROUTES_ACK once every loop routes
by it, or ROUTES_REFUSED (the old table stays). Frames are protocol.py's
24-byte header with types of their own range. tests/unit/test_front_control.py
compiles a small program against the C header to check that both agree.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from mayflyd.protocol import ProtocolError, pack_frame, parse_frame

__all__ = [
    "MSG_ROUTES", "MSG_ROUTES_ACK", "MSG_ROUTES_REFUSED", "MAX_ROUTES_PAYLOAD", "MAX_TENANTS", "MAX_NAME",
    "ROUTE_DEFAULT", "STRUCTS", "RouteLimits", "TenantRoute", "RoutesAnswer", "encode_routes", "decode_answer",
]

MSG_ROUTES: Final = 96
MSG_ROUTES_ACK: Final = 112
MSG_ROUTES_REFUSED: Final = 113

MAX_ROUTES_PAYLOAD: Final = 128 * 1024
MAX_TENANTS: Final = 4096
MAX_NAME: Final = 255
ROUTE_DEFAULT: Final = 1

# Native byte order, standard sizes, no padding, as in protocol.py.
ROUTES_HEAD: Final = struct.Struct("=QII")
ROUTE_TENANT: Final = struct.Struct("=QQIIIIII")
ROUTE_HOST: Final = struct.Struct("=II")
ROUTES_ACK: Final = struct.Struct("=Q")

# struct name -> (struct, field names in order), for the layout test.
STRUCTS: Final[dict[str, tuple[struct.Struct, tuple[str, ...]]]] = {
    "mf_routes_head": (ROUTES_HEAD, ("generation", "tenant_count", "reserved")),
    "mf_route_tenant": (ROUTE_TENANT, ("max_body", "max_response", "request_timeout_ms", "concurrency",
                                       "flags", "name_len", "host_count", "reserved")),
    "mf_route_host": (ROUTE_HOST, ("len", "reserved")),
    "mf_routes_ack": (ROUTES_ACK, ("generation",)),
}


@dataclass(frozen=True, slots=True)
class RouteLimits:
    max_body: int
    max_response: int
    request_timeout_ms: int
    concurrency: int


@dataclass(frozen=True, slots=True)
class TenantRoute:
    name: str
    hosts: tuple[str, ...]  # exact names and "*.suffix", normalised as the config keeps them
    default: bool
    limits: RouteLimits


@dataclass(frozen=True, slots=True)
class RoutesAnswer:
    generation: int
    accepted: bool
    reason: str  # why it was refused; empty when accepted


def encode_routes(generation: int, tenants: Sequence[TenantRoute]) -> bytes:
    """One ROUTES packet; ValueError if it cannot fit one."""
    if len(tenants) > MAX_TENANTS:
        raise ValueError(f"{len(tenants)} tenants, at most {MAX_TENANTS}")
    parts = [ROUTES_HEAD.pack(generation, len(tenants), 0)]
    for tenant in tenants:
        name = tenant.name.encode("ascii")
        limits = tenant.limits
        parts.append(ROUTE_TENANT.pack(limits.max_body, limits.max_response, limits.request_timeout_ms,
                                       limits.concurrency, ROUTE_DEFAULT if tenant.default else 0, len(name),
                                       len(tenant.hosts), 0))
        parts.append(name)
        for host in tenant.hosts:
            encoded = host.encode("ascii")
            parts.append(ROUTE_HOST.pack(len(encoded), 0))
            parts.append(encoded)
    return pack_frame(MSG_ROUTES, 0, b"".join(parts), max_payload=MAX_ROUTES_PAYLOAD)


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
