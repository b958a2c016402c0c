"""The supervisor: its whole life in one place.

Start-up takes the listening socket systemd may pass, builds the walls it
can, clears what a crashed previous run left, opens the admin socket, starts
every tenant and then listens. Signal handlers only enqueue; the main loop
does the work: SIGHUP reloads the config, SIGTERM and SIGINT drain and stop.
The drain first serves on for drain_ms with /healthz answering 503, so that
a load balancer moves traffic away (a second signal ends that at once), then
stops accepting and lets requests in flight finish (a further signal stops
at once). Program files are watched and a changed
program is reloaded. Shutdown releases everything in the reverse order of
start-up.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import platform
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import mayflyd
from mayflyd import _mayfly
from mayflyd.config import Config, ConfigError, TenantConfig, load_config
from mayflyd.supervisor.activation import ActivationError, activated_listener
from mayflyd.supervisor.admin import AdminServer
from mayflyd.supervisor.cgroups import leave_delegated_root, remove_stale_cgroups
from mayflyd.supervisor.front_process import FrontProcess, FrontStartError, TenantView
from mayflyd.supervisor.health import Health, evaluate
from mayflyd.supervisor.metrics import Metrics
from mayflyd.supervisor.notify import Notifier
from mayflyd.supervisor.program_files import program_fingerprint, program_version
from mayflyd.supervisor.seccomp_policy import build_filters
from mayflyd.supervisor.tenant import BASE_HOST_ENVIRONMENT, ReloadResult, Tenant, TenantState, Walls
from mayflyd.supervisor.zygote_client import ZygoteClient

__all__ = ["Daemon", "decide_walls"]

log = logging.getLogger("mayflyd.daemon")

# How often program files are looked at, and how long they must stay
# unchanged before a reload (editors write in bursts).
WATCH_INTERVAL = 0.05
# With many tenants the scan slows down rather than keep a core busy
# stat()ing: 1000 tenants are looked at every 0.5 s.
WATCH_INTERVAL_PER_TENANT = 0.0005
WATCH_DEBOUNCE = 0.1
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Beyond drain_ms and shutdown_grace_ms, what a stop may take: the stop hooks (5 s at most), the rest.
_STOP_MARGIN_MS = 10_000
OPEN_FILES_CEILING = 1 << 20


def raise_open_files_limit() -> int:
    """The soft limit on open files raised to the hard one: each tenant holds
    a few fds in the supervisor and a pidfd in the zygote, so a thousand
    tenants need more than the usual soft 1024. Returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = OPEN_FILES_CEILING
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft


def _user_namespaces_work() -> bool:
    """Whether this (unprivileged) process may create a user namespace."""
    probe = "from mayflyd import _mayfly; _mayfly.enter_user_namespace()"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    return result.returncode == 0


def _seccomp_works() -> bool:
    try:
        build_filters()
    except Exception as exc:  # noqa: BLE001 - any failure means: no seccomp wall
        log.warning("cannot build seccomp filters: %s", exc)
        return False
    return True


def _reset_engine_missing() -> str:
    """Why this daemon cannot run the reset engine; "" if it can."""
    if not hasattr(_mayfly, "serve_reset"):
        # setup.py leaves it out off x86_64 or with MAYFLYD_WITHOUT_RESET_ENGINE=1.
        return ("this build of mayflyd has no reset engine (setup.py builds it on x86_64 only, and not with "
                f"MAYFLYD_WITHOUT_RESET_ENGINE=1; this machine: {platform.machine()})")
    try:
        _mayfly.DirtyTracker().close()
    except OSError as exc:
        return f"the reset engine needs userfaultfd async write-protect and PAGEMAP_SCAN (Linux 6.7+): {exc}"
    return ""


