"""A tenant: its host kept alive and reloaded, its cgroup, its limits.

A tenant has one current host, which new requests go to, and possibly older
hosts that are draining after a reload: requests already on them finish
there, then they stop. A reload starts the new host first and switches only
when it is ready; if it fails, the current host keeps serving.
"""
from __future__ import annotations

import asyncio
import base64
import enum
import logging
import os
import sys
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Protocol

import mayflyd
from mayflyd import _mayfly
from mayflyd.config import TenantConfig
from mayflyd.config.records import WARM_UP_ROUNDS
from mayflyd.host.sandbox_host import STOP_TIMEOUT_MAX_MS, HostSpec
from mayflyd.protocol import WorkerReplaced
from mayflyd.supervisor.front_metrics import TenantCounts
from mayflyd.supervisor.front_process import TenantView
from mayflyd.supervisor.health import TenantHealth
from mayflyd.supervisor.host_handle import HostStartError, SandboxHost
from mayflyd.supervisor.logs import OutputBudget
from mayflyd.supervisor.metrics import Metrics
from mayflyd.supervisor.program_files import program_version
from mayflyd.supervisor.restarts import RestartIntensity
from mayflyd.supervisor.seccomp_policy import SeccompFilters, build_filters
from mayflyd.supervisor.zygote_client import ZygoteClient

__all__ = ["DataPlane", "Tenant", "TenantState", "Walls", "ReloadResult", "default_pool"]

log = logging.getLogger("mayflyd.tenant")

CPU_PERIOD_US = 100_000
# After its last request, how long a replaced host may take beyond the deadline.
DRAIN_GRACE = 1.0

# Host-side paths every sandbox needs to run Python, read-only.
# /proc is not the host's: the C helper mounts a procfs showing only the
# tenant's own processes.
_SYSTEM_PATHS = ("/usr", "/lib", "/lib64", "/bin", "/etc/ld.so.cache", "/etc/localtime", "/proc")


# Open files of one sandbox (RLIMIT_NOFILE).
SANDBOX_NOFILE = 256


def _warm_up_host(hosts: tuple[str, ...]) -> str:
    """The Host header of warm-up requests: the tenant's first name, a
    wildcard's made concrete."""
    if not hosts:
        return "localhost"
    return "warm-up" + hosts[0][1:] if hosts[0].startswith("*.") else hosts[0]


def default_pool() -> int:
    """Reset-engine workers per tenant when the config says none: the cores
    this daemon may run on (taskset, a cpuset), not the machine's; a worker
    beyond them adds a snapshot and no throughput."""
    return len(os.sched_getaffinity(0)) or 1


class DataPlane(Protocol):
    """What a tenant tells the front end, which serves its requests
    (supervisor/front_process.py), and the counts it keeps for it."""

    def host_ready(self, tenant: str, host: SandboxHost) -> None: ...
    async def host_retired(self, host: SandboxHost, grace: float) -> None: ...
    def host_gone(self, host: SandboxHost) -> None: ...
    def tenant_starting(self, tenant: str) -> None: ...
    def tenant_down(self, tenant: str, reason: str) -> None: ...
    def counts(self, tenant: str) -> TenantCounts: ...
    @property
    def loops(self) -> int: ...  # the front end's loops: a reset worker's request channels


class TenantState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    result: str               # ok | failed
    error: str | None
    at: float                 # time.time()
    version: str              # of the program that is serving afterwards
    # A config reload that applied but left tenants not serving it: why, by tenant.
    failed_tenants: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"result": self.result, "error": self.error, "version": self.version,
                "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.at)),
                "failed_tenants": dict(self.failed_tenants)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Walls:
    """The walls this daemon can build, decided once at start-up."""

    mode: str                 # root | userns | none: see HostSpec.mode
    cgroup_version: int       # 0: none
    cgroup_base: str
    cgroup_prefix: str
    seccomp: bool             # libseccomp is there to build the filters
    reset_missing: str = ""   # why this kernel cannot run the reset engine; "" = it can

    def engine_of(self, config: TenantConfig) -> str:
        """The engine a tenant runs on: auto is reset where the kernel allows it."""
        if config.engine == "auto":
            return "fork" if self.reset_missing else "reset"
        return config.engine

    def group_of(self, tenant: str) -> str:
        return f"{self.cgroup_prefix}/{tenant}"


def _sandbox_readonly_paths(config: TenantConfig) -> list[str]:
    package_dir = str(Path(mayflyd.__file__).resolve().parent)
    # The tenant's code and packages at the paths they have outside: what a
    # daemon without a mount namespace shows is then the same.
    tenant_dirs = [str(path) for path in (config.root, config.packages) if path is not None]
    paths = [*_SYSTEM_PATHS, sys.prefix, sys.base_prefix, sys.exec_prefix, package_dir, str(config.program),
             *tenant_dirs, *(str(p) for p in config.files)]
    return list(dict.fromkeys(paths))


