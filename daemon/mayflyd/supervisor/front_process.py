"""The data plane as the supervisor sees it: mayflyd-front, kept running.

The supervisor owns the listening socket, the front end's control channel
and its metrics area, so that a front end that dies refuses no connection
and loses no count: it is restarted at once with the same three, and is told
again the routing table, each tenant's state and every serving host (a new
data channel per host and front-end thread). The supervisor does no work per
request: it speaks to the front end only when a table, a tenant's state or a
host changes.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import mayflyd
from mayflyd.config import Config
from mayflyd.front_protocol import TENANT_DOWN, TENANT_STARTING
from mayflyd.supervisor.front_link import FrontGone, FrontLink, RoutesRefused, routes_of
from mayflyd.supervisor.front_metrics import FrontMetrics, FrontMetricsCollector, TenantCounts
from mayflyd.supervisor.host_handle import SandboxHost
from mayflyd.supervisor.seccomp_policy import build_front_filter

__all__ = ["FrontProcess", "FrontStartError", "TenantView", "front_executable"]

log = logging.getLogger("mayflyd.front")

# Tenants at once: one metrics slot each.
METRICS_SLOTS = 4096
# Deaths of the front end within CRASH_WINDOW seconds before restarts wait.
CRASH_LOOP = 5
CRASH_WINDOW = 10.0
CRASH_DELAY = 1.0
# The largest body any tenant may accept (the max_body key's ceiling).
MAX_BODY_CEILING = 1 << 30


class FrontStartError(Exception):
    """The front end could not be started."""


def front_executable() -> Path:
    return Path(mayflyd.__file__).resolve().parent / "bin" / "mayflyd-front"


@dataclass(frozen=True, slots=True)
class TenantView:
    """What the front end is told about one tenant when it (re)starts."""

    name: str
    host: SandboxHost | None   # the serving host, if any
    down: str                  # why no host will come soon; "" while one is (or will be) serving


@dataclass(slots=True)
class _Drain:
    threads_left: set[int]
    done: asyncio.Event = field(default_factory=asyncio.Event)


class FrontProcess:
    """One mayflyd-front at a time, restarted whenever it ends until close()."""

    def __init__(self, config: Config, tenants: Callable[[], Iterable[TenantView]]) -> None:
        self._config = config
        self._tenants = tenants
        self.threads = config.front_threads or len(os.sched_getaffinity(0)) or 1
        self.metrics = FrontMetrics(threads=self.threads, slots=METRICS_SLOTS)
        self._slots: dict[str, int] = {}
        self._free_slots: list[int] = []
        self._listener: socket.socket | None = None
        self._filter_fd = -1
        self._link: FrontLink | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._drain_watch: asyncio.Task[None] | None = None
        self._host_ids: dict[SandboxHost, int] = {}
        self._attached: set[SandboxHost] = set()  # to the front end running now
        self._next_host_id = 0
        self._drains: dict[int, _Drain] = {}
        self._deaths: list[float] = []
        self._closing = False
        self._serving = False  # the front end running now has taken its table and hosts
        self._leaving = False  # the node drains: answers close their connections
        self.restarts = 0

    # ---- life ------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None else 0

    @property
    def state(self) -> str:
        """running (it serves), starting, restarting (it ended, the next is coming) or stopped."""
        if self._closing:
            return "stopped"
        if self._proc is None:
            return "starting"  # the daemon is starting its tenants first
        if self._proc.returncode is not None:
            return "restarting"
        return "running" if self._serving else "starting"

    def slot_of(self, tenant: str) -> int:
        """The tenant's metrics slot, from its first table until release_slot."""
        slot = self._slots.get(tenant)
        if slot is None:
            if self._free_slots:
                slot = self._free_slots.pop()
                self.metrics.clear(slot)  # a tenant added again starts from zero
            elif len(self._slots) < METRICS_SLOTS:
                slot = len(self._slots)
            else:
                raise FrontStartError(f"more than {METRICS_SLOTS} tenants")
            self._slots[tenant] = slot
        return slot

    def release_slot(self, tenant: str) -> None:
        """A removed tenant, stopped: no table names its slot any more."""
        slot = self._slots.pop(tenant, None)
        if slot is not None:
            self._free_slots.append(slot)

    @property
    def loops(self) -> int:
        return self.threads

    def counts(self, tenant: str) -> TenantCounts:
        """What the front end counted for the tenant, over its whole life."""
        return self.metrics.snapshot(self.slot_of(tenant))

    def collector(self) -> FrontMetricsCollector:
        """The Prometheus collector of the front end's counts, for the tenants configured now."""
        return FrontMetricsCollector(self.metrics, lambda: {view.name: self.slot_of(view.name)
                                                            for view in self._tenants()})

    async def start(self, listener: socket.socket | None = None) -> None:
        """Listen (on `listener`, an inherited listening socket, if given), start the
        front end and give it the current table; raises FrontStartError."""
        if listener is not None:
            self._listener = listener
        else:
            try:
                self._listener = socket.create_server((self._config.listen_host, self._config.listen_port),
                                                      family=_family(self._config.listen_host), backlog=4096,
                                                      reuse_port=False)
            except OSError as exc:
                raise FrontStartError(f"cannot listen on {self._config.listen_host}:{self._config.listen_port}: "
                                      f"{exc.strerror or exc}") from None
        bpf = await asyncio.to_thread(build_front_filter)
        self._filter_fd = os.memfd_create("mayflyd-front-filter", os.MFD_CLOEXEC)
        os.write(self._filter_fd, bpf)
        await self._spawn()
        self._keeper = asyncio.create_task(self._keep_running(), name="mayflyd-front")

    async def close(self, grace: float) -> None:
        """Stop accepting, let requests in flight finish within `grace`, then stop the front end."""
        self._closing = True
        self._serving = False
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        proc = self._proc
        if proc is not None and proc.returncode is None:
            proc.terminate()  # SIGTERM: it stops accepting and finishes what it holds
            try:
                async with asyncio.timeout(grace + 1.0):
                    await proc.wait()
            except TimeoutError:
                log.warning("the front end did not stop within %.1fs, killing it", grace + 1.0)
                proc.kill()
                await proc.wait()
        await self._close_link()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        if self._filter_fd >= 0:
            os.close(self._filter_fd)
            self._filter_fd = -1
        for drain in self._drains.values():
            drain.done.set()
        self.metrics.close()

    async def _close_link(self) -> None:
        if self._drain_watch is not None:
            self._drain_watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain_watch
            self._drain_watch = None
        if self._link is not None:
            self._link.close()
            self._link = None

    async def _spawn(self) -> None:
        assert self._listener is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            config = self._config
            fds = (self._listener.fileno(), theirs.fileno(), self.metrics.fd(), self._filter_fd)
            argv = [str(front_executable()), "--listen-fd", str(fds[0]), "--control-fd", str(fds[1]),
                    "--metrics-fd", str(fds[2]), "--seccomp-fd", str(fds[3]),
                    "--threads", str(self.threads), "--header-timeout-ms", str(config.header_timeout_ms),
                    "--body-timeout-ms", str(config.header_timeout_ms),
                    "--idle-timeout-ms", str(config.idle_timeout_ms), "--max-body", str(MAX_BODY_CEILING),
                    "--log-format", config.log_format]
            if os.geteuid() == 0:  # it drops to front_uid itself, before it opens anything of its own
                argv += ["--user", f"{config.front_uid}:{config.front_uid}"]
            self._proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=None,
                pass_fds=fds, cwd="/", start_new_session=True)
        except OSError as exc:
            ours.close()
            raise FrontStartError(f"cannot start {front_executable()}: {exc}") from None
        finally:
            theirs.close()
        self._link = FrontLink(ours)
        self._attached.clear()  # the new front end has no host yet
        self._drain_watch = asyncio.create_task(self._watch_drains(self._link))
        log.info("front end %d started: %d threads on %s:%d", self._proc.pid, self.threads,
                 config.listen_host, config.listen_port)
        try:
            await self._tell_everything()
            self._serving = True
        except (FrontGone, RoutesRefused, OSError) as exc:
            log.error("the new front end did not take its configuration: %s", exc)
            if self._proc.returncode is None:
                self._proc.kill()

    async def _tell_everything(self) -> None:
        """A new front end: the table, every tenant's state and its serving host."""
        await self.send_routes(self._config)
        for view in self._tenants():
            if view.host is not None and view.host.ready:
                self.host_ready(view.name, view.host)
            elif view.down:
                self.tenant_down(view.name, view.down)
        if self._leaving and self._link is not None:
            self._link.leaving()

    async def _keep_running(self) -> None:
        while True:
            proc = self._proc
            assert proc is not None
            status = await proc.wait()
            self._serving = False
            if self._closing:
                return
            self.restarts += 1
            how = (f"killed by signal {-status}" if status < 0 else f"exited with status {status}")
            log.error("the front end %d %s; restarting it (the listening socket stays open)", proc.pid, how)
            # Its data channels died with it: hosts being drained are drained.
            for drain in self._drains.values():
                drain.done.set()
            self._drains.clear()
            await self._close_link()
            now = time.monotonic()
            self._deaths = [t for t in self._deaths if now - t < CRASH_WINDOW] + [now]
            if len(self._deaths) > CRASH_LOOP:
                log.error("the front end died %d times in %.0fs: waiting %.1fs before the next start",
                          len(self._deaths), CRASH_WINDOW, CRASH_DELAY)
                await asyncio.sleep(CRASH_DELAY)
            try:
                await self._spawn()
            except FrontStartError as exc:
                log.error("%s; retrying in %.1fs", exc, CRASH_DELAY)
                await asyncio.sleep(CRASH_DELAY)

    # ---- what the front end is told ------------------------------------

    async def reconfigure(self, config: Config) -> None:
        """A reloaded configuration's table (its restart-only keys wait)."""
        self._config = config
        await self.send_routes(config)

    async def send_routes(self, config: Config) -> None:
        link = self._link
        if link is None:
            return  # a front end starting meanwhile is told by _tell_everything
        routes = routes_of(config, {tenant.name: self.slot_of(tenant.name) for tenant in config.tenants})
        try:
            await link.send_routes(routes, access_log=config.access_log, trusted_proxies=config.trusted_proxies)
        except FrontGone:
            pass  # _keep_running restarts it, with this table

    def host_ready(self, tenant: str, host: SandboxHost) -> None:
        """A host serves the tenant: one data channel for each front-end thread."""
        link = self._link
        if link is None or host in self._attached:
            return  # a new front end is told by _tell_everything; a host is attached once
        self._attached.add(host)
        host_id = self._host_ids.get(host)
        if host_id is None:
            self._next_host_id += 1
            host_id = self._host_ids[host] = self._next_host_id
        try:
            for thread in range(self.threads):
                channel = host.attach_data_channel(thread)
                try:
                    link.attach_host(host_id, thread, tenant, channel.fileno(), host.engine)
                finally:
                    channel.close()
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                log.error("cannot hand host %d to the front end: %s", host.pid, exc, extra={"tenant": tenant})

    def leave(self) -> None:
        """The node drains before it stops: from now on every answer closes its
        connection, so that keep-alive clients reconnect through their balancer."""
        self._leaving = True
        if self._link is not None:
            try:
                self._link.leaving()
            except OSError as exc:
                log.warning("cannot tell the front end that the node is leaving: %s", exc)

    def tenant_starting(self, tenant: str) -> None:
        """No host right now, one is coming: the front end's requests for it wait."""
        self._state(tenant, TENANT_STARTING, "")

    def tenant_down(self, tenant: str, reason: str) -> None:
        """No host will come soon: the front end answers 503 at once."""
        self._state(tenant, TENANT_DOWN, reason)

    def _state(self, tenant: str, state: int, reason: str) -> None:
        if self._link is None:
            return
        try:
            self._link.tenant_state(tenant, state, reason)
        except OSError as exc:
            log.warning("cannot tell the front end the tenant's state: %s", exc, extra={"tenant": tenant})

    async def host_retired(self, host: SandboxHost, grace: float) -> None:
        """No new request goes to `host`; returns once those in flight have ended, or after `grace`."""
        host_id = self._host_ids.pop(host, None)
        self._attached.discard(host)
        link = self._link
        if host_id is None or link is None:
            return
        drain = self._drains[host_id] = _Drain(threads_left=set(range(self.threads)))
        try:
            link.detach_host(host_id)
        except OSError:
            self._drains.pop(host_id, None)
            return
        try:
            async with asyncio.timeout(grace):
                await drain.done.wait()
        except TimeoutError:
            log.warning("host %d still had requests in flight after %.1fs", host.pid, grace,
                        extra={"tenant": host.tenant})
        finally:
            self._drains.pop(host_id, None)

    def host_gone(self, host: SandboxHost) -> None:
        """A host that died: the front end saw its channels end; forget its id."""
        self._host_ids.pop(host, None)
        self._attached.discard(host)

    async def _watch_drains(self, link: FrontLink) -> None:
        """The loops' HOST_DRAINED: a retired host is drained once every loop said so."""
        while True:
            try:
                drained = await link.host_drained()
            except (FrontGone, OSError):
                return  # _keep_running sees the front end end
            drain = self._drains.get(drained.host_id)
            if drain is not None:
                drain.threads_left.discard(drained.thread)
                if not drain.threads_left:
                    drain.done.set()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
