"""The request path in C (RequestPath, RequestBase, reseed_random) against
its reference, program.py's Program.call and normalize()."""
from __future__ import annotations

import io
import os
import random
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any
from urllib.parse import unquote

import pytest

from mayflyd import _mayfly as M
from mayflyd import error_record
from mayflyd.host.program import Headers, Program, Request, Response
from tests.daemon_harness import reset_engine_missing
from tests.unit.test_c_helper import Host, read_response


def _request(**kw: object) -> Request:
    fields: dict[str, object] = {"id": 7, "method": "GET", "path": "/", "query": "a=1&a=2&b=",
                                 "headers": [("X-A", "1"), ("x-a", "2"), ("Host", "h")], "body": b'{"k": 1}',
                                 "client": "c"}
    fields.update(kw)
    return Request(**fields)  # type: ignore[arg-type]


def _program(handler: Callable[..., object]) -> Program:
    module = ModuleType("request_path_test")
    module.on_client_request = handler  # type: ignore[attr-defined]
    return Program(module)


def _encoded(text: str | bytes) -> bytes:
    """How the response encoder sends a header: latin-1 when it can, else UTF-8."""
    if isinstance(text, bytes):
        return text
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        return text.encode("utf-8")


def _reference(program: Program, request: Request) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status, headers, body = program.call(request)
    return status, [(_encoded(n), _encoded(v)) for n, v in headers], body


class Pairs:
    """An iterable of header pairs that is neither a list nor a tuple."""

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter([("X-I", "i")])


class Shout:
    def __str__(self) -> str:
        return "SHOUT"


