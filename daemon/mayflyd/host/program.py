"""The tenant program contract (docs/design.md section 4), as run inside a host.

Loads a tenant's module, runs its on_init(), gives its on_stop() to the
engine (run in a sandbox when the host stops), and turns each request
into a call of on_client_request() in one of the two supported forms:

- the seed's form: ``on_client_request()`` with no parameters returns a
  callable, whose result is the response;
- the request form: ``on_client_request(request)`` returns the response.

A response may be a ``str`` or ``bytes`` body, a ``(content_type, body)``
pair, a ``(status, headers, body)`` triple, a ``dict``/``list`` (sent as
JSON), ``None`` (204) or a :class:`Response`. Anything a program raises
becomes a 500 whose traceback goes to the tenant's log only, as one
record (:func:`report_exception`).

A body that is any other iterable (a generator, a list of chunks), or a
result that is an iterator, is streamed: the head goes first, then each
chunk as it is made (str as UTF-8, bytes as they are), then the
iterable's close(). A failure once the head is out cuts the client's
connection; the traceback goes to the tenant's log.
"""
from __future__ import annotations

import functools
import importlib.machinery
import importlib.util
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType, TracebackType
from typing import Any, ClassVar
from urllib.parse import parse_qs

from mayflyd import _mayfly, error_record

__all__ = ["Request", "Response", "Headers", "Program", "ProgramError", "load_module", "load_program",
           "report_exception"]

RawHeaders = list[tuple[str, str]]
Result = tuple[int, RawHeaders, bytes]
# normalize()'s body: bytes, or an iterable sent as a stream.
Body = bytes | Iterable[object]
Normalized = tuple[int, RawHeaders, Body]


class ProgramError(Exception):
    """The program cannot be loaded or initialised."""


class Headers(_mayfly.HeadersBase, Mapping[str, str]):
    """Request headers: case-insensitive lookup (h["host"], h.get("Host"),
    "HOST" in h); repeated fields joined by ', '; raw() gives every field
    as received. Built from the (name, value) pairs; the lookups are the C
    base's (csrc/python/py_headers.c), the rest of Mapping is Mapping's."""

    __slots__ = ()


class Request(_mayfly.RequestBase):
    """What a program sees of one HTTP request.

    Its fields are the C base's (csrc/python/py_request.c), which a
    sandbox fills with no Python code run: id, method, raw_path (as sent:
    percent-encoded), path (decoded as UTF-8, invalid bytes become
    U+FFFD), query (as sent; `args` decodes it), headers (a Headers, made
    when first read), body and client. Constructed with the keywords id,
    method, path (raw), query, headers (raw pairs), body and client.
    """

    __slots__ = ()
    _headers_type: ClassVar[type[Headers]] = Headers

    @property
    def args(self) -> dict[str, list[str]]:
        """The query string parsed into lists of values."""
        return parse_qs(self.query, keep_blank_values=True)

    def text(self, encoding: str = "utf-8") -> str:
        return self.body.decode(encoding, "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class Response:
    """An explicit response, for programs that want to say everything (a
    body that is an iterable of str or bytes is streamed)."""

    __slots__ = ("status", "headers", "body", "content_type")

    def __init__(self, body: str | bytes | Iterable[str | bytes] = b"", *, status: int = 200,
                 headers: Mapping[str, str] | RawHeaders | None = None,
                 content_type: str | None = None) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.content_type = content_type


def _streams(body: object) -> bool:
    return not isinstance(body, (str, bytes, bytearray, memoryview)) and isinstance(body, Iterable)


def _as_body(body: object) -> Body:
    if isinstance(body, bytes):
        return body
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        return body.encode("utf-8")
    if _streams(body):
        return body  # type: ignore[return-value]
    raise TypeError(f"a response body must be str, bytes or an iterable of them, not {type(body).__name__}")


def _chunk_bytes(chunk: object) -> bytes:
    if isinstance(chunk, str):
        return chunk.encode("utf-8")
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    raise TypeError(f"a response body's chunk must be str or bytes, not {type(chunk).__name__}")


def collect(body: Iterable[object]) -> bytes:
    """A streamed body joined, as a sandbox would send it, then its close()
    (also on errors): for in-process use, where nothing streams."""
    try:
        return b"".join(_chunk_bytes(chunk) for chunk in body)
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


def _header_list(headers: object) -> RawHeaders:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    result: RawHeaders = []
    for item in items:  # type: ignore[attr-defined]
        name, value = item
        result.append((str(name), str(value)))
    return result


def _with_content_type(headers: RawHeaders, content_type: str) -> RawHeaders:
    if any(name.lower() == "content-type" for name, _ in headers):
        return headers
    return [("Content-Type", content_type), *headers]


def _default_type(body: object) -> str:
    return "text/plain; charset=utf-8" if isinstance(body, str) else "application/octet-stream"


def normalize(result: object) -> Normalized:
    """Turn whatever the program returned into (status, headers, body)."""
    if isinstance(result, Response):
        headers = _header_list(result.headers)
        content_type = result.content_type or _default_type(result.body)
        return int(result.status), _with_content_type(headers, content_type), _as_body(result.body)
    if result is None:
        return 204, [], b""
    if isinstance(result, (str, bytes, bytearray, memoryview)):
        return 200, [("Content-Type", _default_type(result))], _as_body(result)
    if isinstance(result, (dict, list)):
        return 200, [("Content-Type", "application/json")], json.dumps(result).encode()
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], str):
        content_type, body = result
        return 200, [("Content-Type", content_type)], _as_body(body)
    if isinstance(result, tuple) and len(result) == 3 and isinstance(result[0], int) \
            and not isinstance(result[0], bool):
        status, headers, body = result
        return status, _with_content_type(_header_list(headers), _default_type(body)), _as_body(body)
    if isinstance(result, Iterator):
        return 200, [("Content-Type", _default_type(result))], result
    raise TypeError(f"unsupported response of type {type(result).__name__}: expected str, bytes, "
                    "(content_type, body), (status, headers, body), dict, list, None, Response or an iterator")


