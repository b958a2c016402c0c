"""Streamed responses through the daemon, under both engines: a program's
generator body, and _mayfly.response_start/response_write, reach a real
HTTP client as they are made."""
from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator

import pytest

from tests.daemon_harness import Daemon, skip_without_reset_engine
from tests.integration.conftest import limits, needs_root, serving

pytestmark = needs_root

PAUSE_S = 1.0  # /slow's sleep between its first chunk and the rest

STREAMS = '''
import time

from mayflyd import _mayfly


def on_client_request(request):
    if request.path == "/slow":
        def body():
            yield "first;"
            time.sleep(PAUSE_S)
            yield b"rest"
        return 200, {"Content-Type": "text/plain"}, body()
    if request.path == "/big":
        return 200, {}, (b"x" * 65536 for _ in range(int(request.query)))
    if request.path == "/raise":
        def broken():
            yield b"partial"
            raise RuntimeError("broken mid-stream")
        return 200, {}, broken()
    if request.path == "/api":
        _mayfly.response_start(201, [("X-Api", "yes"), ("Content-Type", "text/plain")])
        _mayfly.response_write(b"direct ")
        _mayfly.response_write(b"writes")
        return None
    return (chunk for chunk in ["plain ", "generator"])
'''.replace("PAUSE_S", repr(PAUSE_S))


@pytest.fixture(scope="module", params=("fork", "reset"))
def daemon(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    engine = str(request.param)
    skip_without_reset_engine(engine)
    workdir = tmp_path_factory.mktemp("mayflyd-streams")
    tenants = [{"name": "streams", "hosts": ["streams.localhost"], "program": "programs/streams.py",
                "engine": engine, "limits": limits(max_response="1MiB", request_timeout_ms=10000)}]
    yield from serving(Daemon(workdir, tenants, {"streams.py": STREAMS}), engine)


def _send(sock: socket.socket, request: str) -> None:
    sock.sendall(request.replace("\n", "\r\n").encode())


def _read_until(sock: socket.socket, data: bytearray, marker: bytes) -> None:
    while marker not in data:
        got = sock.recv(65536)
        assert got, f"EOF before {marker!r}: {bytes(data)!r}"
        data += got


def test_a_generator_is_streamed_in_chunks_as_it_yields_and_keep_alive_goes_on(daemon: Daemon) -> None:
    with daemon.connect(10) as sock:
        _send(sock, "GET /slow HTTP/1.1\nHost: streams.localhost\n\n")
        started = time.monotonic()
        data = bytearray()
        _read_until(sock, data, b"6\r\nfirst;\r\n")
        first_at = time.monotonic() - started
        _read_until(sock, data, b"0\r\n\r\n")
        ended_at = time.monotonic() - started
        # A behaviour check, not a speed one: the first chunk came well before the program's end.
        assert first_at < PAUSE_S / 2 and ended_at >= PAUSE_S * 0.9, (first_at, ended_at)
        head, _, body = bytes(data).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"Transfer-Encoding: chunked" in head.split(b"\r\n")
        assert body == b"6\r\nfirst;\r\n4\r\nrest\r\n0\r\n\r\n"
        _send(sock, "GET /gen HTTP/1.1\nHost: streams.localhost\n\n")
        data = bytearray()
        _read_until(sock, data, b"0\r\n\r\n")
        assert data.endswith(b"6\r\nplain \r\n9\r\ngenerator\r\n0\r\n\r\n")


def test_http_1_0_gets_a_close_delimited_stream(daemon: Daemon) -> None:
    with daemon.connect(10) as sock:
        _send(sock, "GET /slow HTTP/1.0\nHost: streams.localhost\n\n")
        data = bytearray()
        while got := sock.recv(65536):
            data += got
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"Transfer-Encoding" not in head and b"Content-Length" not in head
    assert body == b"first;rest"


def test_head_gets_no_body(daemon: Daemon) -> None:
    reply = daemon.request("HEAD", "/slow", host="streams.localhost")
    assert reply.status == 200 and reply.body == b""
    assert daemon.get("streams.localhost", "/api").status == 201


def test_response_start_and_write_from_the_handler(daemon: Daemon) -> None:
    reply = daemon.get("streams.localhost", "/api")
    assert (reply.status, reply.body) == (201, b"direct writes")
    assert reply.headers["X-Api"] == "yes" and reply.headers["Transfer-Encoding"] == "chunked"


def _cut(daemon: Daemon, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "streams.localhost"})
        answer = conn.getresponse()
        assert answer.status == 200
        with pytest.raises(http.client.IncompleteRead) as failed:
            answer.read()
        return failed.value.partial
    finally:
        conn.close()


def test_an_exception_mid_stream_cuts_the_connection_and_is_logged(daemon: Daemon) -> None:
    assert _cut(daemon, "/raise") == b"partial"
    daemon.wait_for(lambda: "RuntimeError: broken mid-stream" in daemon.log(), what="the traceback in the log")
    # One error record, tagged with the request: the traceback, the raising line.
    (record,) = [line for line in daemon.log().splitlines() if "broken mid-stream" in line]
    assert "level=error" in record and "req=" in record and "raise RuntimeError" in record
    assert daemon.get("streams.localhost", "/gen").body == b"plain generator"


def test_max_response_exceeded_mid_stream_cuts_the_connection(daemon: Daemon) -> None:
    assert len(daemon.get("streams.localhost", "/big?4").body) == 4 * 65536
    partial = _cut(daemon, "/big?64")  # 4 MiB, over the tenant's 1 MiB
    assert len(partial) <= 1 << 20
    daemon.wait_for(lambda: "limit hit: max_response" in daemon.log(), what="the limit in the log")
    assert daemon.get("streams.localhost", "/gen").body == b"plain generator"
