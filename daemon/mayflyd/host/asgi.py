"""ASGI 3.0 apps (HTTP and lifespan) served through the program contract.

The app is imported in the host, its lifespan startup run there on an
event loop made for it, and both are sealed with the host; each request
then runs the app on that loop inside its own sandbox (docs/design.md,
"ASGI apps"). Three things make a loop fit a sandbox:

- its selector is poll(2), which keeps its file descriptors in Python
  memory: an epoll instance is a kernel object the host and every sandbox
  would share (and a sandbox closes every inherited one);
- it has no self-pipe: nothing but the loop's own thread runs in a sandbox
  and it handles no signals, so nothing needs to wake it;
- work that frameworks push to a thread (anyio's to_thread, Starlette's
  run_in_threadpool, asyncio's run_in_executor(None, ...)) runs inline:
  requests may not start threads.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextvars
import selectors
import sys
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from dataclasses import dataclass, field
from typing import Any, TypeVarTuple

from mayflyd import _mayfly
from mayflyd.host.program import ProgramError, Request, report_exception

__all__ = ["AsgiError", "AsgiHandler", "run_threads_inline"]

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[MutableMapping[str, Any], Receive, Send], Awaitable[None]]
Headers = list[tuple[str, str]]
_Ts = TypeVarTuple("_Ts")

_ASGI = {"version": "3.0", "spec_version": "2.4"}
# The body as http.request messages of at most this size.
RECEIVE_CHUNK = 64 * 1024
# A lifespan shutdown gets this long (the host's stop bounds it too).
SHUTDOWN_TIMEOUT_S = 5.0


class AsgiError(Exception):
    """The app broke the ASGI protocol (the client gets a 500)."""


class _SandboxLoop(asyncio.SelectorEventLoop):
    """An event loop with nothing a sandbox would share with its host."""

    def __init__(self) -> None:
        super().__init__(selectors.PollSelector())
        self.set_default_executor(_InlineExecutor())

    def _make_self_pipe(self) -> None:
        # _write_to_self() does nothing while _csock is None.
        self._ssock = self._csock = None

    def _close_self_pipe(self) -> None:
        pass

    def add_signal_handler(self, sig: int, callback: Callable[[*_Ts], object], *args: *_Ts) -> None:
        raise RuntimeError("a mayflyd sandbox's event loop handles no signals")

    def run_request(self, coro: Coroutine[Any, Any, None]) -> None:
        """run_until_complete(coro), leaner: a request's pages are what the
        reset engine copies back, and run_forever's set-up and tear-down
        (async generator hooks, a done callback, a poll(2) per step) wrote
        about half of a plain ASGI request's. The ready callbacks run
        directly; the loop's own step runs only while the task waits on
        I/O or a timer."""
        ready: collections.deque[asyncio.Handle] = self._ready  # type: ignore[attr-defined]
        asyncio.events._set_running_loop(self)
        try:
            task = self.create_task(coro)
            while not task.done():
                if ready:
                    handle = ready.popleft()
                    if not handle.cancelled():
                        handle._run()
                else:
                    self._run_once()  # type: ignore[attr-defined]
        finally:
            asyncio.events._set_running_loop(None)
        task.result()


class _InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: runs each call at once, in the caller's
    thread. (asyncio takes only a ThreadPoolExecutor; this one never
    starts its threads.)"""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - the caller's await raises it, as a thread's would
            future.set_exception(exc)
        return future


def run_threads_inline() -> None:
    """anyio's worker threads (under Starlette's run_in_threadpool,
    FastAPI's plain `def` routes, anyio.to_thread) become inline calls, in
    a copy of the context as a thread would have. Patched on the backend,
    so that every way of reaching it is covered."""
    if "anyio" not in sys.modules:
        return
    try:
        from anyio._backends import _asyncio as backend
    except ImportError:  # an anyio without this backend layout: nothing to patch
        return

    async def run_sync_inline(cls: object, func: Callable[..., Any], args: tuple[Any, ...],
                              abandon_on_cancel: bool = False, limiter: object = None) -> Any:
        return contextvars.copy_context().run(func, *args)

    backend_class = getattr(backend, "AsyncIOBackend", None)
    if backend_class is not None:
        backend_class.run_sync_in_worker_thread = classmethod(run_sync_inline)


def _headers_of(request: Request) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in request.headers.raw()]


