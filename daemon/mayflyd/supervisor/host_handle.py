"""The supervisor's handle on one sandbox host process.

Starts the host (forked by the zygote, or a fresh interpreter), waits for
its READY (or its LOAD_FAILED), relays its stdout and stderr into the log
tagged with the tenant, and stops it.

The host has a control channel (its lifecycle: READY, LOAD_FAILED,
WORKER_REPLACED, SHUTDOWN, DATA_CHANNEL), which this handle holds, and the
data channels attached through it (REQUEST, CANCEL, CHILD_EXIT,
REQUEST_FAILED), one per front-end loop (attach_data_channel), which the
front end holds: the supervisor never sees a request.
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Protocol, TypeVar

from mayflyd import error_record, protocol
from mayflyd.host.sandbox_host import HostSpec
from mayflyd.protocol import (
    ControlMessage,
    DataMessage,
    LoadFailed,
    Ready,
    WorkerReplaced,
)
from mayflyd.supervisor.logs import EXCEPTION_LOGGER, OutputBudget
from mayflyd.supervisor.zygote_client import HostOutput, ZygoteClient, ZygoteError, output_pipes, python_argv

__all__ = ["SandboxHost", "HostStartError"]

log = logging.getLogger("mayflyd.host")

_RECV_SIZE = protocol.FRAME_HEADER_SIZE + protocol.MAX_PAYLOAD + 1
_FD = struct.Struct("i")  # one fd in SCM_RIGHTS
_OUTPUT_LINE_LIMIT = 8192
LOADING_NICE = -5
# After SHUTDOWN, what the host may take beyond its stop hook's bound (HostSpec.stop_timeout_ms).
STOP_GRACE = 2.0
# How long a stopped host's last output (its stop hook's) may take to be read to its end.
OUTPUT_DRAIN = 1.0
_OUTPUT_CHUNK = 64 * 1024
_Message = TypeVar("_Message", ControlMessage, DataMessage)


class HostStartError(Exception):
    """The host could not load or initialise the program."""


class HostProcess(Protocol):
    """A host's process as the supervisor sees it, however it was started."""

    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def stdout(self) -> asyncio.StreamReader: ...
    @property
    def stderr(self) -> asyncio.StreamReader: ...
    def kill(self) -> None: ...
    async def wait(self) -> int: ...
    def close(self) -> None: ...


