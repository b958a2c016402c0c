"""WSGI apps (PEP 3333) served through the program contract.

A tenant's `app: "module:attribute"` is imported and looked up in the host,
before the seal, as a program's on_init() runs there. Each request then
calls :class:`WsgiHandler` in its sandbox: it builds the request's
``environ``, calls the app, and collects what it answers into the
contract's ``(status, headers, body)``, which the C request path sends.
The body is collected whole (streaming it is later work); the front end
enforces max_response on it and sets Content-Length itself.
"""
from __future__ import annotations

import codecs
import importlib
import inspect
import io
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from mayflyd.host.program import Program, ProgramError, Request, load_module, report_exception

__all__ = ["FileWrapper", "WsgiError", "WsgiHandler", "app_interface", "load_app"]

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]

INTERFACES = ("wsgi", "asgi")
_SERVER_PROTOCOL = "HTTP/1.1"  # the front end speaks HTTP/1.1 to every sandbox's app


class WsgiError(Exception):
    """The app broke PEP 3333's rules (the client gets a 500)."""


class FileWrapper:
    """wsgi.file_wrapper: a file-like object's blocks as an iterable, closed
    with it. The body is collected whole, so this is the plain fallback the
    PEP describes, with no sendfile."""

    __slots__ = ("filelike", "blksize")

    def __init__(self, filelike: IO[bytes], blksize: int = 8192) -> None:
        self.filelike = filelike
        self.blksize = blksize

    def __iter__(self) -> Iterator[bytes]:
        while block := self.filelike.read(self.blksize):
            yield block

    def close(self) -> None:
        close = getattr(self.filelike, "close", None)
        if close is not None:
            close()


def _server_of(host: str) -> tuple[str, str]:
    """SERVER_NAME and SERVER_PORT from a Host header ("" gives localhost:80)."""
    if host.startswith("["):  # [IPv6]:port
        name, _, rest = host[1:].partition("]")
        return name, rest[1:] if rest.startswith(":") and rest[1:].isdigit() else "80"
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit():
        return name, port
    return host or "localhost", "80"


def build_environ(request: Request) -> Environ:
    """The request as PEP 3333's environ."""
    environ: Environ = {
        "REQUEST_METHOD": request.method,
        "SCRIPT_NAME": "",
        # Native strings hold bytes as latin-1 (PEP 3333): the app decodes.
        "PATH_INFO": unquote_to_bytes(request.raw_path).decode("latin-1"),
        "QUERY_STRING": request.query,
        "SERVER_PROTOCOL": _SERVER_PROTOCOL,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(request.body),
        "wsgi.errors": sys.stderr,  # the tenant's log
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": True,  # every request starts from the sealed host
        "wsgi.file_wrapper": FileWrapper,
    }
    if request.client:  # the peer's address; the front end does not pass its port
        environ["REMOTE_ADDR"] = request.client
    fields: dict[str, list[str]] = {}
    for name, value in request.headers.raw():
        lower = name.lower()
        if lower == "content-type":
            environ["CONTENT_TYPE"] = value
        elif lower == "content-length":
            environ["CONTENT_LENGTH"] = value
        elif "_" not in name:
            # A name with "_" would collide with one with "-" once mapped
            # (a client could pose as a proxy's header): dropped, as gunicorn does.
            fields.setdefault("HTTP_" + name.upper().replace("-", "_"), []).append(value)
    for key, values in fields.items():
        environ[key] = ("; " if key == "HTTP_COOKIE" else ", ").join(values)
    environ.setdefault("CONTENT_TYPE", "")
    environ.setdefault("CONTENT_LENGTH", str(len(request.body)) if request.body else "")
    environ["SERVER_NAME"], environ["SERVER_PORT"] = _server_of(environ.get("HTTP_HOST", ""))
    return environ


@dataclass(slots=True)
class _Response:
    """One request's start_response() state."""

    status: str = ""
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: list[bytes] = field(default_factory=list)
    sent: bool = False  # a non-empty body chunk was produced: the head is final

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no cycle through the traceback (PEP 3333)
        elif self.status:
            raise WsgiError("start_response() was called a second time without exc_info")
        if not isinstance(status, str) or len(status) < 3 or not status[:3].isdigit():
            raise WsgiError(f"start_response(): status must be a string like '200 OK', got {status!r}")
        checked: list[tuple[str, str]] = []
        for item in headers:
            if not (isinstance(item, tuple) and len(item) == 2
                    and isinstance(item[0], str) and isinstance(item[1], str)):
                raise WsgiError(f"start_response(): each header must be a (str, str) tuple, got {item!r}")
            checked.append(item)
        self.status, self.headers = status, checked
        return self.write

    def has_length(self) -> bool:
        return any(name.lower() == "content-length" for name, _ in self.headers)

    def write(self, data: bytes) -> None:
        if not self.status:
            raise WsgiError("write() was called before start_response()")
        self.add(data)

    def add(self, data: object) -> None:
        if not isinstance(data, bytes):
            raise WsgiError(f"the app's body must be bytes, got {type(data).__name__}")
        if data:
            self.sent = True
            self.body.append(data)