def _address(text: str) -> tuple[str, int] | None:
    host, colon, port = text.rpartition(":")
    if not colon or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _server_of(headers: list[tuple[bytes, bytes]]) -> tuple[str, int] | None:
    host = next((value.decode("latin-1") for name, value in headers if name == b"host"), "")
    if not host:
        return None
    return _address(host) or (host, 80)


def _is_websocket(headers: list[tuple[bytes, bytes]]) -> bool:
    return any(name == b"upgrade" and value.strip().lower() == b"websocket" for name, value in headers)


@dataclass(slots=True)
class _Exchange:
    """One request's receive() and send()."""

    loop: asyncio.AbstractEventLoop
    body: bytes
    offset: int = 0
    body_sent: bool = False
    status: int = 0
    headers: Headers = field(default_factory=list)
    chunks: list[bytes] = field(default_factory=list)
    streaming: bool = False  # the head is out: each body goes as it comes
    complete: bool = False
    finished: asyncio.Future[None] | None = None  # resolved when the app is done: disconnect

    async def receive(self) -> Message:
        if not self.body_sent:
            chunk = self.body[self.offset:self.offset + RECEIVE_CHUNK]
            self.offset += len(chunk)
            self.body_sent = self.offset >= len(self.body)
            return {"type": "http.request", "body": chunk, "more_body": not self.body_sent}
        # A listener for the client's disconnect (Starlette's) waits until
        # the response is out, as it would on a server whose client stays.
        if not self.complete:
            if self.finished is None:
                self.finished = self.loop.create_future()
            await self.finished
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        kind = message.get("type")
        if kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            self._body(message)
        else:
            raise AsgiError(f"unexpected ASGI message {kind!r} (this server offers no extensions)")

    def _start(self, message: Message) -> None:
        if self.status:
            raise AsgiError("the app sent http.response.start twice")
        status = message.get("status")
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise AsgiError(f"http.response.start: status must be an int in 200..599, got {status!r}")
        headers: Headers = []
        for item in message.get("headers", ()):
            try:
                name, value = item
                headers.append((bytes(name).decode("latin-1"), bytes(value).decode("latin-1")))
            except (TypeError, ValueError):
                raise AsgiError(f"http.response.start: each header must be a [name, value] pair of bytes, "
                                f"got {item!r}") from None
        self.status, self.headers = status, headers

    def _body(self, message: Message) -> None:
        if not self.status:
            raise AsgiError("the app sent http.response.body before http.response.start")
        if self.complete:
            raise AsgiError("the app sent http.response.body after the response was complete")
        body = message.get("body", b"")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise AsgiError(f"http.response.body: body must be bytes, got {type(body).__name__}")
        more = bool(message.get("more_body", False))
        if more and not self.streaming and not self.chunks and not self._has_length() \
                and _mayfly.response_can_stream():
            # A body of unknown length (Starlette's StreamingResponse): the
            # head now, then each part as the app sends it. (Out of a
            # sandbox, in a warm-up request, the body is whole.)
            _mayfly.response_start(self.status, self.headers)
            self.streaming = True
        if self.streaming:
            _mayfly.response_write(body)
        elif body:
            self.chunks.append(bytes(body))
        if not more:
            self.complete = True
            self.wake()

    def _has_length(self) -> bool:
        return any(name.lower() == "content-length" for name, _ in self.headers)

    def wake(self) -> None:
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(None)

    def result(self) -> tuple[int, Headers, bytes] | None:
        """The whole response; None for a streamed one (it is out)."""
        if not self.status:
            raise AsgiError("the app returned without sending http.response.start")
        if not self.complete:
            raise AsgiError("the app returned before its response was complete (more_body was never false)")
        if self.streaming:
            return None
        return self.status, self.headers, b"".join(self.chunks)


