"""The supervisor's handle on one sandbox host process.

Starts the host (forked by the zygote, or a fresh interpreter), waits for
its READY (or its LOAD_FAILED), relays its stdout and stderr into the log
tagged with the tenant, and runs requests:
each request gets a fresh socketpair whose one end is passed to the host
and from there to the request's sandbox alone.

The host has a control channel (its lifecycle: READY, LOAD_FAILED,
WORKER_REPLACED, SHUTDOWN, DATA_CHANNEL) and the data channels attached
through it (REQUEST, CANCEL, CHILD_EXIT, REQUEST_FAILED), one per front end
loop (attach_data_channel). Until the front end serves every request, this
handle attaches one of its own for run().
"""
from __future__ import annotations

import _socket
import asyncio
import dataclasses
import errno
import logging
import os
import select
import signal
import socket
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar, cast

from mayflyd import protocol
from mayflyd.host.sandbox_host import HostSpec
from mayflyd.protocol import (
    ChildExit,
    ControlMessage,
    DataMessage,
    LoadFailed,
    Ready,
    RequestFailed,
    Response,
    ResponseDecoder,
    WorkerReplaced,
)
from mayflyd.supervisor.logs import OutputBudget
from mayflyd.supervisor.zygote_client import ZygoteClient, ZygoteError, python_argv

__all__ = ["SandboxHost", "HostStartError", "SandboxError", "SandboxTimeout", "SandboxCrashed", "SandboxCpuExceeded",
           "RequestTooLarge",
           "BadResponse", "HostUnavailable", "RequestData", "describe_wait_status"]

log = logging.getLogger("mayflyd.host")

_RECV_SIZE = protocol.FRAME_HEADER_SIZE + protocol.MAX_PAYLOAD + 1
_FD = struct.Struct("i")  # one fd in SCM_RIGHTS
_OUTPUT_LINE_LIMIT = 8192
LOADING_NICE = -5
_OUTPUT_CHUNK = 64 * 1024
_Message = TypeVar("_Message", ControlMessage, DataMessage)


class HostStartError(Exception):
    """The host could not load or initialise the program."""


class SandboxError(Exception):
    """A request's sandbox did not produce a valid answer."""


class SandboxTimeout(SandboxError):
    pass


class SandboxCrashed(SandboxError):
    def __init__(self, message: str, wait_status: int | None = None) -> None:
        super().__init__(message)
        self.wait_status = wait_status

    @property
    def killed(self) -> bool:
        """Killed by SIGKILL from outside: the OOM killer, if not the host."""
        return (self.wait_status is not None and os.WIFSIGNALED(self.wait_status)
                and os.WTERMSIG(self.wait_status) == signal.SIGKILL)


class SandboxCpuExceeded(SandboxError):
    pass


class RequestTooLarge(Exception):
    """The request's head does not fit the protocol (too many or too large headers)."""


class BadResponse(SandboxError):
    def __init__(self, message: str, *, over_limit: bool = False) -> None:
        super().__init__(message)
        self.over_limit = over_limit  # the response was over max_response


