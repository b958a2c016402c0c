"""A tenant: its host process kept alive, its cgroup, its concurrency limit."""
from __future__ import annotations

import asyncio
import base64
import collections
import enum
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mayflyd
from mayflyd import _mayfly
from mayflyd.config import TenantConfig
from mayflyd.host import HostStartError, HostUnavailable, RequestData, SandboxCrashed, SandboxError, SandboxHost
from mayflyd.protocol import Response
from mayflyd.sandbox_host import HostSpec
from mayflyd.seccomp_policy import SeccompFilters, build_filters

__all__ = ["Tenant", "TenantBusy", "TenantState", "Walls", "SandboxOutOfMemory"]

log = logging.getLogger("mayflyd.tenant")

CPU_PERIOD_US = 100_000
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 30.0
# A host that ran this long before dying starts the backoff afresh.
STABLE_AFTER = 10.0

# Host-side paths every sandbox needs to run Python, read-only.
# /proc is not the host's: the C helper mounts a procfs showing only the
# tenant's own processes.
_SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime", "/proc")


# Open files of one sandbox (RLIMIT_NOFILE).
SANDBOX_NOFILE = 256


class TenantBusy(Exception):
    """The tenant is at its concurrency limit."""


class SandboxOutOfMemory(SandboxError):
    """The OOM killer took the sandbox: the tenant is at its memory limit."""


class TenantState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class Walls:
    """The walls this daemon can build, decided once at start-up."""

    mode: str                 # root | userns | none: see HostSpec.mode
    cgroup_version: int       # 0: none
    cgroup_base: str
    cgroup_prefix: str
    seccomp: bool             # libseccomp is there to build the filters

    def group_of(self, tenant: str) -> str:
        return f"{self.cgroup_prefix}/{tenant}"


def _sandbox_readonly_paths(config: TenantConfig) -> list[str]:
    package_dir = str(Path(mayflyd.__file__).resolve().parent)
    paths = [*_SYSTEM_PATHS, sys.prefix, sys.base_prefix, sys.exec_prefix, package_dir, str(config.program),
             *(str(p) for p in config.files)]
    return list(dict.fromkeys(paths))


