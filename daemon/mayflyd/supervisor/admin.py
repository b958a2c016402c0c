"""The admin API: status, reload and metrics on a Unix socket only its user can open.

Routes: GET /status, GET /tenants/{name}, POST /reload, GET /metrics, GET
/healthz. Every answer is JSON except /metrics; an unknown path is a JSON
404, a wrong method a JSON 405. An optional TCP listener serves GET /metrics
and GET /healthz only, so that a Prometheus server can scrape it and a load
balancer check it without being able to reload anything.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from mayflyd.supervisor.health import Health
from mayflyd.supervisor.metrics import Metrics

__all__ = ["AdminServer", "Control"]

log = logging.getLogger("mayflyd.admin")

_SOCKET_MODE = 0o600
_PARENT_MODE = 0o700


class Control(Protocol):
    """What the admin API needs from the daemon."""

    def status(self) -> dict[str, Any]:
        """The daemon's status, JSON-able."""
        ...

    def tenant_status(self, name: str) -> dict[str, Any] | None:
        """One tenant's status, or None if there is no such tenant."""
        ...

    async def reload(self) -> dict[str, Any]:
        """Reload the config: {"result": "ok" | "failed", "error": str | None, ...}."""
        ...

    def health(self) -> Health:
        """Whether the node should get traffic, and what is wrong if not."""
        ...


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer every error in JSON, as the client expects, not in aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        return web.json_response({"error": f"method {request.method} not allowed for {request.path}"},
                                 status=405, headers={"Allow": ", ".join(sorted(exc.allowed_methods))})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        text = f"no route for {request.method} {request.path}" if exc.status == 404 else exc.reason
        return web.json_response({"error": text}, status=exc.status)
    except Exception as exc:
        log.exception("admin request %s %s failed", request.method, request.path)
        return web.json_response({"error": f"internal error: {exc}"}, status=500)


def _check_parent(parent: str) -> None:
    """Create the socket's directory for our user only, or refuse a directory
    that someone else (but root) owns or that others can write to: whoever can
    write there can replace the socket."""
    try:
        os.mkdir(parent, _PARENT_MODE)
    except FileExistsError:
        pass
    else:
        # mkdir's mode is filtered by the umask; make it exactly 0700.
        os.chmod(parent, _PARENT_MODE)
        return
    # An existing directory is the administrator's: check it, never chmod it.
    st = os.stat(parent)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(f"admin socket directory {parent} is not a directory")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise OSError(f"admin socket directory {parent} is writable by group or others "
                      f"(mode {stat.S_IMODE(st.st_mode):04o}); refusing to put the admin socket there")
    if st.st_uid not in (0, os.geteuid()):
        raise OSError(f"admin socket directory {parent} belongs to uid {st.st_uid}, not to this daemon's "
                      f"uid {os.geteuid()}; refusing to put the admin socket there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"admin socket directory {parent} is not writable by uid {os.geteuid()}; "
                              "set admin_socket in the config to a directory of this user's, or leave it "
                              "unset for $XDG_RUNTIME_DIR/mayflyd")


def _remove_stale_socket(path: str) -> None:
    """Remove a socket left by a crashed run; refuse if a daemon still listens on it."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; not removing it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a leftover of a crashed run
    else:
        raise OSError(f"another mayflyd is running: something listens on the admin socket {path}")
    finally:
        probe.close()
    log.info("removing the stale admin socket %s", path)
    os.unlink(path)


def _bind_root_only(path: str) -> socket.socket:
    """A Unix socket bound at path with mode 0600, not yet listening."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        # chmod right after bind and before listen(), so no client can connect
        # while the mode is wider; not the umask, which is process-wide and
        # would also apply to files other threads create meanwhile.
        os.chmod(path, _SOCKET_MODE)
    except BaseException:
        sock.close()
        raise
    return sock


class AdminServer:
    """Serves the admin API on a Unix socket, and optionally /metrics on TCP."""

    __slots__ = ("_control", "_metrics", "_socket_path", "_metrics_listen", "_runners", "_socket_id",
                 "_reload_lock")

    def __init__(self, control: Control, metrics: Metrics, *, socket_path: str,
                 metrics_listen: tuple[str, int] | None = None) -> None:
        self._control = control
        self._metrics = metrics
        self._socket_path = socket_path
        self._metrics_listen = metrics_listen
        self._runners: list[web.AppRunner] = []
        # (device, inode) of the socket we bound: close() removes only that one.
        self._socket_id: tuple[int, int] | None = None
        # One reload at a time: two admins reloading at once must not interleave.
        self._reload_lock = asyncio.Lock()

    async def start(self) -> None:
        path = self._socket_path
        _check_parent(os.path.dirname(os.path.abspath(path)))
        _remove_stale_socket(path)
        sock = _bind_root_only(path)
        st = os.lstat(path)
        self._socket_id = (st.st_dev, st.st_ino)
        try:
            admin = web.Application(middlewares=[_json_errors])
            admin.router.add_get("/status", self._status)
            admin.router.add_get("/tenants/{name}", self._tenant)
            admin.router.add_post("/reload", self._reload)
            admin.router.add_get("/metrics", self._metrics_text)
            admin.router.add_get("/healthz", self._healthz)
            await self._serve(admin, lambda runner: web.SockSite(runner, sock))
            log.info("admin API on %s", path)
            if self._metrics_listen is not None:
                host, port = self._metrics_listen
                scrape = web.Application(middlewares=[_json_errors])
                scrape.router.add_get("/metrics", self._metrics_text)
                scrape.router.add_get("/healthz", self._healthz)
                await self._serve(scrape, lambda runner: web.TCPSite(runner, host, port, reuse_address=True))
                log.info("metrics and health on http://%s:%d/metrics and /healthz", host, port)
        except BaseException:
            sock.close()
            await self.close()
            raise

    async def _serve(self, app: web.Application, site: Callable[[web.AppRunner], web.BaseSite]) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        self._runners.append(runner)  # before start: close() must clean it up even if start fails
        await site(runner).start()

    async def close(self) -> None:
        """Stop serving, in the reverse order of start, then remove the socket."""
        errors: list[BaseException] = []
        while self._runners:
            try:
                await self._runners.pop().cleanup()
            except Exception as exc:  # noqa: BLE001 - keep tearing down; reported below
                errors.append(exc)
        if self._socket_id is not None:
            try:
                st = os.lstat(self._socket_path)
                if (st.st_dev, st.st_ino) == self._socket_id:
                    os.unlink(self._socket_path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                errors.append(exc)
            self._socket_id = None
        for error in errors:
            log.error("closing the admin API: %s", error)

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self._control.status())

    async def _tenant(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        status = self._control.tenant_status(name)
        if status is None:
            return web.json_response({"error": f"no tenant named {name!r}"}, status=404)
        return web.json_response(status)

    async def _reload(self, request: web.Request) -> web.Response:
        async with self._reload_lock:
            result = await self._control.reload()
        return web.json_response(result, status=200 if result.get("result") == "ok" else 409)

    async def _healthz(self, request: web.Request) -> web.Response:
        health = self._control.health()
        return web.json_response(health.body, status=health.http_status)

    async def _metrics_text(self, request: web.Request) -> web.Response:
        body, content_type = self._metrics.render()
        # Content-Type through headers: it carries a charset, which aiohttp's
        # content_type argument refuses.
        return web.Response(body=body, headers={"Content-Type": content_type})