class HostUnavailable(SandboxError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestData:
    req_id: int
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    client: str


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


class ExecChild:
    """A host started as a fresh interpreter, the supervisor's own child."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None and proc.stderr is not None
        self._proc = proc
        self.pid = proc.pid
        self.stdout = proc.stdout
        self.stderr = proc.stderr

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

    def close(self) -> None:
        pass  # asyncio closes its pipes when the process has exited


def describe_wait_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"wait status {status:#x}"


class SandboxHost:
    """One running host process of a tenant."""

    def __init__(self, *, tenant: str, version: str, spec: HostSpec, env: Mapping[str, str],
                 output_budget: OutputBudget, on_sandbox_exit: Callable[[ChildExit | WorkerReplaced], None],
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
        self.in_flight = 0
        self._ctrl: socket.socket | None = None  # lifecycle
        self._data: socket.socket | None = None  # requests
        self._proc: HostProcess | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending_exits: dict[int, asyncio.Future[ChildExit | RequestFailed]] = {}
        self._response_sockets: _ResponseSockets | None = None
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
        self._tasks.append(asyncio.create_task(self._relay_output(self._proc.stdout, "stdout")))
        self._tasks.append(asyncio.create_task(self._relay_output(self._proc.stderr, "stderr")))
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
        # The data channel of run() (the Python request path, until the
        # front end serves every request).
        try:
            self._data = self.attach_data_channel()
        except OSError as exc:
            await self.kill()
            raise HostStartError(f"cannot attach a data channel: {exc}") from None
        self.ready = True
        loop = asyncio.get_running_loop()
        loop.add_reader(self._ctrl.fileno(), self._on_control_readable)
        # Read in the loop's callback, every queued message per wake-up: an
        # exit report per request must not cost a task step and a future.
        loop.add_reader(self._data.fileno(), self._on_data_readable)
        self._response_sockets = _ResponseSockets(asyncio.get_running_loop())
        self._tasks.append(asyncio.create_task(self._watch_process()))

    def attach_data_channel(self) -> socket.socket:
        """A new data channel of the host: one end sent to it on the
        control channel (DATA_CHANNEL), the other returned, non-blocking.
        The host holds MAX_DATA_CHANNELS at most and refuses more (it
        warns; the channel returned then reads EOF). OSError if the
        control channel is gone or full."""
        if self._ctrl is None:
            raise OSError(errno.ENOTCONN, "the host is not running")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            ours.setblocking(False)
            self._ctrl.sendmsg([protocol.pack_frame(protocol.MsgType.DATA_CHANNEL, 0)],
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
        return ExecChild(await asyncio.create_subprocess_exec(
            *python_argv("mayflyd.host.sandbox_host", spec.to_json()),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, pass_fds=(ctrl_fd,),
            env=self._env, cwd="/", start_new_session=True))

    async def kill(self) -> None:
        """Stop the host at once; its sandboxes die with it (parent-death signal)."""
        self.ready = False
        self._stopping = True
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        await self._close()
        self.exited.set()

    async def stop(self, timeout: float = 2.0) -> None:
        """Ask the host to stop, kill it if it does not within timeout."""
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
        if self._proc is not None:
            self._proc.close()
        for channel in (self._ctrl, self._data):
            if channel is not None:
                asyncio.get_running_loop().remove_reader(channel.fileno())
                channel.close()
        self._ctrl = self._data = None
        for fut in self._pending_exits.values():
            if not fut.done():
                fut.cancel()
        self._pending_exits.clear()
        if self._response_sockets is not None:
            self._response_sockets.close()
            self._response_sockets = None

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

    async def died(self, within: float) -> bool:
        """Whether the host process ends within `within` seconds (or already has)."""
        try:
            async with asyncio.timeout(within):
                await self.exited.wait()
        except TimeoutError:
            return False
        return True

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
        for message in self._received(self._ctrl, protocol.decode_control, "control"):
            if isinstance(message, WorkerReplaced):
                self._on_sandbox_exit(message)
            else:
                log.error("unexpected control message from host %d: %r", self.pid, message,
                          extra={"tenant": self.tenant})

    def _on_data_readable(self) -> None:
        """The host's per-request messages: exit reports and failed starts."""
        assert self._data is not None
        for message in self._received(self._data, protocol.decode_data, "data"):
            if isinstance(message, ChildExit):
                self._on_sandbox_exit(message)
            # The host answers each REQUEST it received with exactly one of these.
            fut = self._pending_exits.pop(message.req_id, None)
            if fut is not None and not fut.done():
                fut.set_result(message)

    def _received(self, channel: socket.socket, decode: Callable[[bytes], _Message], name: str
                  ) -> Iterator[_Message]:
        """Every message queued on a channel, decoded; at its end (the host
        is gone, and _watch_process reports how) the host is not ready."""
        while True:
            packet = _recv_ready(channel)
            if packet is None:
                return
            if not packet:
                self.ready = False
                asyncio.get_running_loop().remove_reader(channel.fileno())
                return
            try:
                yield decode(packet)
            except protocol.ProtocolError as exc:
                log.error("bad %s message from host %d: %s", name, self.pid, exc, extra={"tenant": self.tenant})

    async def _relay_output(self, stream: asyncio.StreamReader, name: str) -> None:
        """The tenant's output, line by line, into the log, within its budget.

        Read in chunks and charged per chunk, so that a flood of tiny lines
        costs the event loop as little as one large write; reading never
        stops (a blocked pipe would stall the tenant's sandboxes); what is
        over the budget is dropped and counted.
        """
        tenant_log = logging.getLogger(f"mayflyd.tenant.{name}")
        extra = {"tenant": self.tenant, "stream": name}
        pending = b""
        while True:
            chunk = await stream.read(_OUTPUT_CHUNK)
            if not chunk:
                if pending and self._output_budget.grant(1, len(pending)):
                    self._log_lines(tenant_log, [pending], extra)
                return
            data = pending + chunk
            cut = data.rfind(b"\n")
            if cut < 0 and len(data) < _OUTPUT_LINE_LIMIT:
                pending = data  # an unfinished line
                continue
            # Complete lines (or one over-long line), and what follows them.
            body, pending = (data[:cut], data[cut + 1:]) if cut >= 0 else (data, b"")
            count = body.count(b"\n") + 1
            allowed = self._output_budget.grant(count, len(body))
            if allowed:
                self._log_lines(tenant_log, body.split(b"\n", allowed)[:allowed], extra)
            if len(pending) >= _OUTPUT_LINE_LIMIT:
                pending = pending[:_OUTPUT_LINE_LIMIT]

    def _log_lines(self, tenant_log: logging.Logger, lines: list[bytes], extra: dict[str, str]) -> None:
        dropped = self._output_budget.collect_dropped()
        if dropped:
            tenant_log.warning("dropped %d lines of output over the rate limit", dropped, extra=extra)
        for line in lines:
            tenant_log.info("%s", line[:_OUTPUT_LINE_LIMIT].decode("utf-8", "replace"), extra=extra)

    def _send_data(self, packet: bytes, fd: int = -1) -> None:
        if self._data is None or not self.ready:
            raise HostUnavailable("the host is not running")
        try:
            if fd >= 0:
                self._data.sendmsg([packet], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _FD.pack(fd))])
            else:
                self._data.send(packet)
        except BlockingIOError:
            # REQUEST and CANCEL packets are tiny; a full buffer means the host is stuck.
            raise HostUnavailable("the host is not reading its data socket") from None
        except OSError as exc:
            raise HostUnavailable(f"the host's data socket failed: {exc}") from None

    # ---- requests --------------------------------------------------------

    async def run(self, request: RequestData, *, timeout: float, max_response: int) -> Response:
        """Run one request in a fresh sandbox and return its validated response."""
        loop = asyncio.get_running_loop()
        req_id = request.req_id
        # Before a sandbox exists for it: a request that cannot be framed gets none.
        try:
            packets = protocol.encode_request(
                req_id, method=request.method, path=request.path, query=request.query,
                headers=request.headers, body=request.body, client=request.client)
        except ValueError as exc:
            raise RequestTooLarge(str(exc)) from None
        sockets = self._response_sockets
        if sockets is None:  # not started yet, or closed
            raise HostUnavailable("the host is not running")
        # _socket's own objects: socket.socketpair() wraps each end in a
        # Python class, which the supervisor pays for on every request.
        ours, theirs = _socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        # Queued before the host hands the channel on, the request is there
        # whole when its sandbox first reads: no wake-up per packet.
        queued = _send_what_fits(ours, packets)
        exit_future: asyncio.Future[ChildExit | RequestFailed] = loop.create_future()
        self._pending_exits[req_id] = exit_future
        self.in_flight += 1
        reader = _ResponseReader(sockets, ours, ResponseDecoder(req_id, max_response))
        deadline = loop.time() + timeout
        timer = loop.call_at(deadline, reader.time_out)
        sender: asyncio.Task[None] | None = None
        try:
            try:
                self._send_data(protocol.encode_request_ctl(req_id, int(timeout * 1000)), theirs.fileno())
            except HostUnavailable:
                del self._pending_exits[req_id]  # the host never got it: no exit report will come
                raise
            finally:
                theirs.close()
            if queued < len(packets):  # a body larger than the socket's buffer
                sender = loop.create_task(_send_rest(loop, ours, packets[queued:]))
            try:
                return await reader.future
            except TimeoutError:
                self._cancel(req_id)
                raise SandboxTimeout(f"no answer within {timeout * 1000:.0f} ms") from None
            except protocol.ProtocolError as exc:
                self._cancel(req_id)
                raise BadResponse(str(exc), over_limit=isinstance(exc, protocol.ResponseTooLarge)) from None
            except SandboxCrashed:
                if reader.timed_out or loop.time() >= deadline:  # the host killed it at the deadline
                    raise SandboxTimeout(f"no answer within {timeout * 1000:.0f} ms") from None
                ended = await self._sandbox_end(exit_future)
                if isinstance(ended, RequestFailed):
                    if ended.error == errno.EAGAIN:
                        raise HostUnavailable("the host's concurrency and queue are full") from None
                    reason = errno.errorcode.get(ended.error, str(ended.error))
                    raise HostUnavailable(f"the host could not start a sandbox: {reason}") from None
                if ended is None:
                    raise SandboxCrashed("the sandbox ended without answering") from None
                if ended.flags & protocol.EXIT_CPU_EXCEEDED:
                    raise SandboxCpuExceeded(f"the sandbox used more than its {self._cpu_ms} ms of CPU") from None
                raise SandboxCrashed(f"the sandbox {describe_wait_status(ended.wait_status)} "
                                     "without answering", ended.wait_status) from None
        finally:
            self.in_flight -= 1
            timer.cancel()
            reader.close()
            if sender is not None:
                sender.cancel()
            ours.close()

    async def _sandbox_end(self, exit_future: asyncio.Future[ChildExit | RequestFailed]
                           ) -> ChildExit | RequestFailed | None:
        """How the sandbox ended, if the host says so promptly."""
        try:
            async with asyncio.timeout(0.2):
                return await asyncio.shield(exit_future)
        except (TimeoutError, asyncio.CancelledError):
            return None

    def _cancel(self, req_id: int) -> None:
        try:
            self._send_data(protocol.pack_frame(protocol.MsgType.CANCEL, req_id))
        except HostUnavailable:
            pass  # a dead host takes its sandboxes with it


