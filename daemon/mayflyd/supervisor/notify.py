"""The sd_notify protocol, without libsystemd.

systemd (Type=notify) passes an AF_UNIX datagram socket in $NOTIFY_SOCKET;
each datagram is newline-separated KEY=VALUE lines. Outside systemd the
variable is unset and every method does nothing, so the daemon calls them
unconditionally.

The protocol the supervisor follows:

- READY=1 once it listens, and again when a reload has finished (with
  Type=notify that is what ends the unit's "reloading" state);
- RELOADING=1 when a SIGHUP reload starts; STOPPING=1 when it starts to
  drain, with EXTEND_TIMEOUT_USEC (systemd 236+) set to the longest the
  stop may take, so that a long drain_ms needs no larger TimeoutStopSec=;
- WATCHDOG=1 from a task on the event loop (run_watchdog), so a blocked loop
  stops the pings and systemd restarts the service.

Nothing here raises into the daemon: a notification is advisory and the
service must keep serving if the manager is gone. The first error is logged
as a warning, later ones at debug level, so a broken socket cannot flood
the journal.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time

__all__ = ["Notifier"]

log = logging.getLogger("mayflyd.notify")

_ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _watchdog_usec_from_env() -> int | None:
    """WATCHDOG_USEC if it is meant for this process, else None."""
    text = os.environ.get("WATCHDOG_USEC")
    if not text:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    # WATCHDOG_PID names the process the manager expects pings from; a child
    # that inherited the variables must not ping for its parent.
    if pid and pid != str(os.getpid()):
        return None
    try:
        usec = int(text)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", text)
        return None
    return usec if usec > 0 else None


def _address(path: str) -> str | None:
    """The sendto() address for $NOTIFY_SOCKET, or None if it is not one we support."""
    if path.startswith("@"):
        # Abstract namespace: Python takes a leading NUL byte in a str address.
        return "\0" + path[1:]
    if path.startswith("/"):
        return path
    return None  # e.g. systemd 254's vsock:CID:PORT, which this daemon never runs under


def _field(value: str) -> str:
    # A newline would start a new KEY=VALUE line in the datagram.
    return value.replace("\n", " ")


class Notifier:
    """Talks to the service manager over $NOTIFY_SOCKET; does nothing when it is unset."""

    __slots__ = ("_address", "_socket", "_watchdog_usec", "_failed")

    def __init__(self, socket_path: str | None = None, *, watchdog_usec: int | None = None) -> None:
        if socket_path is None:
            socket_path = os.environ.get("NOTIFY_SOCKET") or None
        if watchdog_usec is None:
            watchdog_usec = _watchdog_usec_from_env()
        self._address: str | None = None
        self._socket: socket.socket | None = None
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._failed = False
        if socket_path is None:
            return
        address = _address(socket_path)
        if address is None:
            log.warning("NOTIFY_SOCKET=%r is not an absolute path or @abstract name; "
                        "not notifying the service manager", socket_path)
            return
        try:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        except OSError as exc:
            log.warning("socket(AF_UNIX, SOCK_DGRAM) for NOTIFY_SOCKET=%s failed: %s", socket_path, exc)
            return
        # Never block the event loop: if the manager's queue is full the
        # message is dropped (and logged), which a missed ping tolerates.
        sock.setblocking(False)
        self._address = address
        self._socket = sock

    @classmethod
    def from_environment(cls) -> Notifier:
        """A Notifier for the variables systemd set, which are then removed from
        os.environ (like sd_notify's unset_environment), so that processes the
        daemon starts cannot notify or ping in its name."""
        notifier = cls()
        for name in _ENV_VARS:
            os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether there is a service manager to notify."""
        return self._socket is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings (half the manager's timeout, as sd_watchdog_enabled(3)
        advises), or None if there is no watchdog."""
        if self._watchdog_usec is None or not self.enabled:
            return None
        return self._watchdog_usec / 2 / 1_000_000

    def ready(self, status: str | None = None) -> None:
        """Start-up, or a reload, has finished."""
        self._send("READY=1", status)

    def reloading(self, status: str | None = None) -> None:
        """A reload starts; ready() ends it."""
        # systemd 253+ (Type=notify-reload) requires MONOTONIC_USEC with
        # RELOADING=1 to tell this reload from an older one; older ones ignore it.
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}", status)

    def stopping(self, status: str | None = None, *, within_usec: int | None = None) -> None:
        """The daemon starts to shut down; within_usec, if given, is how long it
        may take, past the unit's TimeoutStopSec= if need be."""
        state = "STOPPING=1" if within_usec is None else f"STOPPING=1\nEXTEND_TIMEOUT_USEC={within_usec}"
        self._send(state, status)

    def status(self, text: str) -> None:
        """A one-line status for `systemctl status`."""
        self._send(None, text)

    def watchdog(self) -> None:
        """One keep-alive ping."""
        self._send("WATCHDOG=1", None)

    async def run_watchdog(self) -> None:
        """Ping every watchdog_interval until cancelled; returns at once if there is
        no watchdog. Run it on the daemon's event loop: a stuck loop must stop
        the pings, which is what makes systemd restart the service."""
        interval = self.watchdog_interval
        if interval is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket; later notifications do nothing."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def _send(self, state: str | None, status: str | None) -> None:
        if self._socket is None or self._address is None:
            return
        lines = [] if state is None else [state]
        if status is not None:
            lines.append("STATUS=" + _field(status))
        message = "\n".join(lines)
        try:
            # "replace": an unencodable status must not raise past this method.
            self._socket.sendto(message.encode(errors="replace"), self._address)
        except OSError as exc:
            first = not self._failed
            self._failed = True
            log.log(logging.WARNING if first else logging.DEBUG,
                    "sendto(NOTIFY_SOCKET=%s, %r) failed: %s%s", self._address.replace("\0", "@"),
                    message, exc, "; further failures are logged at debug level" if first else "")