def decide_walls(config: Config) -> Walls:
    """Which walls this process can build; said once, exactly, in the log."""
    privileged = os.geteuid() == 0
    mode = "root" if privileged else ("userns" if _user_namespaces_work() else "none")
    version = {"none": 0, "v1": 1, "v2": 2}.get(config.cgroup)
    if version is None:  # auto
        version = _mayfly.cgroup_detect(config.cgroup_root) if privileged else 0
    if not privileged:
        version = 0
    seccomp = _seccomp_works()
    present: list[str] = []
    missing: list[str] = []
    (present if mode == "root" else missing).append("a uid/gid of its own per tenant")
    namespaces = "mount, pid, ipc, uts, cgroup and network namespaces with a read-only minimal root"
    (present if mode in ("root", "userns") else missing).append(namespaces)
    if mode == "userns":
        present.append("a user namespace")
    if version:
        present.append(f"cgroup v{version} limits (memory, cpu, pids) at {config.cgroup_root}")
    else:
        missing.append("cgroup limits (memory, cpu, pids)")
    (present if seccomp else missing).append("seccomp filters")
    present.append("no capabilities, no_new_privs, per-request rlimits and CPU budget")
    log.info("walls present: %s", "; ".join(present))
    if missing:
        log.warning("walls MISSING: %s%s", "; ".join(missing),
                    "" if privileged else " (mayflyd runs without root)")
    reset_missing = _reset_engine_missing()
    if reset_missing:
        log.warning("engine auto means fork here: %s", reset_missing)
    else:
        log.info("engine auto means reset here: userfaultfd async write-protect and PAGEMAP_SCAN work")
    return Walls(mode=mode, cgroup_version=version, cgroup_base=config.cgroup_root,
                 cgroup_prefix=config.cgroup_prefix, seccomp=seccomp, reset_missing=reset_missing)


def _router_only_change(old: TenantConfig, new: TenantConfig) -> bool:
    """Only which hosts route to the tenant (or whether it is critical) changed: no new host needed."""
    return dataclasses.replace(old, hosts=new.hosts, default=new.default, critical=new.critical) == new