BASE_HOST_ENVIRONMENT: Final = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


def host_environment(config: TenantConfig) -> dict[str, str]:
    """A clean environment: nothing of the daemon's leaks into a tenant."""
    return {**BASE_HOST_ENVIRONMENT, **dict(config.env)}


class Tenant:
    def __init__(self, config: TenantConfig, walls: Walls, metrics: Metrics, data_plane: DataPlane,
                 zygote: ZygoteClient | None = None) -> None:
        self.config = config
        self._data_plane = data_plane
        self._zygote = zygote  # forks its hosts; None: each host is a fresh interpreter
        self._walls = walls
        self._metrics = metrics
        self._host: SandboxHost | None = None
        self._draining: set[SandboxHost] = set()
        self._lock = asyncio.Lock()          # one host start (reload or restart) at a time
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._output = OutputBudget()
        self._filters = SeccompFilters(loading=b"", request=b"")
        self.state = TenantState.STOPPED
        self._stopping = False
        self.last_error = ""
        self._down = ""  # why no host will come soon (it fails to load, or a crash loop); "" otherwise
        self._restarts = RestartIntensity()
        self._retry_at: float | None = None  # monotonic time of the next start, while backing off
        self._answers_at_ready = 0  # the program's answers counted before the current host was ready
        self.last_reload: ReloadResult | None = None
        self.restarts = 0
        self.worker_replacements = 0

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def version(self) -> str:
        return self._host.version if self._host is not None else ""

    def _spec(self, config: TenantConfig) -> HostSpec:
        walls, limits = self._walls, config.limits
        root = walls.mode == "root"
        return HostSpec(
            tenant=self.name, program=str(config.program), app=config.app, interface=config.interface,
            warm_up=list(config.warm_up), warm_up_host=_warm_up_host(config.hosts), warm_up_rounds=WARM_UP_ROUNDS,
            root=str(config.root or ""), packages=str(config.packages or ""),
            ctrl_fd=-1, parent_pid=os.getpid(),
            uid=config.uid if root else os.geteuid(), gid=config.gid if root else os.getegid(),
            mode=walls.mode, cgroup_version=walls.cgroup_version, cgroup_base=walls.cgroup_base,
            cgroup_group=walls.group_of(self.name), network=config.network,
            readonly_paths=_sandbox_readonly_paths(config),
            loading_filter=base64.b64encode(self._filters.loading).decode(),
            request_filter=base64.b64encode(self._filters.request).decode(),
            pids=limits.pids, request_cpu_ms=limits.request_cpu_ms, request_memory=limits.request_memory,
            nofile=SANDBOX_NOFILE, concurrency=limits.concurrency, queue=limits.queue,
            engine=walls.engine_of(config),
            pool=config.pool or default_pool(), pool_idle_ms=config.pool_idle_ms,
            verify_rewind=config.verify_rewind, front_loops=self._data_plane.loops,
            stop_timeout_ms=min(limits.request_timeout_ms, STOP_TIMEOUT_MAX_MS))

    def view(self) -> TenantView:
        """What a (re)started front end is told about this tenant."""
        host = self._host if self._host is not None and self._host.ready else None
        return TenantView(name=self.name, host=host, down=self._down if host is None else "")

    def health(self) -> TenantHealth:
        """What GET /healthz says of this tenant: from the same state as view()."""
        view = self.view()
        retry_in = None
        if view.down:  # backing off, or (no retry time) starting again now
            retry_in = 0.0 if self._retry_at is None else max(0.0, self._retry_at - time.monotonic())
        if view.host is not None or view.down:
            reason = ""
        elif self.state is TenantState.STOPPED:
            reason = "stopped"
        elif self.state is TenantState.READY:
            reason = "its host has ended; a new one is starting"
        else:
            reason = "its host is starting" + (f" ({self.last_error})" if self.last_error else "")
        return TenantHealth(name=self.name, state=self.state.value, critical=self.config.critical,
                            ready=view.host is not None, down=view.down, reason=reason, retry_in=retry_in)

    def status(self) -> dict[str, object]:
        hosts = [host for host in (self._host, *self._draining) if host is not None]
        counts = self._data_plane.counts(self.name)
        return {
            "program": str(self.config.program), "version": self.version,
            "engine": self._walls.engine_of(self.config), "engine_configured": self.config.engine,
            "rewinds": counts.pages.count, "pages_rewound": counts.pages.sum,
            "worker_replacements": self.worker_replacements,
            "state": self.state.value, "error": self.last_error or None,
            "hosts": [{"pid": h.pid, "version": h.version, "draining": h is not self._host} for h in hosts],
            # The front end's counts: every answer by status; errors are the
            # 5xx and the daemon's refusals for a limit (408, 413, 431), not
            # the 4xx a program chose (program_4xx).
            "in_flight": counts.in_flight, "restarts": self.restarts,
            "requests": {str(status): n for status, n in sorted(counts.statuses.items())},
            "errors": counts.errors, "program_4xx": counts.program_4xx,
            "limit_hits": dict(counts.limits),
            "last_reload": self.last_reload.as_dict() if self.last_reload else None,
        }

    # ---- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        """Set up the cgroup and filters, and start keeping a host alive."""
        await self._set_cgroup_limits(self.config, reloading=False)
        await self._update_filters(self.config, None)
        self.state = TenantState.STARTING
        self._supervisor = asyncio.create_task(self._keep_host_alive(), name=f"tenant-{self.name}")

    async def wait_started(self) -> None:
        """Until the first host is ready or has failed once."""
        while self.state is TenantState.STARTING:
            await asyncio.sleep(0.01)

    def cut_stop_short(self) -> None:
        """The hosts being stopped are killed at once: their stop hooks cut short."""
        for host in self._draining:
            host.cut_short()

    async def stop(self, grace: float = 0.0) -> None:
        """Stop serving: let requests in flight finish within `grace`, then stop every host."""
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            try:
                await self._supervisor
            except asyncio.CancelledError:
                pass
            self._supervisor = None
        async with self._lock:  # a reload in progress finishes (or fails) first
            host, self._host = self._host, None
        self.state = TenantState.STOPPED
        hosts = [h for h in (host, *self._draining) if h is not None]
        await asyncio.gather(*(self._drain(h, grace) for h in hosts))
        for task in list(self._background):
            task.cancel()
        if self._walls.cgroup_version:
            try:
                await asyncio.to_thread(_mayfly.cgroup_remove, self._walls.cgroup_version,
                                        self._walls.cgroup_base, self._walls.group_of(self.name))
            except OSError as exc:
                log.error("removing the cgroup failed: %s", exc, extra={"tenant": self.name})

    async def reload(self, config: TenantConfig | None = None, *, kind: str) -> ReloadResult:
        """Load the program (and config) in a new host; switch to it only once it is ready."""
        new_config = config or self.config
        async with self._lock:
            if self._stopping:
                return ReloadResult(result="failed", error="the tenant is stopping", at=time.time(),
                                    version=self.version)
            try:
                await self._update_filters(new_config, self.config)
                # Old and new host share the tenant's cgroup until the old one
                # has drained: room for both, or a tenant using more than half
                # its memory could not reload (or would lose a host to the OOM killer).
                # With nothing serving there is no old generation to make room for.
                overlap = self._host is not None or bool(self._draining)
                await self._set_cgroup_limits(new_config, reloading=overlap)
                host = await self._start_host(new_config)
            except (HostStartError, OSError) as exc:
                # Back to the filters and limits of what keeps serving.
                await self._update_filters(self.config, new_config)
                await self._set_cgroup_limits(self.config, reloading=bool(self._draining))
                self.last_reload = ReloadResult(result="failed", error=str(exc), at=time.time(),
                                                version=self.version)
                self._metrics.reload(kind, "failed")
                log.error("%s reload failed, version %s keeps serving: %s", kind, self.version or "(none)", exc,
                          extra={"tenant": self.name})
                return self.last_reload
            self.config = new_config
            self._install(host)
            self.last_reload = ReloadResult(result="ok", error=None, at=time.time(), version=host.version)
            self._metrics.reload(kind, "ok")
            return self.last_reload

    async def _update_filters(self, config: TenantConfig, previous: TenantConfig | None) -> None:
        """The seccomp filters new hosts of `config` get, rebuilt only when their inputs changed."""
        engine = self._walls.engine_of(config)
        if self._walls.seccomp and (previous is None or (previous.network, previous.seccomp_action,
                                                         self._walls.engine_of(previous))
                                    != (config.network, config.seccomp_action, engine)):
            self._filters = await asyncio.to_thread(build_filters, deny=config.seccomp_action,
                                                    network=config.network, reset=engine == "reset")

    async def _set_cgroup_limits(self, config: TenantConfig, *, reloading: bool) -> None:
        """The tenant's cgroup limits; twice the memory and pids while two generations of hosts overlap."""
        if not self._walls.cgroup_version:
            return
        limits, factor = config.limits, (2 if reloading else 1)
        try:
            await asyncio.to_thread(_mayfly.cgroup_setup, self._walls.cgroup_version, self._walls.cgroup_base,
                                    self._walls.group_of(self.name), limits.memory * factor,
                                    limits.pids * factor, round(limits.cpu * CPU_PERIOD_US), CPU_PERIOD_US)
        except OSError as exc:
            if not reloading and self._host is not None:
                # Lowering below what is in use fails (v1: EBUSY); the next reload retries.
                log.warning("cannot lower the cgroup limits yet: %s", exc, extra={"tenant": self.name})
                return
            raise

    async def _start_host(self, config: TenantConfig) -> SandboxHost:
        if self._walls.engine_of(config) == "reset" and self._walls.reset_missing:
            # Said here, once per start, rather than as a host that dies serving.
            raise HostStartError(f"engine: reset cannot run here: {self._walls.reset_missing}; "
                                 "use engine: fork or engine: auto")
        version = await asyncio.to_thread(program_version, config.code, config.packages)
        host = SandboxHost(tenant=self.name, version=version, spec=self._spec(config),
                           env=host_environment(config), output_budget=self._output,
                           on_sandbox_exit=self._sandbox_exited, zygote=self._zygote)
        await host.start(config.limits.init_timeout_ms / 1000)
        return host

    def _install(self, host: SandboxHost) -> None:
        """Make `host` the one new requests go to; the previous one drains."""
        old, self._host = self._host, host
        self.state = TenantState.READY
        self.last_error = ""
        self._down = ""
        self._answers_at_ready = self._answers()
        self._restarts.loaded()
        self._metrics.host_started(self.name)
        self._data_plane.host_ready(self.name, host)
        log.info("host %d ready, serving version %s of %s", host.pid, host.version, self.config.program,
                 extra={"tenant": self.name})
        if old is not None:
            self._spawn(self._drain(old, self.config.limits.request_timeout_ms / 1000 + DRAIN_GRACE))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drain(self, host: SandboxHost, grace: float) -> None:
        """Let the host's requests finish (within `grace`), then stop it."""
        self._draining.add(host)
        try:
            if not host.exited.is_set():
                await self._data_plane.host_retired(host, grace)
            await host.stop()
            self._metrics.host_stopped(self.name)
        finally:
            self._draining.discard(host)
        if not self._draining and not self._stopping:
            async with self._lock:  # not while a reload holds the doubled limits
                if not self._draining:
                    await self._set_cgroup_limits(self.config, reloading=False)

    def _answers(self) -> int:
        """The program's answers to this tenant so far (not the 5xx, nor the front end's refusals)."""
        try:
            counts = self._data_plane.counts(self.name)
        except ValueError:
            return 0  # the counters' area is closed: the daemon is stopping, after its front end
        return sum(n for status, n in counts.statuses.items() if status < 400) + counts.program_4xx

    async def _keep_host_alive(self) -> None:
        while True:
            host = self._host
            if host is not None:
                await host.exited.wait()
                if host is not self._host:
                    continue  # replaced by a reload; the new one is watched next
                self._host = None
                self._data_plane.host_gone(host)
                self._data_plane.tenant_starting(self.name)
                await host.kill()  # closes its control socket and relay tasks
                self.restarts += 1
                self._metrics.host_stopped(self.name)
                self._metrics.host_restarted(self.name)
                restart = self._restarts.after_death(time.monotonic(), uptime=host.uptime,
                                                     served=self._answers() - self._answers_at_ready)
                if restart.delay == 0:
                    self.state = TenantState.STARTING
                    self.last_error = "the host died"
                    log.warning("host died; restarting at once: %s", restart.why, extra={"tenant": self.name})
                    continue
                self._down = f"the host died in {restart.why}"
                self._data_plane.tenant_down(self.name, self._down)
                await self._back_off(restart.delay, self._down, logging.ERROR, f"host died in {restart.why}")
                continue
            failure: Exception | None = None
            async with self._lock:
                if self._host is None:  # a reload may have installed one meanwhile
                    try:
                        self._install(await self._start_host(self.config))
                    except (HostStartError, OSError) as exc:
                        failure = exc
            if failure is not None:
                self._down = str(failure)
                self._data_plane.tenant_down(self.name, self._down)
                await self._back_off(self._restarts.after_load_failure(), str(failure), logging.ERROR,
                                     f"the program failed to load: {failure}")

    async def _back_off(self, delay: float, error: str, level: int, what: str) -> None:
        """Wait `delay` seconds in BACKOFF, saying why."""
        self.state = TenantState.BACKOFF
        self.last_error = error
        log.log(level, "%s; restarting in %.1fs", what, delay, extra={"tenant": self.name})
        self._retry_at = time.monotonic() + delay
        try:
            await asyncio.sleep(delay)
        finally:
            self._retry_at = None

    def _sandbox_exited(self, message: WorkerReplaced) -> None:
        """The host's one report to the supervisor about sandboxes: a
        replaced worker (a sandbox's own exit goes to the front end)."""
        # A dirty worker never serves again; this is how often that happens.
        self.worker_replacements += 1
        self._metrics.worker_replaced(self.name)
        log.warning("reset engine: a worker was replaced: %s", message.reason, extra={"tenant": self.name})
