"""Socket activation: the listening socket handed over by systemd's mayflyd.socket.

The sd_listen_fds protocol, without libsystemd: $LISTEN_PID names the process
the sockets are for, $LISTEN_FDS how many there are, from fd 3 on. The
socket unit holds the socket while the daemon restarts, so that the
connections made meanwhile wait in the kernel's backlog instead of being
refused; the supervisor serves the one whose address is the config's
`listen:`, exactly as it would serve a socket it bound itself.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
from collections.abc import MutableMapping

__all__ = ["ActivationError", "activated_listener", "listener_among"]

log = logging.getLogger("mayflyd.daemon")

# sd_listen_fds(3): the first passed fd.
LISTEN_FDS_START = 3
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ActivationError(Exception):
    """The inherited sockets cannot serve the configured `listen:` address."""


def activated_listener(host: str, port: int,
                       environ: MutableMapping[str, str] = os.environ) -> socket.socket | None:
    """The inherited listening socket bound to host:port; None without socket activation.

    The variables are removed whatever happens, so that no child (the
    zygote, a host) takes the sockets for its own; the sockets themselves
    are close-on-exec. Raises ActivationError if sockets were passed and
    none is a listening TCP socket on host:port. Blocking (a host name is
    resolved): call it off the event loop.
    """
    count, pid = environ.pop("LISTEN_FDS", None), environ.pop("LISTEN_PID", None)
    environ.pop("LISTEN_FDNAMES", None)
    if count is None:
        return None
    if pid is None or not pid.isdigit() or int(pid) != os.getpid():
        # Meant for another process (sd_listen_fds(3) ignores them too).
        log.warning("LISTEN_FDS is set for process %s, not this one (%d): not socket-activated", pid, os.getpid())
        return None
    if not count.isdigit() or int(count) == 0:
        raise ActivationError(f"LISTEN_FDS={count!r}: expected the number of inherited sockets")
    inherited = [_adopt(fd) for fd in range(LISTEN_FDS_START, LISTEN_FDS_START + int(count))]
    return listener_among(inherited, host, port)


def listener_among(inherited: list[socket.socket], host: str, port: int) -> socket.socket:
    """The listening TCP socket on host:port among `inherited`; the others are closed."""
    wanted = _addresses_of(host)
    chosen = next((sock for sock in inherited if _serves(sock, wanted, port)), None)
    described = [_describe(sock) for sock in inherited]
    for sock, description in zip(inherited, described):
        if sock is not chosen:
            if chosen is not None:
                log.warning("ignoring the inherited socket %s: not the configured listen address", description)
            sock.close()
    if chosen is None:
        raise ActivationError(
            f"none of the inherited sockets ({', '.join(described)}) is the configured listen address "
            f"{_shown(host, port)}: make ListenStream= in mayflyd.socket and `listen:` in the config the same "
            "address")
    if chosen.type != socket.SOCK_STREAM or not chosen.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        description = _describe(chosen)
        chosen.close()
        raise ActivationError(f"the inherited socket {description} is not a listening TCP socket")
    return chosen


def _adopt(fd: int) -> socket.socket:
    try:
        os.set_inheritable(fd, False)
        return socket.socket(fileno=fd)
    except OSError as exc:
        raise ActivationError(f"fd {fd} of LISTEN_FDS is not a socket: {exc.strerror or exc}") from None


def _addresses_of(host: str) -> set[_Address]:
    """The addresses `host` (an address or a name) binds to."""
    try:
        return {ipaddress.ip_address(host)}
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ActivationError(f"cannot resolve the listen host {host}: {exc.strerror}") from None
    return {ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in found}


def _serves(sock: socket.socket, wanted: set[_Address], port: int) -> bool:
    """Whether `sock` is bound to one of `wanted` and `port` (0: any port).
    A dual-stack [::] socket also serves 0.0.0.0."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    name = sock.getsockname()
    if port != 0 and name[1] != port:
        return False
    bound = ipaddress.ip_address(str(name[0]).partition("%")[0])
    if bound in wanted:
        return True
    dual_stack = (sock.family == socket.AF_INET6 and bound.is_unspecified
                  and not sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    return dual_stack and ipaddress.IPv4Address("0.0.0.0") in wanted


def _describe(sock: socket.socket) -> str:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        name = sock.getsockname()
        kind = "TCP" if sock.type == socket.SOCK_STREAM else "UDP" if sock.type == socket.SOCK_DGRAM else "IP"
        return f"fd {sock.fileno()}: {kind} {_shown(str(name[0]), int(name[1]))}"
    if sock.family == socket.AF_UNIX:
        return f"fd {sock.fileno()}: Unix socket {sock.getsockname() or 'unnamed'!r}"
    return f"fd {sock.fileno()}: address family {int(sock.family)}"


def _shown(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