def _settle_heap() -> None:
    """Move what is alive now out of the collector's way: a full collection
    would otherwise walk the daemon's whole heap (tens of ms, a request-tail
    stall under load). Unfrozen first, so that what a reload dropped goes."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


class Daemon:
    def __init__(self, config: Config, *, config_path: Path | None = None, watch_programs: bool = True,
                 load: Callable[[Path], Config] = load_config) -> None:
        self.config = config
        self._config_path = config_path
        # How a reload reads config_path: as the command line read it at start.
        self._load = load
        self._watch = watch_programs
        self._tenants: dict[str, Tenant] = {}
        self._front = FrontProcess(config, self._tenant_views)
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._metrics = Metrics()
        self._notifier = Notifier.from_environment()
        self._walls: Walls | None = None
        self._reload_lock = asyncio.Lock()
        self._last_reload: ReloadResult | None = None
        self._started = time.monotonic()
        self._draining = False  # a stop signal came: /healthz says 503 from then on
        self._program_reloads: set[asyncio.Task[ReloadResult]] = set()
        # Started by the first host start that needs it.
        self._zygote = (ZygoteClient(BASE_HOST_ENVIRONMENT, on_start=self._metrics.zygote_started)
                        if config.zygote else None)

    def _tenant_views(self) -> list[TenantView]:
        return [tenant.view() for tenant in self._tenants.values()]

    # ---- life ------------------------------------------------------------

    async def run(self) -> int:
        async with self._signals_handled(), contextlib.AsyncExitStack() as stack:
            # First: no child may inherit $LISTEN_FDS, and a wrong socket stops us before any tenant starts.
            try:
                listener = await asyncio.to_thread(activated_listener, self.config.listen_host,
                                                   self.config.listen_port)
            except ActivationError as exc:
                log.error("socket activation: %s", exc)
                return 1
            raise_open_files_limit()  # before the zygote, which inherits it
            self._walls = await asyncio.to_thread(decide_walls, self.config)
            # Before anything of ours exists: what a crashed run left behind,
            # and (v2) out of the delegated root, which tenant groups need.
            await asyncio.to_thread(remove_stale_cgroups, self._walls)
            await asyncio.to_thread(leave_delegated_root, self._walls)
            self._metrics.add_collector(self._front.collector())
            admin = AdminServer(self, self._metrics, socket_path=self.config.admin_socket,
                                metrics_listen=self.config.metrics_listen)
            await admin.start()
            stack.push_async_callback(admin.close)
            if self._zygote is not None:
                stack.push_async_callback(self._zygote.close)
            stack.push_async_callback(self._stop_tenants)
            await self._start_tenants(self.config.tenants)
            try:
                await self._front.start(listener)
            except FrontStartError as exc:
                log.error("%s", exc)
                return 1
            stack.push_async_callback(self._drain_front_end)
            log.info("listening on %s:%d with %d tenants%s", self.config.listen_host, self.config.listen_port,
                     len(self._tenants), " (socket-activated)" if listener is not None else "")
            self._notifier.ready(self._status_line())
            _settle_heap()
            background = [asyncio.create_task(self._notifier.run_watchdog())]
            if self._watch:
                background.append(asyncio.create_task(self._watch_programs()))
            try:
                await self._main_loop()
                await self._serve_while_leaving()
            finally:
                for task in background:
                    task.cancel()
                self._begin_drain()
        self._notifier.close()
        log.info("stopped")
        return 0

    @contextlib.asynccontextmanager
    async def _signals_handled(self) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (*_STOP_SIGNALS, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        try:
            yield
        finally:
            for sig in (*_STOP_SIGNALS, signal.SIGHUP):
                loop.remove_signal_handler(sig)

    async def _main_loop(self) -> None:
        while True:
            sig = await self._signals.get()
            if sig in _STOP_SIGNALS:
                if self.config.drain_ms:
                    log.info("%s: draining: serving %d ms more with /healthz at 503, then stopping"
                             " (a second signal ends the drain)", sig.name, self.config.drain_ms)
                else:
                    log.info("%s: stopping (a second signal stops at once)", sig.name)
                return
            if sig is signal.SIGHUP:
                await self.reload()

    def _begin_drain(self) -> None:
        """From now on /healthz answers 503 and systemd knows the daemon stops (said once)."""
        if not self._draining:
            self._draining = True
            # The drain, the grace for requests in flight, the stop hooks (at
            # most 5 s) and a margin: systemd waits that long rather than
            # SIGKILLing a daemon still stopping as configured.
            longest_ms = self.config.drain_ms + self.config.shutdown_grace_ms + _STOP_MARGIN_MS
            self._notifier.stopping("stopping: draining requests", within_usec=longest_ms * 1000)

    async def _serve_while_leaving(self) -> None:
        """drain_ms of serving as usual, /healthz at 503 and every answer closing its
        connection, while load balancers take the node out; a stop signal ends it early."""
        self._begin_drain()
        if not self.config.drain_ms:
            return
        self._front.leave()
        deadline = time.monotonic() + self.config.drain_ms / 1000
        while (left := deadline - time.monotonic()) > 0:
            try:
                async with asyncio.timeout(left):
                    sig = await self._signals.get()
            except TimeoutError:
                break
            if sig in _STOP_SIGNALS:
                log.info("%s again: ending the drain; stopping (a further signal stops at once)", sig.name)
                return
            await self.reload()  # SIGHUP: the node still serves
        log.info("drained for %d ms: stopping (a second signal stops at once)", self.config.drain_ms)

    async def _drain_front_end(self) -> None:
        """Stop accepting; let requests in flight finish within the grace, or until a second signal."""
        cleanup = asyncio.create_task(self._front.close(self.config.shutdown_grace_ms / 1000))
        second = asyncio.create_task(self._signals.get())
        done, _ = await asyncio.wait({cleanup, second}, return_when=asyncio.FIRST_COMPLETED)
        if second in done and cleanup not in done:
            log.warning("%s again: stopping at once", second.result().name)
            cleanup.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await cleanup
            await self._front.close(0.0)
        else:
            second.cancel()
            await cleanup

    async def _start_tenants(self, configs: tuple[TenantConfig, ...]) -> dict[str, str]:
        """Start tenants until each serves or has failed once; why each that failed did."""
        assert self._walls is not None
        new = {t.name: Tenant(t, self._walls, self._metrics, self._front, self._zygote) for t in configs}
        failed: dict[str, str] = {}
        for tenant in new.values():
            try:
                await tenant.start()
            except OSError as exc:
                failed[tenant.name] = f"cannot set up the tenant: {exc}"
                log.error("cannot set up the tenant: %s", exc, extra={"tenant": tenant.name})
        await asyncio.gather(*(t.wait_started() for t in new.values()))
        self._tenants.update(new)
        for tenant in new.values():
            if tenant.state is TenantState.BACKOFF:
                failed[tenant.name] = f"{tenant.last_error} (in backoff, retrying)"
        return failed

    async def _stop_tenants(self) -> None:
        """Stop every tenant; a further signal meanwhile cuts the hosts' stop hooks short."""
        tenants = list(self._tenants.values())
        stopping = asyncio.gather(*(t.stop() for t in tenants), return_exceptions=True)
        second = asyncio.create_task(self._signals.get())
        either: set[asyncio.Future[Any]] = {stopping, second}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if second.done() and not stopping.done():
            log.warning("%s again: stopping the hosts at once", second.result().name)
            for tenant in tenants:
                tenant.cut_stop_short()
        else:
            second.cancel()
        results = await stopping
        for tenant, result in zip(tenants, results):
            if isinstance(result, BaseException):
                log.error("stopping the tenant failed: %s", result, extra={"tenant": tenant.name})

    # ---- reload ----------------------------------------------------------

    async def reload(self) -> dict[str, Any]:
        """Reload the config file: add, change and remove tenants; a bad file changes nothing."""
        async with self._reload_lock:
            self._notifier.reloading("reloading the configuration")
            result = await self._reload_config()
            self._last_reload = result
            self._metrics.reload("config", result.result)
            self._notifier.ready(self._status_line())
            _settle_heap()
            return result.as_dict()

    async def _reload_config(self) -> ReloadResult:
        if self._config_path is None:
            return ReloadResult(result="failed", error="this daemon was not started from a config file",
                                at=time.time(), version="")
        try:
            new = await asyncio.to_thread(self._load, self._config_path)
        except ConfigError as exc:
            log.error("configuration reload rejected, the running configuration stays:\n%s", exc)
            return ReloadResult(result="failed", error=str(exc), at=time.time(), version="")
        self._warn_restart_only(new)
        wanted = {t.name: t for t in new.tenants}
        removed = [t for name, t in self._tenants.items() if name not in wanted]
        added = tuple(cfg for name, cfg in wanted.items() if name not in self._tenants)
        failed: dict[str, str] = {}
        for name, cfg in wanted.items():
            tenant = self._tenants.get(name)
            if tenant is None or tenant.config == cfg:
                continue
            if _router_only_change(tenant.config, cfg):
                tenant.config = cfg
                continue
            outcome = await tenant.reload(cfg, kind="config")
            if outcome.result != "ok":
                serving = f"version {tenant.version} keeps serving" if tenant.version else "nothing serves"
                failed[name] = f"{outcome.error} ({serving})"
        failed.update(await self._start_tenants(added))
        for tenant in removed:
            del self._tenants[tenant.name]
        self.config = dataclasses.replace(self.config, tenants=new.tenants, defaults=new.defaults,
                                          log_level=new.log_level, access_log=new.access_log,
                                          trusted_proxies=new.trusted_proxies, drain_ms=new.drain_ms)
        await self._front.reconfigure(self.config)
        for tenant in removed:
            log.info("tenant removed from the configuration: draining and stopping", extra={"tenant": tenant.name})
            await tenant.stop(tenant.config.limits.request_timeout_ms / 1000)
            self._metrics.forget_tenant(tenant.name)
            self._front.release_slot(tenant.name)
        logging.getLogger().setLevel(new.log_level.upper())
        log.info("configuration reloaded: %d added, %d removed, %d tenants", len(added), len(removed),
                 len(self._tenants))
        return ReloadResult(result="failed" if failed else "ok",
                            error="; ".join(f"tenant {name}: {why}" for name, why in failed.items()) or None,
                            at=time.time(), version="", failed_tenants=failed)

    def _warn_restart_only(self, new: Config) -> None:
        """Settings a running daemon cannot change; they wait for a restart."""
        for key in ("listen_host", "listen_port", "cgroup", "cgroup_root", "cgroup_prefix", "admin_socket",
                    "metrics_listen", "log_format", "shutdown_grace_ms", "zygote", "header_timeout_ms",
                    "idle_timeout_ms", "front_threads", "front_uid"):
            if getattr(new, key) != getattr(self.config, key):
                log.warning("%s changed in the configuration: it takes effect at the next restart", key)

    async def _watch_programs(self) -> None:
        """Reload a tenant whose program files changed, once they stop changing."""
        seen: dict[str, tuple[Any, ...]] = {}
        changed_at: dict[str, float] = {}
        while True:
            await asyncio.sleep(max(WATCH_INTERVAL, len(self._tenants) * WATCH_INTERVAL_PER_TENANT))
            tenants = list(self._tenants.items())
            # One trip to a thread for all of them, not one per tenant.
            fingerprints = await asyncio.to_thread(
                lambda: [program_fingerprint(tenant.config.code, tenant.config.packages) for _, tenant in tenants])
            for (name, tenant), fingerprint in zip(tenants, fingerprints):
                if fingerprint != seen.get(name):
                    # A first sight counts as a change too: the file may have
                    # changed between the host's load and this first look.
                    seen[name], changed_at[name] = fingerprint, time.monotonic()
                    continue
                if name in changed_at and time.monotonic() - changed_at[name] >= WATCH_DEBOUNCE:
                    del changed_at[name]
                    await self._reload_program(tenant)

    async def _reload_program(self, tenant: Tenant) -> None:
        version = await asyncio.to_thread(program_version, tenant.config.code, tenant.config.packages)
        if version == tenant.version:
            return  # touched, not changed
        log.info("program changed (version %s): reloading", version, extra={"tenant": tenant.name})
        task = asyncio.create_task(tenant.reload(kind="program"))
        self._program_reloads.add(task)
        task.add_done_callback(self._program_reloads.discard)

    # ---- what the admin API shows ---------------------------------------

    def _status_line(self) -> str:
        ready = sum(1 for t in self._tenants.values() if t.state.value == "ready")
        return f"serving {ready}/{len(self._tenants)} tenants on {self.config.listen_host}:{self.config.listen_port}"

    def health(self) -> Health:
        """GET /healthz: whether a load balancer should send this node traffic."""
        return evaluate(draining=self._draining, front_end=self._front.state,
                        tenants=[tenant.health() for tenant in self._tenants.values()])

    def status(self) -> dict[str, Any]:
        walls = self._walls
        return {
            "version": mayflyd.__version__, "pid": os.getpid(), "uptime_s": round(time.monotonic() - self._started, 3),
            "draining": self._draining,
            "config": str(self._config_path) if self._config_path else None,
            "listen": f"{self.config.listen_host}:{self.config.listen_port}",
            "walls": {"mode": walls.mode, "cgroup": f"v{walls.cgroup_version}" if walls.cgroup_version else None,
                      "seccomp": walls.seccomp} if walls else None,
            "last_reload": self._last_reload.as_dict() if self._last_reload else None,
            "zygote": {"pid": self._zygote.pid, "starts": self._zygote.starts} if self._zygote else None,
            "front": {"pid": self._front.pid, "threads": self._front.threads, "restarts": self._front.restarts},
            "tenants": {name: tenant.status() for name, tenant in self._tenants.items()},
        }

    def tenant_status(self, name: str) -> dict[str, Any] | None:
        tenant = self._tenants.get(name)
        return tenant.status() if tenant else None