class ExecChild(HostOutput):
    """A host started as a fresh interpreter, the supervisor's own child."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        super().__init__()
        self._proc = proc
        self.pid = proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    def kill(self) -> None:
        try:
            self._proc.kill()
        except ProcessLookupError:
            pass

    async def wait(self) -> int:
        return await self._proc.wait()


class SandboxHost:
    """One running host process of a tenant."""

    def __init__(self, *, tenant: str, version: str, spec: HostSpec, env: Mapping[str, str],
                 output_budget: OutputBudget, on_sandbox_exit: Callable[[WorkerReplaced], None],
                 zygote: ZygoteClient | None = None) -> None:
        self.tenant = tenant
        self.version = version  # of the program this host loaded
        self._cpu_ms = spec.request_cpu_ms
        self._spec = spec
        self._env = dict(env)
        self._output_budget = output_budget
        self._on_sandbox_exit = on_sandbox_exit
        self._zygote = zygote
        self.exited = asyncio.Event()
        self._ctrl: socket.socket | None = None  # lifecycle
        self._proc: HostProcess | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._relays: list[asyncio.Task[None]] = []
        self.ready = False
        self._stopping = False
        self.pid = 0
        self.started_at = 0.0

    # ---- lifecycle -------------------------------------------------------

    async def start(self, init_timeout: float) -> None:
        """Spawn the host and wait until it has run on_init() and is serving."""
        self._ctrl, ctrl_host_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._ctrl.setblocking(False)
        try:
            self._proc = await self._spawn(ctrl_host_end.fileno())
        except ZygoteError as exc:
            await self._close()
            raise HostStartError(str(exc)) from None
        finally:
            ctrl_host_end.close()
        self.pid = self._proc.pid
        self.started_at = time.monotonic()
        # A loading host is on a reload's or a restart's critical path: ahead
        # of the sandboxes that keep serving meanwhile (they run at
        # SERVING_NICE, see sandbox_host.py).
        try:
            os.setpriority(os.PRIO_PROCESS, self.pid, LOADING_NICE)
        except OSError:
            pass  # without CAP_SYS_NICE it loads at the normal priority
        self._relays = [asyncio.create_task(self._relay_output(self._proc.stdout, "stdout")),
                        asyncio.create_task(self._relay_output(self._proc.stderr, "stderr"))]
        self._tasks.extend(self._relays)
        try:
            async with asyncio.timeout(init_timeout):
                first = await self._recv_control()
        except TimeoutError:
            await self.kill()
            raise HostStartError(f"loading the program took longer than {init_timeout:g}s") from None
        except BaseException:
            # Cancelled (the tenant is stopping): no host may outlive this call.
            await asyncio.shield(self.kill())
            raise
        if isinstance(first, LoadFailed):
            await self.kill()
            raise HostStartError(first.message)
        if not isinstance(first, Ready):
            await self.kill()
            raise HostStartError("the host exited before it was ready" if first is None
                                 else f"unexpected first message from the host: {first!r}")
        self.ready = True
        asyncio.get_running_loop().add_reader(self._ctrl.fileno(), self._on_control_readable)
        self._tasks.append(asyncio.create_task(self._watch_process()))

    @property
    def engine(self) -> int:
        """protocol.ENGINE_RESET or ENGINE_FORK: how the front end hands it requests."""
        return protocol.ENGINE_RESET if self._spec.engine == "reset" else protocol.ENGINE_FORK

    def attach_data_channel(self, loop: int = 0) -> socket.socket:
        """A new data channel of the host for front-end loop `loop`: one
        end sent to it on the control channel (DATA_CHANNEL), the other
        returned, non-blocking.
        The host holds MAX_DATA_CHANNELS at most and refuses more (it
        warns; the channel returned then reads EOF). OSError if the
        control channel is gone or full."""
        if self._ctrl is None:
            raise OSError(errno.ENOTCONN, "the host is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            self._ctrl.sendmsg([protocol.pack_frame(protocol.MsgType.DATA_CHANNEL, 0,
                                                    protocol.DATA_CHANNEL.pack(loop, 0))],
                               [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(theirs.fileno()))])
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        return ours

    async def _spawn(self, ctrl_fd: int) -> HostProcess:
        if self._zygote is not None:
            # parent_pid is the zygote's, filled in by the zygote.
            return await self._zygote.spawn(dataclasses.replace(self._spec, ctrl_fd=ctrl_fd), self._env)
        spec = dataclasses.replace(self._spec, ctrl_fd=ctrl_fd, parent_pid=os.getpid())
        (out_r, out_w), (err_r, err_w) = output_pipes()
        try:
            child = ExecChild(await asyncio.create_subprocess_exec(
                *python_argv("mayflyd.host.sandbox_host", spec.to_json()),
                stdin=asyncio.subprocess.DEVNULL, stdout=out_w, stderr=err_w, pass_fds=(ctrl_fd,),
                env=self._env, cwd="/", start_new_session=True))
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        await child.attach_output(out_r, err_r)
        return child

    async def kill(self) -> None:
        """Stop the host at once; its sandboxes die with it (parent-death signal)."""
        self.ready = False
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        await self._close()
        self.exited.set()

    def cut_short(self) -> None:
        """SIGKILL now, a stop() in progress included (its stop hook is not
        waited for); stop() or kill() still reaps and closes."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def stop(self, timeout: float | None = None) -> None:
        """Ask the host to stop (SHUTDOWN: it runs the program's stop hook,
        within its bound, then exits), kill it if it does not within
        timeout (default: the hook's bound plus STOP_GRACE)."""
        if timeout is None:
            timeout = self._spec.stop_timeout_ms / 1000 + STOP_GRACE
        self.ready = False
        self._stopping = True
        if self._ctrl is not None:
            try:
                self._ctrl.send(protocol.pack_frame(protocol.MsgType.SHUTDOWN, 0))
            except OSError:
                pass  # already gone
        if self._proc is not None and self._proc.returncode is None:
            try:
                async with asyncio.timeout(timeout):
                    await self._proc.wait()
            except TimeoutError:
                log.warning("host did not stop in %gs, killing it", timeout, extra={"tenant": self.tenant})
        if self._proc is not None and self._proc.returncode is not None and self._relays:
            # Its stop hook's output may still be in the pipes: read to their end.
            await asyncio.wait(self._relays, timeout=OUTPUT_DRAIN)
        await self.kill()

    async def _close(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                    pass
        self._tasks.clear()
        self._relays = []
        if self._proc is not None:
            self._proc.close()
        if self._ctrl is not None:
            asyncio.get_running_loop().remove_reader(self._ctrl.fileno())
            self._ctrl.close()
            self._ctrl = None

    async def _watch_process(self) -> None:
        assert self._proc is not None
        status = await self._proc.wait()
        self.ready = False
        if status < 0:
            try:
                name = signal.Signals(-status).name
            except ValueError:  # a real-time signal has no name
                name = f"SIGRTMIN+{-status - signal.SIGRTMIN}"
            reason = f"killed by signal {-status} ({name})"
        else:
            reason = f"exited with status {status}"
        if self._stopping:
            log.info("host %d %s", self.pid, reason, extra={"tenant": self.tenant})
        else:
            log.warning("host %d %s", self.pid, reason, extra={"tenant": self.tenant})
        self.exited.set()

    @property
    def uptime(self) -> float:
        return time.monotonic() - self.started_at if self.started_at else 0.0

    # ---- the host's channels ---------------------------------------------

    async def _recv_control(self) -> ControlMessage | None:
        assert self._ctrl is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                packet = await loop.sock_recv(self._ctrl, _RECV_SIZE)
            except OSError:
                return None
            if not packet:
                return None
            try:
                return protocol.decode_control(packet)
            except protocol.ProtocolError as exc:
                log.error("bad control message from host %d: %s", self.pid, exc, extra={"tenant": self.tenant})

    def _on_control_readable(self) -> None:
        """The host's lifecycle messages once it is serving: worker replacements."""
        assert self._ctrl is not None
        for message in self._received(self._ctrl):
            if isinstance(message, WorkerReplaced):
                self._on_sandbox_exit(message)
            else:
                log.error("unexpected control message from host %d: %r", self.pid, message,
                          extra={"tenant": self.tenant})

    def _received(self, channel: socket.socket) -> Iterator[ControlMessage]:
        """Every message queued on the control channel, decoded; at its end
        (the host is gone, and _watch_process reports how) the host is not ready."""
        while True:
            try:
                packet = channel.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                packet = b""
            if not packet:
                self.ready = False
                asyncio.get_running_loop().remove_reader(channel.fileno())
                return
            try:
                yield protocol.decode_control(packet)
            except protocol.ProtocolError as exc:
                log.error("bad control message from host %d: %s", self.pid, exc, extra={"tenant": self.tenant})

    async def _relay_output(self, stream: asyncio.StreamReader, name: str) -> None:
        """The tenant's output, line by line, into the log, within its budget.

        Read in chunks and charged per chunk, so that a flood of tiny lines
        costs the event loop as little as one large write; reading never
        stops (a blocked pipe would stall the tenant's sandboxes); what is
        over the budget is dropped and counted.
        """
        tenant_log = logging.getLogger(f"mayflyd.tenant.{name}")
        extra = {"tenant": self.tenant, "stream": name}
        # Only stderr carries the sandboxes' error records (error_record.py).
        records = name == "stderr"
        pending = b""
        while True:
            chunk = await stream.read(_OUTPUT_CHUNK)
            if not chunk:
                if pending and self._output_budget.grant(1, len(pending)):
                    self._log_lines(tenant_log, [pending], extra, records)
                return
            data = pending + chunk
            cut = data.rfind(b"\n")
            if cut < 0 and len(data) < _line_limit(data, records):
                pending = data  # an unfinished line
                continue
            # Complete lines (or one over-long line), and what follows them.
            body, pending = (data[:cut], data[cut + 1:]) if cut >= 0 else (data, b"")
            count = body.count(b"\n") + 1
            allowed = self._output_budget.grant(count, len(body))
            if allowed:
                self._log_lines(tenant_log, body.split(b"\n", allowed)[:allowed], extra, records)
            if len(pending) >= _line_limit(pending, records):
                pending = pending[:_line_limit(pending, records)]

    def _log_lines(self, tenant_log: logging.Logger, lines: list[bytes], extra: dict[str, str],
                   records: bool) -> None:
        dropped = self._output_budget.collect_dropped()
        if dropped:
            tenant_log.warning("dropped %d lines of output over the rate limit", dropped, extra=extra)
        for line in lines:
            record = error_record.decode(line) if records else None
            if record is not None:
                _log_error_record(record, extra)
            else:
                tenant_log.info("%s", line[:_OUTPUT_LINE_LIMIT].decode("utf-8", "replace"), extra=extra)


_exception_log = logging.getLogger(EXCEPTION_LOGGER)


def _line_limit(line: bytes, records: bool) -> int:
    """The longest line kept whole: an error record's may be longer."""
    return error_record.MAX_RECORD if records and line.startswith(error_record.MARKER) else _OUTPUT_LINE_LIMIT


def _log_error_record(record: error_record.ErrorRecord, extra: dict[str, str]) -> None:
    """One record at level error, with the traceback as its message; its
    tenant is the pipe's, whatever the sandbox wrote."""
    fields: dict[str, object] = dict(extra)
    if record.req is not None:
        fields.update(req=record.req, method=record.method, path=record.path)
    _exception_log.error("%s", record.text, extra=fields)
