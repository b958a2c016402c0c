"""The supervisor's handle on the zygote (zygote.py) and on the hosts it forks.

Starts the zygote when the first host is wanted (and again after it died),
sends it one spawn message per host, and gives each host back as a
ZygoteChild. The zygote forks each host as the supervisor's own child
(CLONE_PARENT), so a host outlives the zygote: the supervisor reaps it and
signals it through its pidfd, so a recycled pid is never hit.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from mayflyd.host.sandbox_host import HostSpec
from mayflyd.host.stdio import let_sandboxes_reopen
from mayflyd.host.zygote import MAX_MESSAGE

__all__ = ["FdChannel", "ZygoteClient", "ZygoteChild", "ZygoteError", "python_argv"]

log = logging.getLogger("mayflyd.zygote")

# Started with -E and -s, an interpreter ignores the environment and the user
# site, so it is told where this very package lives (installed or a checkout).
_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])


def python_argv(module: str, *args: str) -> list[str]:
    """The command line that runs `module`.main() in a clean interpreter."""
    bootstrap = f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); from {module} import main; main()"
    return [sys.executable, "-E", "-s", "-c", bootstrap, *args]


class ZygoteError(Exception):
    """The zygote could not fork a host."""


def output_pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    """A host's stdout and stderr pipes: ((stdout_r, stdout_w), (stderr_r, stderr_w)).

    Pipes, not the socketpairs uvloop would make: each sandbox reopens the
    write ends for a file description of its own (host/stdio.py).
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        let_sandboxes_reopen(out_w)
        let_sandboxes_reopen(err_w)
    except OSError:
        for fd in (out_r, out_w, err_r, err_w):
            os.close(fd)
        raise
    return (out_r, out_w), (err_r, err_w)


class HostOutput:
    """A host's stdout and stderr streams, read from the pipes of output_pipes()."""

    def __init__(self) -> None:
        self.stdout = asyncio.StreamReader()
        self.stderr = asyncio.StreamReader()
        self._transports: list[asyncio.BaseTransport] = []

    def kill(self) -> None:
        raise NotImplementedError

    async def attach_output(self, stdout_fd: int, stderr_fd: int) -> None:
        """Read the pipes' read ends (taken over); if that fails, the host is
        killed: nobody would own it."""
        loop = asyncio.get_running_loop()
        try:
            for fd, reader in ((stdout_fd, self.stdout), (stderr_fd, self.stderr)):
                protocol = asyncio.StreamReaderProtocol(reader)
                transport, _ = await loop.connect_read_pipe(lambda: protocol, os.fdopen(fd, "rb", 0))
                self._transports.append(transport)
        except BaseException:
            self.kill()
            self.close()
            raise

    def close(self) -> None:
        """Stop reading its output (the relays are done with it)."""
        for transport in self._transports:
            transport.close()
        self._transports.clear()


class ZygoteChild(HostOutput):
    """A host forked by the zygote, the supervisor's child: pid, output
    streams, wait() and kill(). Its pidfd tells its end, and reaps it."""

    def __init__(self, pid: int, pidfd: int, on_end: Callable[[ZygoteChild], object]) -> None:
        self.pid = pid
        self._pidfd = pidfd
        self.returncode: int | None = None
        super().__init__()
        self._on_end = on_end
        self._exited = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(pidfd, self._reap)

    def kill(self) -> None:
        if self.returncode is None:
            try:
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already exited

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode

    def _reap(self) -> None:
        """Readable: it has exited, and is a zombie until this waitid."""
        try:
            info = os.waitid(os.P_PIDFD, self._pidfd, os.WEXITED | os.WNOHANG)
        except ChildProcessError:
            info = None  # reaped by someone else: its status is lost
        if info is not None and info.si_code == os.CLD_EXITED:
            returncode = info.si_status
        elif info is not None:
            returncode = -info.si_status
        else:
            returncode = -signal.SIGKILL
        self._loop.remove_reader(self._pidfd)
        os.close(self._pidfd)
        self.returncode = returncode
        self._exited.set()
        self._on_end(self)