class _Lifespan:
    """The app's lifespan task: started (and awaited) in the host, left
    waiting for the shutdown, which stop() sends."""

    def __init__(self, loop: asyncio.AbstractEventLoop, app: AsgiApp) -> None:
        self.loop = loop
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self._started = False
        self._shutdown = loop.create_future()
        self._replies: dict[str, asyncio.Future[Message]] = {
            "startup": loop.create_future(), "shutdown": loop.create_future()}
        self._task: asyncio.Task[None] | None = None

    async def _receive(self) -> Message:
        if not self._started:
            self._started = True
            return {"type": "lifespan.startup"}
        await self._shutdown
        return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        kind = str(message.get("type", ""))
        phase = kind.removeprefix("lifespan.").partition(".")[0]
        reply = self._replies.get(phase)
        if reply is None or not kind.endswith((".complete", ".failed")):
            raise AsgiError(f"unexpected lifespan message {kind!r}")
        if not reply.done():
            reply.set_result(message)

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": dict(_ASGI), "state": self.state}
        await self.app(scope, self._receive, self._send)

    async def _until(self, phase: str, timeout: float | None) -> Message | None:
        """The app's answer to the phase, or None if its task ended first."""
        assert self._task is not None
        reply = self._replies[phase]
        waiting: list[asyncio.Future[Any]] = [self._task, reply]
        await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        return reply.result() if reply.done() else None

    def start(self) -> None:
        """Runs the startup; raises ProgramError if the app says it failed."""
        self._task = self.loop.create_task(self._main())
        answer = self.loop.run_until_complete(self._until("startup", None))
        if answer is None:
            # ASGI: an app that raises instead of answering does not speak
            # lifespan; the server goes on without it.
            error = self._task.exception()
            why = f"{type(error).__name__}: {error}" if error else "it returned without answering the startup"
            self.supported = False
            print(f"lifespan: the app does not support it ({why}); serving without startup and shutdown "
                  "events", file=sys.stderr)
            return
        if answer["type"] == "lifespan.startup.failed":
            raise ProgramError(f"the app's lifespan startup failed: {answer.get('message', '')}")

    def stop(self) -> None:
        """Sends the shutdown and waits for the app's answer (bounded)."""
        if not self.supported or self._task is None or self._task.done():
            return
        self._shutdown.set_result(None)
        answer = self.loop.run_until_complete(self._until("shutdown", SHUTDOWN_TIMEOUT_S))
        if answer is None:
            print(f"lifespan: no answer to the shutdown within {SHUTDOWN_TIMEOUT_S:g} s", file=sys.stderr)
        elif answer["type"] == "lifespan.shutdown.failed":
            print(f"lifespan: the app's shutdown failed: {answer.get('message', '')}", file=sys.stderr)


class AsgiHandler:
    """Calls an ASGI app with one Request on the sealed loop; returns
    (status, headers, body)."""

    __slots__ = ("app", "loop", "lifespan")

    def __init__(self, app: AsgiApp) -> None:
        self.app = app
        self.loop = _SandboxLoop()
        asyncio.set_event_loop(self.loop)
        run_threads_inline()
        self.lifespan = _Lifespan(self.loop, app)

    @classmethod
    def started(cls, app: AsgiApp) -> AsgiHandler:
        """A handler whose app's lifespan startup has run (in the host)."""
        handler = cls(app)
        handler.lifespan.start()
        # anyio may have been imported by the startup only.
        run_threads_inline()
        return handler

    def stop(self) -> None:
        self.lifespan.stop()

    def __call__(self, request: Request) -> tuple[int, Headers, bytes] | None:
        headers = _headers_of(request)
        if _is_websocket(headers):
            print(f"request {request.id}: a WebSocket upgrade; mayflyd serves HTTP only "
                  "(answered 501)", file=sys.stderr)
            return 501, [("Content-Type", "text/plain; charset=utf-8")], b"WebSocket is not supported here\n"
        scope: dict[str, Any] = {
            "type": "http", "asgi": dict(_ASGI), "http_version": "1.1", "method": request.method,
            "scheme": "http", "path": request.path,
            "raw_path": request.raw_path.encode("latin-1"), "query_string": request.query.encode("latin-1"),
            # The front end gives the peer's address, not its port.
            "root_path": "", "headers": headers, "client": (request.client, 0) if request.client else None,
            "server": _server_of(headers), "state": dict(self.lifespan.state),
        }
        exchange = _Exchange(self.loop, request.body)
        self.loop.run_request(self._run(scope, exchange, request))
        return exchange.result()

    async def _run(self, scope: dict[str, Any], exchange: _Exchange, request: Request) -> None:
        try:
            await self.app(scope, exchange.receive, exchange.send)
        except Exception as exc:
            if not exchange.complete:
                raise
            # The client has its whole answer already: the error is the log's.
            report_exception(exc, request)
        finally:
            exchange.wake()