def _recv_ready(sock: _socket.socket) -> bytes | None:
    """The next packet; b"" at the end (or on a broken socket); None while none is there."""
    try:
        return sock.recv(_RECV_SIZE)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _send_what_fits(sock: _socket.socket, packets: list[bytes]) -> int:
    """Send packets until the socket's buffer is full; how many went. A
    failing send stops it too: the rest is _send_rest's, whose failure the
    response reader sees as a sandbox that never answers."""
    for sent, packet in enumerate(packets):
        try:
            sock.send(packet)
        except OSError:
            return sent
    return len(packets)


async def _send_rest(loop: asyncio.AbstractEventLoop, sock: _socket.socket, packets: list[bytes]) -> None:
    """The rest of a large request, as the sandbox reads it; a sandbox that
    stops reading is the response reader's to report."""
    # The event loop needs only what _socket's base class has (fileno, send).
    wrapped = cast(socket.socket, sock)
    try:
        for packet in packets:
            await loop.sock_sendall(wrapped, packet)
    except OSError:
        pass


class _ResponseSockets:
    """The in-flight requests' sockets of one host, in an epoll set of its
    own that the event loop watches as one fd: uvloop's add_reader and
    remove_reader for each request's socket cost the supervisor more than
    a register and an unregister here."""

    __slots__ = ("loop", "_epoll", "_readers", "_closing")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._epoll = select.epoll()
        self._readers: dict[int, _ResponseReader] = {}
        self._closing = False
        loop.add_reader(self._epoll.fileno(), self._ready)

    def add(self, fd: int, reader: _ResponseReader) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._readers[fd] = reader

    def discard(self, fd: int, reader: _ResponseReader) -> None:
        if self._readers.get(fd) is reader:
            del self._readers[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass  # already closed, which took it out of the set
        if self._closing and not self._readers:
            self.close()

    def _ready(self) -> None:
        for fd, _ in self._epoll.poll(0):
            reader = self._readers.get(fd)
            if reader is not None:  # one finished earlier in this batch is gone
                reader.readable()

    def close(self) -> None:
        """Now, or once the requests still in flight have ended (a dead
        host's sandboxes end with it: their sockets read EOF)."""
        self._closing = True
        if not self._readers and not self._epoll.closed:
            self.loop.remove_reader(self._epoll.fileno())
            self._epoll.close()


class _ResponseReader:
    """Reads one sandbox's response when its socket is readable, every
    packet that is there per wake-up, and resolves `future` with it."""

    __slots__ = ("_sockets", "_sock", "_fd", "_decoder", "future", "timed_out")

    def __init__(self, sockets: _ResponseSockets, sock: _socket.socket, decoder: ResponseDecoder) -> None:
        self._sockets = sockets
        self._sock = sock
        self._fd = sock.fileno()
        self._decoder = decoder
        self.future: asyncio.Future[Response] = sockets.loop.create_future()
        self.timed_out = False
        sockets.add(self._fd, self)

    def readable(self) -> None:
        decoder = self._decoder
        try:
            while not decoder.done:
                packet = _recv_ready(self._sock)
                if packet is None:
                    return
                if not packet:
                    raise SandboxCrashed("the sandbox ended without answering")
                decoder.feed(packet)
            self._finish(decoder.response())
        except (SandboxCrashed, protocol.ProtocolError) as exc:
            self._finish(exc)

    def _finish(self, outcome: Response | BaseException) -> None:
        self.close()
        if self.future.done():
            return
        if isinstance(outcome, BaseException):
            self.future.set_exception(outcome)
        else:
            self.future.set_result(outcome)

    def time_out(self) -> None:
        self.timed_out = True
        self._finish(TimeoutError())

    def close(self) -> None:
        if self._fd >= 0:
            self._sockets.discard(self._fd, self)
            self._fd = -1
