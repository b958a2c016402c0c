"""The supervisor's end of mayflyd-front's control channel.

The supervisor sends the whole routing table (every tenant's hosts, default
flag, limits and metrics slot) with a new generation on each change, and
waits for the front end to acknowledge that generation: from then on every
request it reads is routed by it. A refused table leaves the old one in use
(the front end logs why). It also attaches hosts (one data channel per
front end thread), detaches them (each loop answers HOST_DRAINED once it has
nothing in flight there) and says whether a tenant without a host is
STARTING (requests wait) or DOWN (requests get 503).
Not wired into the daemon yet: the Python front end still serves.
"""
from __future__ import annotations

import asyncio
import collections
import socket
import struct
from collections.abc import Mapping, Sequence

from mayflyd.config import Config
from mayflyd.front_protocol import (
    HostDrained,
    RouteLimits,
    RoutesAnswer,
    TenantRoute,
    decode_from_front,
    encode_host_attach,
    encode_host_detach,
    encode_leaving,
    encode_routes,
    encode_tenant_state,
)
from mayflyd.protocol import ProtocolError

__all__ = ["FrontGone", "RoutesRefused", "FrontLink", "routes_of"]

# Answers are a frame header, a generation and a short reason.
_RECV_SIZE = 4096
_FD = struct.Struct("=i")  # one fd in SCM_RIGHTS, native int


class FrontGone(Exception):
    """The front end closed its control channel (it ended)."""


class RoutesRefused(Exception):
    """The front end refused a routing table; it keeps routing by the old one."""


def routes_of(config: Config, slots: Mapping[str, int] | None = None) -> list[TenantRoute]:
    """The routing table of a configuration, tenants in their configured order;
    slots: each tenant's metrics slot (0 for one it does not name)."""
    return [
        TenantRoute(
            name=tenant.name,
            hosts=tenant.hosts,
            default=tenant.default,
            limits=RouteLimits(max_body=tenant.limits.max_body, max_response=tenant.limits.max_response,
                               request_timeout_ms=tenant.limits.request_timeout_ms,
                               concurrency=tenant.limits.concurrency,
                               request_cpu_ms=tenant.limits.request_cpu_ms),
            slot=(slots or {}).get(tenant.name, 0),
        )
        for tenant in config.tenants
    ]


class FrontLink:
    """One front end's control socket (SOCK_SEQPACKET, ours to close).

    Messages from the front end are read by whichever caller waits for one
    (one reader at a time) and queued by kind: table answers for the
    exchange that waits for them, HOST_DRAINED for host_drained().
    """

    __slots__ = ("_sock", "_generation", "_lock", "_read_lock", "_answers", "_drained", "_gone")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._generation = 0
        self._lock = asyncio.Lock()  # one table in flight: answers come back in order
        self._read_lock = asyncio.Lock()
        self._answers: collections.deque[RoutesAnswer] = collections.deque()
        self._drained: collections.deque[HostDrained] = collections.deque()
        self._gone = False

    @property
    def generation(self) -> int:
        """The last generation sent."""
        return self._generation

    async def send_config(self, config: Config, *, slots: Mapping[str, int] | None = None,
                          access_log: bool = False) -> int:
        return await self.send_routes(routes_of(config, slots), access_log=access_log,
                                      trusted_proxies=config.trusted_proxies)

    async def send_routes(self, tenants: Sequence[TenantRoute], *, access_log: bool = False,
                          trusted_proxies: Sequence[str] = ()) -> int:
        """Sends a table and returns its generation once the front end uses it."""
        async with self._lock:
            self._generation += 1
            packet = encode_routes(self._generation, tenants, access_log=access_log,
                                   trusted_proxies=trusted_proxies)
            return await self._exchange(self._generation, packet)

    async def send_raw(self, generation: int, packet: bytes) -> int:
        """Sends an already encoded ROUTES packet (tests: malformed ones)."""
        async with self._lock:
            return await self._exchange(generation, packet)

    # Host and tenant messages are small and few (one per host start, stop
    # or state change): sent at once, without a wait, so that a tenant's
    # attach and detach leave in the order it made them.

    def attach_host(self, host_id: int, thread: int, tenant: str, fd: int, engine: int) -> None:
        """Hands loop `thread` a host's data channel (the front end gets a copy of fd). engine
        (protocol.ENGINE_FORK or ENGINE_RESET) says how the host takes requests: a socketpair
        with each, or its workers' persistent channels."""
        self._send_now(encode_host_attach(host_id, thread, tenant, engine), fd)

    def detach_host(self, host_id: int) -> None:
        """No new requests to the host; every loop answers HOST_DRAINED once it is done with it."""
        self._send_now(encode_host_detach(host_id))

    def tenant_state(self, name: str, state: int, reason: str = "") -> None:
        """front_protocol.TENANT_STARTING or TENANT_DOWN (the reason is logged once by the front end)."""
        self._send_now(encode_tenant_state(name, state, reason))

    def leaving(self) -> None:
        """The node drains: from now on every answer closes its connection."""
        self._send_now(encode_leaving())

    async def host_drained(self) -> HostDrained:
        """The next HOST_DRAINED a loop sent."""
        while True:
            if self._drained:
                return self._drained.popleft()
            await self._read_one()

    def _send_now(self, packet: bytes, fd: int = -1) -> None:
        """Raises OSError if the front end is gone or (EAGAIN) not reading its channel."""
        fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))] if fd >= 0 else []
        self._sock.sendmsg([packet], fds)

    async def _exchange(self, generation: int, packet: bytes) -> int:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self._sock, packet)
        while True:
            while not self._answers:
                await self._read_one()
            answer = self._answers.popleft()
            # Another generation: the answer to a table whose waiter was
            # cancelled. 0: a refusal of a table too broken to name its own.
            if answer.generation != generation and (answer.accepted or answer.generation != 0):
                continue
            if not answer.accepted:
                raise RoutesRefused(f"routing table {generation} refused: {answer.reason}")
            return generation

    async def _read_one(self) -> None:
        """Reads one message (unless another reader queued some meanwhile) and queues it."""
        before = len(self._answers) + len(self._drained)
        async with self._read_lock:
            if len(self._answers) + len(self._drained) != before:
                return  # the reader before us brought something: the caller looks first
            if self._gone:
                raise FrontGone("the front end closed its control channel")
            packet = await asyncio.get_running_loop().sock_recv(self._sock, _RECV_SIZE)
            if not packet:
                self._gone = True
                raise FrontGone("the front end closed its control channel")
            try:
                message = decode_from_front(packet)
            except ProtocolError as exc:
                raise ProtocolError(f"front end control channel: {exc}") from exc
            if isinstance(message, HostDrained):
                self._drained.append(message)
            else:
                self._answers.append(message)

    def close(self) -> None:
        self._sock.close()
