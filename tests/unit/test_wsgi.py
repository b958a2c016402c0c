"""Tests of the WSGI adapter (PEP 3333) against hand-written apps."""
from __future__ import annotations

import io
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mayflyd import error_record
from mayflyd.host.program import ProgramError, Request
from mayflyd.host.wsgi import FileWrapper, WsgiError, WsgiHandler, app_interface, build_environ, load_app

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], None]]


def _request(**kw: object) -> Request:
    fields: dict[str, object] = {
        "id": 7, "method": "POST", "path": "/caf%C3%A9/a%2Fb", "query": "x=1&y=%20",
        "headers": [("Host", "example.org:8081"), ("Content-Type", "text/plain"), ("Content-Length", "5"),
                    ("X-Many", "1"), ("x-many", "2"), ("Cookie", "a=1"), ("Cookie", "b=2"),
                    ("X_Sneaky", "no")],
        "body": b"hello", "client": "192.0.2.1"}
    fields.update(kw)
    return Request(**fields)  # type: ignore[arg-type]


def test_environ_has_every_required_key() -> None:
    environ = build_environ(_request())
    assert environ["REQUEST_METHOD"] == "POST" and environ["SCRIPT_NAME"] == ""
    # Percent-decoded bytes as latin-1 (PEP 3333): the app re-encodes and decodes as it likes.
    assert environ["PATH_INFO"] == "/café/a/b".encode().decode("latin-1")
    assert environ["QUERY_STRING"] == "x=1&y=%20"
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("text/plain", "5")
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("example.org", "8081")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["HTTP_HOST"] == "example.org:8081" and environ["HTTP_X_MANY"] == "1, 2"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"
    assert "HTTP_X_SNEAKY" not in environ and "HTTP_CONTENT_TYPE" not in environ
    assert environ["REMOTE_ADDR"] == "192.0.2.1" and "REMOTE_PORT" not in environ
    assert environ["wsgi.version"] == (1, 0) and environ["wsgi.url_scheme"] == "http"
    assert isinstance(environ["wsgi.input"], io.BytesIO) and environ["wsgi.input"].read() == b"hello"
    assert environ["wsgi.errors"] is sys.stderr
    assert (environ["wsgi.multithread"], environ["wsgi.multiprocess"], environ["wsgi.run_once"]) == (False, True, True)
    assert environ["wsgi.file_wrapper"] is FileWrapper
    for key, value in environ.items():
        if key.isupper():
            assert type(value) is str, key  # native strings only (PEP 3333)


@pytest.mark.parametrize(("host", "expected"), [
    ("", ("localhost", "80")), ("a.example", ("a.example", "80")), ("[::1]:8080", ("::1", "8080")),
    ("[::1]", ("::1", "80")),
])
def test_server_name_and_port(host: str, expected: tuple[str, str]) -> None:
    headers = [("Host", host)] if host else []
    environ = build_environ(_request(headers=headers, body=b""))
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == expected
    assert (environ["CONTENT_TYPE"], environ["CONTENT_LENGTH"]) == ("", "")


class _Closing:
    """An iterable body that records its close()."""

    closed: list[str] = []

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)

    def close(self) -> None:
        _Closing.closed.append("closed")