def host_environment(config: TenantConfig) -> dict[str, str]:
    """A clean environment: nothing of the daemon's leaks into a tenant."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **dict(config.env)}


class Tenant:
    def __init__(self, config: TenantConfig, walls: Walls) -> None:
        self.config = config
        self._walls = walls
        self._host: SandboxHost | None = None
        self._in_flight = 0
        self._host_exited = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self.state = TenantState.STOPPED
        self.last_error = ""
        self.restarts = 0
        self.limit_hits: collections.Counter[str] = collections.Counter()
        self._filters = SeccompFilters(loading=b"", request=b"")
        self._oom_kills = 0

    @property
    def name(self) -> str:
        return self.config.name

    def _spec(self) -> HostSpec:
        walls, limits = self._walls, self.config.limits
        root = walls.mode == "root"
        return HostSpec(
            tenant=self.name, program=str(self.config.program), ctrl_fd=-1, supervisor_pid=os.getpid(),
            uid=self.config.uid if root else os.geteuid(), gid=self.config.gid if root else os.getegid(),
            mode=walls.mode, cgroup_version=walls.cgroup_version, cgroup_base=walls.cgroup_base,
            cgroup_group=walls.group_of(self.name), network=self.config.network,
            readonly_paths=_sandbox_readonly_paths(self.config),
            loading_filter=base64.b64encode(self._filters.loading).decode(),
            request_filter=base64.b64encode(self._filters.request).decode(),
            pids=limits.pids, request_cpu_ms=limits.request_cpu_ms, request_memory=limits.request_memory,
            nofile=SANDBOX_NOFILE)

    def limit_hit(self, limit: str, req_id: int, detail: str) -> None:
        """Count and log a request that ran into one of the tenant's limits."""
        self.limit_hits[limit] += 1
        log.warning("limit hit: %s (%s)", limit, detail, extra={"tenant": self.name, "req": req_id})

    # ---- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Set up the cgroup and start keeping a host alive."""
        limits = self.config.limits
        if self._walls.cgroup_version:
            await asyncio.to_thread(_mayfly.cgroup_setup, self._walls.cgroup_version, self._walls.cgroup_base,
                                    self._walls.group_of(self.name), limits.memory, limits.pids,
                                    round(limits.cpu * CPU_PERIOD_US), CPU_PERIOD_US)
        if self._walls.seccomp:
            self._filters = await asyncio.to_thread(build_filters, deny=self.config.seccomp_action,
                                                    network=self.config.network)
        self.state = TenantState.STARTING
        self._supervisor = asyncio.create_task(self._keep_host_alive(), name=f"tenant-{self.name}")

    async def wait_started(self) -> None:
        """Until the first host is ready or has failed once."""
        while self.state is TenantState.STARTING:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None
        host, self._host = self._host, None
        if host is not None:
            await host.stop()
        self.state = TenantState.STOPPED
        if self._walls.cgroup_version:
            try:
                await asyncio.to_thread(_mayfly.cgroup_remove, self._walls.cgroup_version,
                                        self._walls.cgroup_base, self._walls.group_of(self.name))
            except OSError as exc:
                log.error("removing the cgroup failed: %s", exc, extra={"tenant": self.name})

    async def _keep_host_alive(self) -> None:
        delay = BACKOFF_FIRST
        while True:
            host = SandboxHost(tenant=self.name, spec=self._spec(), env=host_environment(self.config),
                               on_exit=self._on_host_exit)
            self._host_exited.clear()
            started = time.monotonic()
            try:
                await host.start(self.config.limits.init_timeout_ms / 1000)
            except (HostStartError, OSError) as exc:
                self.last_error = str(exc)
                log.error("the program failed to load: %s (retrying in %.1fs)", exc, delay,
                          extra={"tenant": self.name})
            else:
                self._host = host
                self.state = TenantState.READY
                self.last_error = ""
                log.info("host %d ready, serving %s", host.pid, self.config.program, extra={"tenant": self.name})
                await self._host_exited.wait()
                self._host = None
                await host.kill()
                self.restarts += 1
                if time.monotonic() - started > STABLE_AFTER:
                    delay = BACKOFF_FIRST
                log.warning("host died; restarting in %.1fs", delay, extra={"tenant": self.name})
            self.state = TenantState.BACKOFF
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _on_host_exit(self, host: SandboxHost) -> None:
        if host is self._host:
            self._host_exited.set()

    # ---- requests --------------------------------------------------------

    async def handle(self, request: RequestData) -> Response:
        """Run one request; raises TenantBusy, HostUnavailable or a SandboxError."""
        limits = self.config.limits
        if self._in_flight >= limits.concurrency:
            raise TenantBusy(f"{self._in_flight} requests in flight, limit {limits.concurrency}")
        host = self._host
        if host is None or not host.ready:
            raise HostUnavailable(f"the tenant is {self.state.value}"
                                  + (f": {self.last_error}" if self.last_error else ""))
        self._in_flight += 1
        try:
            return await host.run(request, timeout=limits.request_timeout_ms / 1000,
                                  max_response=limits.max_response)
        except SandboxCrashed as exc:
            if exc.killed and await self._oom_killed_since_last_look():
                raise SandboxOutOfMemory(f"{exc}; the tenant is at its memory limit") from None
            raise
        finally:
            self._in_flight -= 1

    async def _oom_killed_since_last_look(self) -> bool:
        """Whether the cgroup's OOM-kill counter moved."""
        if not self._walls.cgroup_version:
            return False
        try:
            stats = await asyncio.to_thread(_mayfly.cgroup_stats, self._walls.cgroup_version,
                                            self._walls.cgroup_base, self._walls.group_of(self.name))
        except OSError:
            return False
        kills = stats.get("oom_kill", 0)
        moved = kills > self._oom_kills
        self._oom_kills = kills
        return moved