RESULTS: list[object] = [
    "hé", "plain", b"\x00", bytearray(b"ba"), memoryview(b"mv"), ("text/html", "<p>"), ("a/b", b"x"),
    (404, {"X-A": "1"}, "no"), (201, [("Content-Type", "a/b")], b"x"), (200, [["content-TYPE", "c/d"]], "x"),
    (202, (("X-N", 3), (Shout(), "v")), bytearray(b"y")), (200, None, "é"), (299, {"X-Ü": "ü€"}, b""),
    {"a": [1, "é"]}, [1, 2], None, Response("x", status=202, content_type="text/x"), Response(b"b"),
    Response("r", status="203", headers={"X-B": "2"}),  # type: ignore[arg-type]
    Response("r", headers=[("content-type", "t/u")], content_type="ignored/x"),
    # Handed to normalize(): a header mapping that is not a dict, an iterator of pairs.
    (200, MappingProxyType({"X-M": "m"}), "m"), Response("x", headers=MappingProxyType({"X-R": "r"})),
    (200, Pairs(), "i"), (200, [("X-T", "t", "extra")], "t"),
    # Errors: 500s.
    12, (True, {}, "x"), ("a", "b", "c", "d"), object(), (200, {}, 3), ("t/x", None), "\udc80",
    Response(3), Response("x", status="nope"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("result", RESULTS, ids=[repr(r)[:40] for r in RESULTS])
def test_the_c_path_answers_as_program_call(result: object, capfd: pytest.CaptureFixture[str]) -> None:
    program = _program(lambda request: result)
    expected = _reference(program, _request())
    reference_log = capfd.readouterr().err
    assert program.request_path().respond(_request()) == expected
    log = capfd.readouterr().err
    if expected[0] == 500:
        # One record each; an error found in C has no Python frame, so a
        # shorter traceback: the same exception all the same.
        ours, reference = error_record.decode(log.encode()), error_record.decode(reference_log.encode())
        assert ours is not None and reference is not None
        assert (ours.req, ours.method, ours.path) == (reference.req, reference.method, reference.path)
        assert (ours.req, ours.method, ours.path) == (7, "GET", "/")
        assert ours.text.splitlines()[-1] == reference.text.splitlines()[-1]
    else:
        assert log == reference_log == ""


def test_without_report_the_c_path_prints_the_traceback(capfd: pytest.CaptureFixture[str]) -> None:
    """A RequestPath made without report= (the engine tests') prints as Python does."""
    def handler(request: Request) -> str:
        raise ValueError("plain")
    path = M.RequestPath(handler, True, Request, Response, lambda result: result)
    assert path.respond(_request())[0] == 500
    log = capfd.readouterr().err
    assert log.startswith("request 7: the program raised an exception\nTraceback")
    assert log.endswith("ValueError: plain\n")


def test_seed_form_calls_the_returned_callable_but_not_a_response() -> None:
    assert _program(lambda: lambda: ("t/p", "x")).request_path().respond(_request())[2] == b"x"
    response = Response("r", status=201)
    assert _program(lambda: response).request_path().respond(_request())[0] == 201


def test_a_handler_taking_varargs_gets_the_request() -> None:
    seen: list[object] = []

    def handler(*args: object) -> str:
        seen.append(args)
        return "x"
    assert _program(handler).request_path().respond(_request()) == (
        200, [(b"Content-Type", b"text/plain; charset=utf-8")], b"x")
    assert len(seen) == 1 and isinstance(seen[0], tuple) and isinstance(seen[0][0], Request)


def test_request_fields_headers_args_json() -> None:
    request = _request(path="/a%20b/%E2%82%AC/%zz%", query="x=%20&y")
    assert (request.id, request.method, request.raw_path, request.path) == (7, "GET", "/a%20b/%E2%82%AC/%zz%",
                                                                           "/a b/€/%zz%")
    assert request.args == {"x": [" "], "y": [""]}
    assert request.json() == {"k": 1} and request.text() == '{"k": 1}'
    headers = request.headers
    assert isinstance(headers, Headers) and request.headers is headers
    assert headers.get("x-A") == "1, 2" and headers["HOST"] == "h" and "host" in headers
    assert headers.get("missing") is None and len(headers) == 2
    assert headers.raw() == [("X-A", "1"), ("x-a", "2"), ("Host", "h")]
    request.method = "PUT"
    assert request.method == "PUT"
    with pytest.raises(AttributeError):
        request.other = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="missing keyword argument 'client'"):
        Request(id=1, method="GET", path="/", query="", headers=[], body=b"")  # type: ignore[call-arg]


@pytest.mark.parametrize("path", ["/", "%", "%4", "%41", "%e9", "%C3%A9", "é%C3%A9é", "%%41", "a%2Fb", "%Zz9",
                                  "\x80%41\xff", "%E2%82", "/x%20y%"])
def test_path_is_decoded_as_unquote_does(path: str) -> None:
    assert _request(path=path).path == unquote(path)


def _wire_handler(request: Request) -> object:
    if request.path == "/print":
        print("out", request.id)
        sys.stdout.buffer.write(b"bin\n")
        print("err", request.id, file=sys.stderr)
        return "x"
    if request.path == "/exit":
        print("bye", end="")
        raise SystemExit(7)
    if request.path == "/random":
        return repr(random.random())
    return 200, {"X-Path": request.path, "X-Host": request.headers.get("host"),
                 "X-Args": repr(request.args), "X-Client": request.client}, request.body[::-1]


def _log_to(log: Path) -> Callable[[], None]:
    """A host's setup: stdout and stderr buffered text streams on log, as a host's are on its pipes."""
    def setup() -> None:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = io.TextIOWrapper(open(1, "wb", closefd=False), write_through=False)
        sys.stderr = io.TextIOWrapper(open(2, "wb", closefd=False), write_through=False)
    return setup


def _check_the_wire_path(host: Host, log: Path) -> None:
    """The request as the front end sent it; what the handler printed
    flushed before the sandbox ends (or is rewound); SystemExit's code."""
    try:
        sock = host.request(3, path=b"/a%20b", query=b"q=1", headers=[(b"HOST", b"h\xe9")], body=b"abc")
        status, headers, body = read_response(sock, 3)
        assert (status, body) == (200, b"cba")
        assert (headers["X-Path"], headers["X-Host"], headers["X-Args"]) == ("/a b", "h\xe9", "{'q': ['1']}")
        assert headers["Content-Type"] == "application/octet-stream"
        host.child_exit(3)
        assert read_response(host.request(4, path=b"/print"), 4)[2] == b"x"
        host.child_exit(4)
        draws = set()
        for req_id in (5, 6):
            draws.add(read_response(host.request(req_id, path=b"/random"), req_id)[2])
            host.child_exit(req_id)
        assert len(draws) == 2
        host.request(7, path=b"/exit")
        assert os.waitstatus_to_exitcode(host.child_exit(7)[1]) == 7
    finally:
        host.close()
    ours = log.read_text().split("mayflyd:")[0]  # before the engine's own lines (a worker replaced)
    assert sorted(ours.split()) == sorted(["out", "4", "bin", "err", "4", "bye"])


def test_the_wire_path_in_a_forked_sandbox(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _check_the_wire_path(Host(_program(_wire_handler).request_path(), _log_to(log)), log)


def _reset_host(handler: Callable[[Request], object], log: Path) -> Host:
    """A reset host whose workers run handler's request path, logging to log."""
    from tests.unit.test_reset_engine_c import ResetHost

    class RequestPathResetHost(ResetHost):
        def serve(self, ctrl_fd: int, runner: Callable[..., Any], serve_kw: dict[str, Any]) -> None:
            M.serve_reset(ctrl_fd, _program(handler).request_path(), [], M.reseed_random, **serve_kw)

    return RequestPathResetHost(_log_to(log))


@pytest.mark.skipif(bool(reset_engine_missing()), reason="the kernel cannot run the reset engine")
def test_the_wire_path_in_a_rewound_worker(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _check_the_wire_path(_reset_host(_wire_handler, log), log)


def test_reseed_random_draws_anew_and_resets_gauss_next() -> None:
    state = random.getstate()
    try:
        random.gauss()
        random.setstate(state)
        first = random.random()
        random.setstate(state)
        random._inst.gauss_next = 0.5  # type: ignore[attr-defined]
        M.reseed_random()
        assert random.random() != first
        assert random._inst.gauss_next is None  # type: ignore[attr-defined]
    finally:
        random.setstate(state)


def test_headers_is_a_case_insensitive_mapping() -> None:
    headers = Headers([("X-A", "1"), ["x-a", "2"], ("Host", "h"), ("K", 3), ("k", 4)])
    assert isinstance(headers, Mapping) and len(headers) == 3 and list(headers) == ["x-a", "host", "k"]
    assert headers == {"x-a": "1, 2", "host": "h", "k": "3, 4"} and dict(headers.items()) == dict(headers)
    assert headers.get("HOST") == "h" and headers.get("nope") is None and headers.get("nope", 5) == 5
    assert "X-a" in headers and "nope" not in headers
    with pytest.raises(KeyError, match="'nope'"):
        headers["NOPE"]
    with pytest.raises(AttributeError):
        _ = 1 in headers  # as str.lower would have it
    assert headers.raw() == [("X-A", "1"), ["x-a", "2"], ("Host", "h"), ("K", 3), ("k", 4)]
    with pytest.raises(ValueError):
        Headers([("a", "b", "c")])


# ---- streamed responses (an iterable body, response_start/response_write) ----

class Closing:
    """An iterable body with a close(), as WSGI apps return."""

    def __init__(self, chunks: list[object]) -> None:
        self.chunks = chunks
        self.closed = 0

    def __iter__(self) -> Iterator[object]:
        return iter(self.chunks)

    def close(self) -> None:
        self.closed += 1


STREAMED: list[object] = [
    (200, {"X-S": "1"}, [b"a", "\u00e9", bytearray(b"c")]), ("t/x", (b"a", b"b")), Response([b"x", "y"]),
    (200, None, []), (200, {}, [b"a", 3]), (200, {}, [None]),
]


@pytest.mark.parametrize("result", STREAMED, ids=[repr(r)[:40] for r in STREAMED])
def test_an_iterable_body_is_joined_outside_a_sandbox_as_program_call_joins_it(
        result: object, capsys: pytest.CaptureFixture[str]) -> None:
    program = _program(lambda request: result)
    expected = _reference(program, _request())
    capsys.readouterr()
    assert program.request_path().respond(_request()) == expected


def test_an_iterator_result_is_a_streamed_body_and_close_is_called() -> None:
    program = _program(lambda request: (chunk for chunk in [b"a", "b"]))
    expected = (200, [(b"Content-Type", b"application/octet-stream")], b"ab")
    assert _reference(program, _request()) == expected
    assert program.request_path().respond(_request()) == expected
    for chunks, status in (([b"a"], 200), ([b"a", 3], 500)):
        body = Closing(chunks)
        assert program.request_path().respond(_request()) and _program(
            lambda request, body=body: (200, {}, body)).request_path().respond(_request())[0] == status  # type: ignore[misc]
        assert body.closed == 1


def test_response_start_outside_a_sandbox_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="outside a request"):
        M.response_start(200, [])
    with pytest.raises(RuntimeError, match="outside a request"):
        M.response_write(b"x")


def _stream_handler(request: Request) -> object:
    if request.path == "/gen":
        return 200, {"X-S": "1"}, (chunk for chunk in [b"a", "\u00e9", b"c" * 100_000])
    if request.path == "/api":
        M.response_start(201, [("X-A", "b"), (b"X-B", b"c")])
        M.response_write(b"x")
        M.response_write(memoryview(b"y" * 70_000))
        return None
    if request.path == "/twice":
        M.response_start(200, [])
        M.response_start(200, [])
    if request.path == "/write-first":
        M.response_write(b"x")
    if request.path == "/raise":
        def broken() -> Iterator[bytes]:
            yield b"x"
            raise ValueError("mid-stream")
        return 200, {}, broken()
    if request.path == "/bad-chunk":
        return 200, {}, [b"x", 3]
    return "plain"


def _stream_frames(sock: Any, req_id: int) -> tuple[list[tuple[int, bytes]], bool]:
    """The response's frames up to RESP_END or RESP_WHOLE (True), or to the end of the channel (False)."""
    from mayflyd import protocol
    frames = []
    while True:
        pkt = sock.recv(M.FRAME_HEADER_SIZE + M.MAX_PAYLOAD)
        if not pkt:
            return frames, False
        frame = protocol.parse_frame(pkt)
        assert frame.req_id == req_id
        frames.append((frame.type, frame.payload))
        if frame.type in (M.MSG_RESP_END, M.MSG_RESP_WHOLE):
            return frames, True


def _check_streams(host: Host, log: Path, *, rewound: bool) -> None:
    from mayflyd import protocol
    try:
        for req_id, path, status, body in ((3, b"/gen", 200, "a\u00e9".encode() + b"c" * 100_000),
                                           (4, b"/api", 201, b"x" + b"y" * 70_000), (5, b"/", 200, b"plain"),
                                           (9, b"/write-first", 500, b"")):
            decoder = protocol.ResponseDecoder(req_id, 1 << 20)
            frames, ended = _stream_frames(host.request(req_id, path=path), req_id)
            assert ended
            for frame_type, payload in frames:
                decoder.feed(protocol.pack_frame(frame_type, req_id, payload))
            response = decoder.response()
            assert (response.status, decoder.streamed) == (status, path not in (b"/", b"/write-first"))
            assert response.body == body or status == 500
            assert all(len(p) <= M.MAX_PAYLOAD for _, p in frames)
            host.child_exit(req_id)
        for req_id, path in ((6, b"/twice"), (7, b"/raise"), (8, b"/bad-chunk")):
            sock = host.request(req_id, path=path, timeout_ms=2000)
            if rewound:  # a persistent channel: no end, but the worker's report comes after its frames
                host.child_exit(req_id)
                frames = []
                timeout = sock.sock.gettimeout()
                sock.sock.settimeout(0)
                while True:
                    try:
                        pkt = sock.sock.recv(M.FRAME_HEADER_SIZE + M.MAX_PAYLOAD)
                    except BlockingIOError:
                        break
                    frames.append(protocol.parse_frame(pkt).type)
                sock.sock.settimeout(timeout)
            else:
                frames = [t for t, _ in _stream_frames(sock, req_id)[0]]
                host.child_exit(req_id)
            assert M.MSG_RESP_END not in frames and M.MSG_RESP_WHOLE not in frames
    finally:
        host.close()
    text = log.read_text()
    assert "response_start() called twice" in text and "ValueError: mid-stream" in text
    assert "chunk must be str or bytes, not int" in text and "response_write() before response_start()" in text


def test_streams_in_a_forked_sandbox(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _check_streams(Host(_program(_stream_handler).request_path(), _log_to(log)), log, rewound=False)


@pytest.mark.skipif(bool(reset_engine_missing()), reason="the kernel cannot run the reset engine")
def test_streams_in_a_rewound_worker(tmp_path: Path) -> None:
    log = tmp_path / "log"
    _check_streams(_reset_host(_stream_handler, log), log, rewound=True)
