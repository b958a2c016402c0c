"""The supervisor: its whole life in one place.

Start-up builds the walls it can, starts every tenant and then listens.
Signal handlers only enqueue; the main loop does the work. Shutdown stops
listening, lets requests in flight finish, then stops the tenants and
removes their cgroups, in the reverse order of start-up.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from aiohttp import web

from mayflyd import _mayfly
from mayflyd.config import Config
from mayflyd.frontend import FrontEnd, make_app
from mayflyd.router import Router
from mayflyd.seccomp_policy import build_filters
from mayflyd.tenant import Tenant, Walls

__all__ = ["Daemon", "decide_walls"]

log = logging.getLogger("mayflyd.daemon")

SHUTDOWN_GRACE = 10.0


def _user_namespaces_work() -> bool:
    """Whether this (unprivileged) process may create a user namespace."""
    probe = "from mayflyd import _mayfly; _mayfly.enter_user_namespace()"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=30,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    return result.returncode == 0


def _seccomp_works() -> bool:
    try:
        build_filters()
    except Exception as exc:  # noqa: BLE001 - any failure means: no seccomp wall
        log.warning("cannot build seccomp filters: %s", exc)
        return False
    return True


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
    cgroup = "cgroup limits (memory, cpu, pids)"
    if version:
        present.append(f"cgroup v{version} limits (memory, cpu, pids) at {config.cgroup_root}")
    else:
        missing.append(cgroup)
    (present if seccomp else missing).append("seccomp filters")
    present.append("no capabilities, no_new_privs, per-request rlimits and CPU budget")
    log.info("walls present: %s", "; ".join(present))
    if missing:
        log.warning("walls MISSING: %s%s", "; ".join(missing),
                    "" if privileged else " (mayflyd runs without root)")
    return Walls(mode=mode, cgroup_version=version, cgroup_base=config.cgroup_root,
                 cgroup_prefix=config.cgroup_prefix, seccomp=seccomp)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._tenants: dict[str, Tenant] = {}
        self._router: Router[Tenant] = Router([])
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()

    def router(self) -> Router[Tenant]:
        return self._router

    async def run(self) -> int:
        walls = await asyncio.to_thread(decide_walls, self.config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        runner: web.AppRunner | None = None
        try:
            await self._start_tenants(walls)
            runner = web.AppRunner(make_app(FrontEnd(self.router)), access_log=None,
                                   shutdown_timeout=SHUTDOWN_GRACE, handle_signals=False)
            await runner.setup()
            site = web.TCPSite(runner, self.config.listen_host, self.config.listen_port, reuse_address=True)
            await site.start()
            log.info("listening on %s:%d with %d tenants", self.config.listen_host, self.config.listen_port,
                     len(self._tenants))
            await self._main_loop()
            return 0
        finally:
            if runner is not None:
                await runner.cleanup()
            await self._stop_tenants()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            log.info("stopped")

    async def _main_loop(self) -> None:
        while True:
            sig = await self._signals.get()
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("%s: stopping", sig.name)
                return
            if sig is signal.SIGHUP:
                log.warning("SIGHUP: configuration reload is not implemented yet; keeping the running config")

    async def _start_tenants(self, walls: Walls) -> None:
        self._tenants = {t.name: Tenant(t, walls) for t in self.config.tenants}
        for tenant in self._tenants.values():
            try:
                await tenant.start()
            except OSError as exc:
                log.error("cannot set up the tenant: %s", exc, extra={"tenant": tenant.name})
        await asyncio.gather(*(t.wait_started() for t in self._tenants.values()))
        self._router = Router((t, t.config.hosts, t.config.default) for t in self._tenants.values())

    async def _stop_tenants(self) -> None:
        results = await asyncio.gather(*(t.stop() for t in self._tenants.values()), return_exceptions=True)
        for tenant, result in zip(self._tenants.values(), results):
            if isinstance(result, BaseException):
                log.error("stopping the tenant failed: %s", result, extra={"tenant": tenant.name})