def _sent(answer: tuple[int, list[tuple[str, str]], Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """What the request path sends: a streamed body's chunks, then its close()."""
    status, headers, body = answer
    if isinstance(body, bytes):
        return status, headers, body
    try:
        return status, headers, b"".join(body)
    finally:
        body.close()


def test_a_body_of_unknown_length_streams_as_it_is_made() -> None:
    made: list[str] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        for part in (b"a", b"b"):
            made.append(part.decode())
            yield part

    status, _, body = WsgiHandler(app)(_request())
    # The head and the first chunk are out before the app makes the second.
    assert not isinstance(body, bytes) and made == ["a"]
    assert next(iter(body)) == b"a" and made == ["a"]
    assert list(body) == [b"b"] and made == ["a", "b"]

    def sized(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Length", "2")])
        yield b"a"
        yield b"b"

    # A length the app gives, or a list, is a whole body: sent with its Content-Length.
    assert WsgiHandler(sized)(_request())[2] == b"ab"
    assert WsgiHandler(lambda e, s: (s("200 OK", []), [b"a", b"b"])[1])(_request())[2] == b"ab"


def test_status_headers_iterable_body_and_close() -> None:
    _Closing.closed.clear()

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("201 Made", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        return _Closing([b"one ", b"", b"two"])

    status, headers, body = _sent(WsgiHandler(app)(_request()))
    assert status == 201 and body == b"one two"
    assert headers == [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert _Closing.closed == ["closed"]


def test_generator_body_write_and_file_wrapper() -> None:
    def generator(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        write = start_response("200 OK", [])
        write(b"a")
        yield environ["wsgi.input"].read()

    assert _sent(WsgiHandler(generator)(_request()))[2] == b"ahello"

    def wrapped(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"x" * 10), 3)  # type: ignore[no-any-return]

    assert _sent(WsgiHandler(wrapped)(_request()))[2] == b"x" * 10


def test_close_is_called_when_the_body_raises() -> None:
    _Closing.closed.clear()

    def chunks() -> Iterator[bytes]:
        yield b"x"
        raise RuntimeError("mid-body")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return _Closing(chunks())

    with pytest.raises(RuntimeError, match="mid-body"):
        _sent(WsgiHandler(app)(_request()))
    assert _Closing.closed == ["closed"]


def test_exc_info_replaces_the_head_before_the_body() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("X-A", "1")])
        try:
            raise ValueError("late")
        except ValueError:
            start_response("500 Oops", [("X-B", "2")], sys.exc_info())
        return [b"error page"]

    assert WsgiHandler(app)(_request()) == (500, [("X-B", "2")], b"error page")


def test_exc_info_after_the_body_started_reraises() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        try:
            raise ValueError("after the head")
        except ValueError:
            start_response("500 Oops", [], sys.exc_info())
        yield b"never"

    with pytest.raises(ValueError, match="after the head"):
        _sent(WsgiHandler(app)(_request()))


@pytest.mark.parametrize(("app", "message"), [
    (lambda e, s: (s("200 OK", []), s("200 OK", []), [b""])[2], "a second time without exc_info"),
    (lambda e, s: [b"x"], "before calling start_response"),
    (lambda e, s: [], "without calling start_response"),
    (lambda e, s: (s("200 OK", []), ["text"])[1], "must be bytes"),
    (lambda e, s: (s("OK", []), [])[1], "status must be a string like"),
    (lambda e, s: (s("200 OK", [("X-A", 1)]), [])[1], "each header must be"),
])
def test_broken_apps_raise_a_clear_error(app: Any, message: str) -> None:
    with pytest.raises(WsgiError, match=message):
        WsgiHandler(app)(_request())


def test_interface_from_the_signature() -> None:
    class Flaskish:
        def __call__(self, environ: Environ, start_response: StartResponse) -> list[bytes]:
            return []

    class Starletteish:
        async def __call__(self, scope: object, receive: object, send: object) -> None:
            pass

    async def asgi(scope: object, receive: object, send: object) -> None:
        pass

    assert app_interface(Flaskish(), "auto") == "wsgi"
    assert app_interface(Starletteish(), "auto") == "asgi"
    assert app_interface(asgi, "auto") == "asgi"
    assert app_interface(lambda a, b, c: None, "auto") == "asgi"
    assert app_interface(lambda a: None, "wsgi") == "wsgi"
    assert app_interface(Starletteish(), "asgi") == "asgi"
    with pytest.raises(ProgramError, match="cannot tell whether the app is WSGI or ASGI"):
        app_interface(lambda a: None, "auto")


APP = """\
import sys
calls = 0

def application(environ, start_response):
    global calls
    calls += 1
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [f"{calls} {environ['PATH_INFO']}".encode()]

async def asgi_app(scope, receive, send):
    pass

not_callable = 3
"""


def test_load_app_from_a_file_and_a_package(tmp_path: Path) -> None:
    (tmp_path / "wsgi_file_app.py").write_text(APP)
    program = load_app(tmp_path / "wsgi_file_app.py", "wsgi_file_app:application")
    assert program.call(_request(path="/p")) == (200, [("Content-Type", "text/plain")], b"1 /p")
    package = tmp_path / "wsgi_pkg_app"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "site.py").write_text(APP)
    program = load_app(package, "wsgi_pkg_app.site:application", "wsgi")
    assert program.call(_request(path="/q"))[2] == b"1 /q"


@pytest.mark.parametrize(("app", "interface", "message"), [
    ("wsgi_bad_app:missing", "auto", "has no attribute 'missing'"),
    ("wsgi_bad_app:not_callable", "auto", "is not callable"),
    ("wsgi_bad_app:asgi_app", "wsgi", "set as `interface: wsgi`, but its signature is asgi's"),
    ("wsgi_bad_app:application", "asgi", "set as `interface: asgi`, but its signature is wsgi's"),
])
def test_load_app_failures(tmp_path: Path, app: str, interface: str, message: str) -> None:
    (tmp_path / "wsgi_bad_app.py").write_text(APP)
    with pytest.raises(ProgramError, match=message):
        load_app(tmp_path / "wsgi_bad_app.py", app, interface)


def test_an_app_error_is_a_500(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "wsgi_twice_app.py").write_text(
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [])\n"
        "    start_response('200 OK', [])\n"
        "    return [b'secret']\n")
    program = load_app(tmp_path / "wsgi_twice_app.py", "wsgi_twice_app:app")
    # The reference path and the C path a sandbox runs.
    for respond in (program.call, program.request_path().respond):
        status, _, body = respond(_request())
        assert status == 500 and b"secret" not in body
        record = error_record.decode(capfd.readouterr().err.encode())
        assert record is not None and record.req == _request().id
        assert "start_response() was called a second time without exc_info" in record.text