def _takes_request(handler: Callable[..., object]) -> bool:
    """True when on_client_request accepts a positional argument."""
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) for p in params)


class Program:
    """A loaded and initialised tenant program."""

    __slots__ = ("module", "_handler", "_takes_request", "_contract", "_on_stop")

    def __init__(self, module: ModuleType, handler: Callable[[Request], object] | None = None, *,
                 on_stop: Callable[[], object] | None = None) -> None:
        """handler: called with each Request instead of the module's
        on_client_request (an app's adapter, wsgi.py); on_stop: called
        when the host stops instead of the module's on_stop (an app's
        adapter: its shutdown)."""
        self._contract = handler is None
        if handler is None:
            handler = getattr(module, "on_client_request", None)
            if not callable(handler):
                raise ProgramError("the program defines no callable on_client_request")
        self.module = module
        self._handler: Callable[..., object] = handler
        self._takes_request = _takes_request(handler)
        self._on_stop = on_stop

    def init(self) -> None:
        on_init = getattr(self.module, "on_init", None)
        if on_init is None:
            return
        if not callable(on_init):
            raise ProgramError("on_init is not callable")
        try:
            on_init()
        except BaseException as exc:
            report_exception(exc)
            raise ProgramError(f"on_init() raised {type(exc).__name__}: {exc}") from exc

    def stop_hook(self) -> Callable[[], object] | None:
        """What runs, with no arguments, in one sandbox when the host stops
        (csrc/engine/stop_sandbox.h): the adapter's on_stop, or the
        program's on_stop() if it defines a callable one (looked up now,
        after on_init(), as on_client_request is for request_path()), or
        None. Its exceptions are the engine's to print."""
        if self._on_stop is not None:
            return self._on_stop
        on_stop = getattr(self.module, "on_stop", None) if self._contract else None
        return on_stop if callable(on_stop) else None

    def request_path(self) -> _mayfly.RequestPath:
        """What a sandbox runs per request: call() in C (py_request_path.c)."""
        return _mayfly.RequestPath(self._handler, self._takes_request, Request, Response, normalize,
                                   report=report_exception)

    def call(self, request: Request) -> Result:
        """Run the handler; never raises (errors become a 500). The
        reference of request_path(), which follows it; for in-process use."""
        try:
            if self._takes_request:
                result = self._handler(request)
            else:
                result = self._handler()
                if callable(result) and not isinstance(result, Response):
                    result = result()
            status, headers, body = normalize(result)
            return status, headers, body if isinstance(body, bytes) else collect(body)
        except SystemExit as exc:
            # The program chose to end its sandbox without answering: the
            # client gets a 502, like any other exit.
            _flush_std_streams()
            os._exit(exc.code if isinstance(exc.code, int) else 1)
        except BaseException as exc:  # noqa: BLE001 - anything else becomes a 500
            report_exception(exc, request)
            body = f"500 Internal Server Error: the program raised an exception (request {request.id})\n"
            return 500, [("Content-Type", "text/plain; charset=utf-8")], body.encode()
        finally:
            _flush_std_streams()


# CPython 3.11 specialises a function's bytecode after its first few calls,
# writing to the code object: a sandbox that starts from a host that never
# ran a request redoes that, and dirties those pages, every time.
WARM_UP_CALLS = 64