class ZygoteClient:
    """Starts the zygote, and again soon after it died, so that the next host
    start finds it ready; one that dies young is restarted ever later."""

    RESTART_DELAY = 0.5   # seconds after a death, doubled while deaths come young
    RESTART_DELAY_MAX = 30.0
    STABLE_AFTER = 10.0   # seconds a zygote must live for the delay to start again at RESTART_DELAY

    def __init__(self, env: Mapping[str, str], on_start: Callable[[], None] | None = None) -> None:
        self._env = dict(env)
        self._on_start = on_start
        self._proc: asyncio.subprocess.Process | None = None
        self._channel: FdChannel | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[ZygoteChild]] = {}
        self._children: dict[int, ZygoteChild] = {}
        self._next_spawn = 0
        self._lock = asyncio.Lock()
        self._started_at = 0.0
        self._restart_delay = self.RESTART_DELAY
        self.starts = 0

    @property
    def pid(self) -> int:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else 0

    async def spawn(self, spec: HostSpec, env: Mapping[str, str]) -> ZygoteChild:
        """Fork a host running `spec`, with its control channel at spec.ctrl_fd (sent, not kept)."""
        channel = await self._running()
        self._next_spawn += 1
        n = self._next_spawn
        future: asyncio.Future[ZygoteChild] = asyncio.get_running_loop().create_future()
        (out_r, out_w), (err_r, err_w) = output_pipes()
        try:
            message = json.dumps({"spawn": n, "spec": spec.to_json(), "env": dict(env)}).encode()
            if len(message) > MAX_MESSAGE:
                raise ZygoteError(f"the host's spec and environment are over {MAX_MESSAGE} bytes")
            self._pending[n] = future
            try:
                await channel.send(message, [spec.ctrl_fd, out_w, err_w])
            except OSError as exc:
                raise ZygoteError(f"cannot reach the zygote: {exc}") from None
            child = await future
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            self._pending.pop(n, None)
            os.close(out_w)
            os.close(err_w)
        await child.attach_output(out_r, err_r)
        return child

    async def close(self) -> None:
        """Stop the zygote, and kill the hosts that still run."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._tasks.clear()
        self._lost()
        children = list(self._children.values())
        for child in children:
            child.kill()
        if children:
            await asyncio.wait([asyncio.ensure_future(child.wait()) for child in children], timeout=5.0)
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()

    async def _running(self) -> FdChannel:
        async with self._lock:
            if self._channel is None:
                await self._start()
            assert self._channel is not None
            return self._channel

    async def _start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *python_argv("mayflyd.host.zygote", str(theirs.fileno()), str(os.getpid())),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                pass_fds=(theirs.fileno(),), env=self._env, cwd="/", start_new_session=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.starts += 1
        self._started_at = time.monotonic()
        if self._on_start is not None:
            self._on_start()
        self._channel = FdChannel(ours)
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks += [asyncio.create_task(self._read(self._channel)),
                        asyncio.create_task(self._relay(self._proc.stdout)),
                        asyncio.create_task(self._relay(self._proc.stderr))]
        log.info("zygote %d started", self._proc.pid)

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            await self._running()  # unless a host start has started it already
        except (OSError, ZygoteError) as exc:
            log.error("cannot restart the zygote: %s; the next host start tries again", exc)

    async def _read(self, channel: FdChannel) -> None:
        try:
            while True:
                data, fds = await channel.recv(1)
                if not data:
                    break
                self._dispatch(data, fds)
        except OSError as exc:
            log.error("zygote channel failed: %s", exc)
        finally:
            channel.close()
        if self._channel is channel:
            self._lost()
            if time.monotonic() - self._started_at >= self.STABLE_AFTER:
                self._restart_delay = self.RESTART_DELAY
            delay, self._restart_delay = self._restart_delay, min(2 * self._restart_delay, self.RESTART_DELAY_MAX)
            log.error("the zygote is gone; its hosts keep serving, and a new one starts in %.1f s", delay)
            self._tasks.append(asyncio.create_task(self._restart(delay)))

    def _dispatch(self, data: bytes, fds: list[int]) -> None:
        try:
            message: dict[str, Any] = json.loads(data)
            if "spawned" in message:
                (pidfd,) = fds
                fds = []
                self._resolve(message["spawned"], self._adopt(int(message["pid"]), pidfd))
            elif "failed" in message:
                if "pid" in message:  # forked, then killed: ours to reap
                    self._reap_failed(int(message["pid"]))
                self._resolve(message["failed"], ZygoteError(str(message["error"])))
            else:
                raise ValueError(f"unknown message {message!r}")
        except (ValueError, TypeError, KeyError) as exc:
            log.error("bad message from the zygote: %s", exc)
        finally:
            for fd in fds:
                os.close(fd)

    def _adopt(self, pid: int, pidfd: int) -> ZygoteChild:
        child = ZygoteChild(pid, pidfd, lambda ended: self._children.pop(ended.pid, None))
        self._children[pid] = child
        return child

    def _reap_failed(self, pid: int) -> None:
        try:
            self._adopt(pid, os.pidfd_open(pid))
        except OSError as exc:  # out of fds here too: left a zombie until we exit
            log.error("cannot reap host %d, which the zygote could not hand over: %s", pid, exc)

    def _resolve(self, n: object, result: ZygoteChild | ZygoteError) -> None:
        future = self._pending.get(n) if isinstance(n, int) else None
        if future is None or future.done():
            if isinstance(result, ZygoteChild):
                result.kill()  # nobody waits for it any more
            return
        if isinstance(result, ZygoteError):
            future.set_exception(result)
        else:
            future.set_result(result)

    def _lost(self) -> None:
        """The zygote is gone: fail what waits on it. Its hosts are the
        supervisor's children and keep serving."""
        self._channel = None  # closed by its reader
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ZygoteError("the zygote exited"))

    async def _relay(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            log.warning("zygote: %s", line.decode("utf-8", "replace").rstrip())


class FdChannel:
    """A non-blocking SEQPACKET socket that carries fds, for the event loop.

    A send waits while the peer's queue is full, one sender at a time: the
    loop keeps a single writer callback per fd, so two waiting senders would
    take each other's wake-up. Receives are for one reader. close() fails
    whoever still waits.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._sending = asyncio.Lock()
        self._waiting: dict[bool, asyncio.Future[None]] = {}  # write? -> its wake-up

    async def send(self, message: bytes, fds: list[int]) -> None:
        async with self._sending:
            while True:
                try:
                    socket.send_fds(self.sock, [message], fds)
                    return
                except BlockingIOError:
                    await self._ready(write=True)

    async def recv(self, max_fds: int) -> tuple[bytes, list[int]]:
        """One packet and the fds that came with it; b"" at the end."""
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(self.sock, 4096, max_fds)
                return data, fds
            except BlockingIOError:
                await self._ready(write=False)

    async def _ready(self, *, write: bool) -> None:
        if self.sock.fileno() < 0:
            raise ConnectionResetError("the channel is closed")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)
        fd = self.sock.fileno()
        (loop.add_writer if write else loop.add_reader)(fd, wake)
        self._waiting[write] = ready
        try:
            await ready
        finally:
            if self._waiting.get(write) is ready:  # else close() has unregistered it
                del self._waiting[write]
                (loop.remove_writer if write else loop.remove_reader)(fd)

    def close(self) -> None:
        if self.sock.fileno() < 0:
            return
        loop = asyncio.get_running_loop()
        for write, ready in self._waiting.items():
            (loop.remove_writer if write else loop.remove_reader)(self.sock.fileno())
            if not ready.done():
                ready.set_exception(ConnectionResetError("the channel was closed"))
        self._waiting.clear()
        self.sock.close()