def _close(result: object) -> None:
    close = getattr(result, "close", None)
    if close is not None:
        close()


class _Stream:
    """The rest of a body the app produces chunk by chunk, sent as it comes
    (the request path streams an iterable body): the chunks write() and the
    iterable give, in order; the app's iterable closed when the request
    path closes this, even if it never iterated."""

    __slots__ = ("response", "iterator", "result")

    def __init__(self, response: _Response, iterator: Iterator[bytes], result: Iterable[bytes]) -> None:
        self.response = response
        self.iterator = iterator
        self.result = result

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> bytes:
        pending = self.response.body
        while not pending:
            self.response.add(next(self.iterator))  # StopIteration ends the stream
        return pending.pop(0)

    def close(self) -> None:
        _close(self.result)


class WsgiHandler:
    """Calls a WSGI app with one Request; returns (status, headers, body):
    the body whole when its length is known (a list or tuple, or a
    Content-Length header: Flask's and Django's usual answers), else a
    _Stream, sent as the app produces it (a generator's)."""

    __slots__ = ("app",)

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(self, request: Request) -> tuple[int, list[tuple[str, str]], bytes | _Stream]:
        response = _Response()
        result = self.app(build_environ(request), response.start_response)
        whole = isinstance(result, (list, tuple))
        try:
            iterator = iter(result)
            for chunk in iterator:
                if not response.status:
                    raise WsgiError("the app produced a body before calling start_response()")
                response.add(chunk)
                # The head is final once a chunk is out (PEP 3333): stream the rest.
                if response.sent and not whole and not response.has_length():
                    return int(response.status[:3]), response.headers, _Stream(response, iterator, result)
        except BaseException:
            _close(result)
            raise
        _close(result)
        if not response.status:
            raise WsgiError("the app returned without calling start_response()")
        return int(response.status[:3]), response.headers, b"".join(response.body)


def _positional_count(app: object) -> int | None:
    try:
        parameters = inspect.signature(app).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        return None
    return sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in parameters)


def app_interface(app: object, interface: str) -> str:
    """"wsgi" or "asgi": `interface`, or for "auto" the callable's signature's
    (an async def or three parameters: ASGI; two: WSGI)."""
    call = inspect.getattr_static(app, "__call__", None)  # an instance's: Starlette's, Flask's
    count = _positional_count(app)
    seen = ("asgi" if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(call) or count == 3
            else "wsgi" if count == 2 else None)
    if interface in INTERFACES:
        if seen not in (None, interface):
            # Called the other way, it would fail on every request instead.
            raise ProgramError(f"the app is set as `interface: {interface}`, but its signature is {seen}'s "
                               "(ASGI: an async def or 3 positional parameters; WSGI: 2)")
        return interface
    if seen is not None:
        return seen
    raise ProgramError(f"cannot tell whether the app is WSGI or ASGI from its signature "
                       f"({'unknown' if count is None else count} positional parameters); "
                       "set `interface: wsgi` or `interface: asgi`")


def _import_app(module: ModuleType, app: str) -> object:
    module_name, _, attribute = app.partition(":")
    if "." in module_name:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            report_exception(exc)
            raise ProgramError(f"importing {module_name} raised {type(exc).__name__}: {exc}") from exc
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ProgramError(f"module {module_name} has no attribute {attribute!r}") from None


def load_app(path: Path, app: str, interface: str = "auto") -> Program:
    """Import `app` ("module:attribute") from the module at `path` (its
    first name's file or package) and wrap it as a Program."""
    module = load_module(path, module_name=app.partition(":")[0].partition(".")[0])
    target = _import_app(module, app)
    if not callable(target):
        raise ProgramError(f"app {app} is not callable (a {type(target).__name__})")
    # Werkzeug (Flask) encodes the Host with the idna codec in every request;
    # the codec's first lookup imports it (7 ms here), which every request
    # would pay again after the seal. Once, in the host.
    codecs.lookup("idna")
    if app_interface(target, interface) == "asgi":
        # Imported only for an ASGI app: asyncio's pages are no other host's.
        from mayflyd.host.asgi import AsgiHandler
        handler = AsgiHandler.started(target)
        # The lifespan shutdown runs in the host's stop sandbox.
        return Program(module, handler=handler, on_stop=handler.stop)
    return Program(module, handler=WsgiHandler(target))