def warm_up_request_path() -> None:
    """Specialise before sealing what Python a request may still run of the
    daemon's (never the tenant's code: its calls could change its state).
    The request path itself is C; what is left is the Request's Python
    side (its headers mapping, args, text, json) when a handler uses it,
    json.dumps for dict and list results, and normalize() for the unusual
    results the C path hands it."""
    results: tuple[object, ...] = ("text", b"bytes", ("text/plain", "x"), (200, [("X-A", "b")], b"x"),
                                   {"a": [1]}, [1], None, Response("x", status=201),
                                   Response("x", headers=MappingProxyType({"X-A": "b"})))
    dummy = ModuleType("mayflyd_warm_up")
    dummy.on_client_request = lambda request: results[request.id % len(results)]  # type: ignore[attr-defined]
    path = Program(dummy).request_path()
    headers = [("Host", "warm.up"), ("Accept", "*/*"), ("accept", "text/plain")]
    for i in range(WARM_UP_CALLS * len(results)):
        request = Request(id=i, method="GET", path="/warm%20up", query="a=1&b=", headers=headers,
                          body=b'{"a": 1}', client="192.0.2.1:1")
        path.respond(request)
        request.headers.get("accept")
        _ = request.headers["host"], "x-a" in request.headers, request.headers.raw()
        _ = request.args, request.text(), request.json()


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass  # a program that closed its own stdout keeps its answer


_HOST_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _from_tenant_frames(tb: TracebackType | None) -> TracebackType | None:
    """tb from its first frame of the tenant's code: the daemon's own
    frames that called it (Program.call, the WSGI adapter) tell its author
    nothing. All of tb where every frame is the daemon's."""
    first = tb
    while first is not None and first.tb_frame.f_code.co_filename.startswith(_HOST_DIR):
        first = first.tb_next
    return first if first is not None else tb


def report_exception(exc: BaseException, request: Request | int | None = None) -> None:
    """exc's traceback to the tenant's log as one record at level error
    (error_record.py), tagged with the request it broke, if any (its id
    alone where the sandbox could not make the Request): written to fd 2
    in one write(), after what the program wrote before it."""
    try:
        text = "".join(traceback.format_exception(type(exc), exc, _from_tenant_frames(exc.__traceback__)))
    except Exception as failure:  # noqa: BLE001 - an exception whose formatting raises
        text = f"{type(exc).__name__} (its traceback could not be formatted: {type(failure).__name__})"
    record = error_record.ErrorRecord(text=text)
    if isinstance(request, int):
        record = error_record.ErrorRecord(text=text, req=request)
    elif request is not None:
        record = error_record.ErrorRecord(text=text, req=request.id, method=request.method, path=request.raw_path)
    data = memoryview(error_record.encode(record))
    _flush_std_streams()
    try:
        while data:
            data = data[os.write(2, data):]
    except OSError:
        pass  # no stderr to report to: the client's 500 still says which request failed


def load_program(path: Path, *, module_name: str | None = None) -> Program:
    """Import a program file or package directory; does not run on_init()."""
    return Program(load_module(path, module_name=module_name))


def load_module(path: Path, *, module_name: str | None = None) -> ModuleType:
    """Import a file or package directory as a module."""
    run: Callable[[], object]
    if path.is_dir():
        name = module_name or path.name
        spec = importlib.util.spec_from_file_location(name, path / "__init__.py",
                                                      submodule_search_locations=[str(path)])
        if spec is None or spec.loader is None:
            raise ProgramError(f"cannot load {path}: not a Python module")
        module = importlib.util.module_from_spec(spec)
        run = functools.partial(spec.loader.exec_module, module)
    else:
        name = module_name or path.stem
        module = _file_module(name, path)
        run = functools.partial(_exec_file, module, path)
    sys.path.insert(0, str(path.parent))
    sys.modules[name] = module
    try:
        run()
    except BaseException as exc:
        report_exception(exc)
        raise ProgramError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    return module


def _file_module(name: str, path: Path) -> ModuleType:
    """A one-file program's module with the spec, loader and attributes
    importlib would give it, made without importlib's finder and loader
    calls: those cost each forked host about 70 KiB of copied pages."""
    origin = str(path)
    loader = importlib.machinery.SourceFileLoader(name, origin)
    spec = importlib.machinery.ModuleSpec(name, loader, origin=origin)
    spec.has_location = True
    module = ModuleType(name)
    module.__spec__, module.__loader__, module.__file__ = spec, loader, origin
    return module


def _exec_file(module: ModuleType, path: Path) -> None:
    with open(path, "rb") as source:
        code = compile(source.read(), str(path), "exec", dont_inherit=True)
    exec(code, module.__dict__)  # noqa: S102 - running the tenant's program is the point
