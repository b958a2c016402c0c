"""The supervisor's end of mayflyd-front's control channel: routing tables.

The supervisor sends the whole table (every tenant's hosts, default flag and
limits) with a new generation on each change, and waits for the front end to
acknowledge that generation: from then on every request it reads is routed by
it. A refused table leaves the old one in use (the front end logs why).
Not wired into the daemon yet: the Python front end still serves.
"""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence

from mayflyd.config import Config
from mayflyd.front_protocol import RouteLimits, RoutesAnswer, TenantRoute, decode_answer, encode_routes
from mayflyd.protocol import ProtocolError

__all__ = ["FrontGone", "RoutesRefused", "FrontLink", "routes_of"]

# Answers are a frame header, a generation and a short reason.
_RECV_SIZE = 4096


class FrontGone(Exception):
    """The front end closed its control channel (it ended)."""


class RoutesRefused(Exception):
    """The front end refused a routing table; it keeps routing by the old one."""


def routes_of(config: Config) -> list[TenantRoute]:
    """The routing table of a configuration, tenants in their configured order."""
    return [
        TenantRoute(
            name=tenant.name,
            hosts=tenant.hosts,
            default=tenant.default,
            limits=RouteLimits(max_body=tenant.limits.max_body, max_response=tenant.limits.max_response,
                               request_timeout_ms=tenant.limits.request_timeout_ms,
                               concurrency=tenant.limits.concurrency),
        )
        for tenant in config.tenants
    ]


class FrontLink:
    """One front end's control socket (SOCK_SEQPACKET, ours to close)."""

    __slots__ = ("_sock", "_generation", "_lock")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._generation = 0
        self._lock = asyncio.Lock()  # one table in flight: answers come back in order

    @property
    def generation(self) -> int:
        """The last generation sent."""
        return self._generation

    async def send_config(self, config: Config) -> int:
        return await self.send_routes(routes_of(config))

    async def send_routes(self, tenants: Sequence[TenantRoute]) -> int:
        """Sends a table and returns its generation once the front end uses it."""
        async with self._lock:
            self._generation += 1
            packet = encode_routes(self._generation, tenants)
            return await self._exchange(self._generation, packet)

    async def send_raw(self, generation: int, packet: bytes) -> int:
        """Sends an already encoded ROUTES packet (tests: malformed ones)."""
        async with self._lock:
            return await self._exchange(generation, packet)

    async def _exchange(self, generation: int, packet: bytes) -> int:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self._sock, packet)
        while True:
            answer = await self._receive(loop)
            # Another generation: the answer to a table whose waiter was
            # cancelled. 0: a refusal of a table too broken to name its own.
            if answer.generation != generation and (answer.accepted or answer.generation != 0):
                continue
            if not answer.accepted:
                raise RoutesRefused(f"routing table {generation} refused: {answer.reason}")
            return generation

    async def _receive(self, loop: asyncio.AbstractEventLoop) -> RoutesAnswer:
        packet = await loop.sock_recv(self._sock, _RECV_SIZE)
        if not packet:
            raise FrontGone("the front end closed its control channel")
        try:
            return decode_answer(packet)
        except ProtocolError as exc:
            raise ProtocolError(f"front end control channel: {exc}") from exc

    def close(self) -> None:
        self._sock.close()
