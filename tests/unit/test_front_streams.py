"""mayflyd-front forwards a streamed answer (RESP_HEAD with BODY_STREAMED)
as it comes: the real executable against test_front_hosts.py's fake host,
which here streams on the paths below."""
from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mayflyd.protocol import BODY_STREAMED, HEADER_ENTRY, MAX_PAYLOAD, RESP_HEAD, MsgType, pack_frame
from tests.unit.test_front_hosts import (
    MIB,
    FakeHost,
    Front,
    Request,
    binary,  # noqa: F401  (the fixture)
    start_front,
    stop_front,
)
from tests.unit.test_front_http import pytestmark  # noqa: F401  (skips without llhttp)

GAP_S = 0.6  # /stream's pause between its two chunks


def stream_head(req_id: int, status: int, headers: list[tuple[bytes, bytes]]) -> bytes:
    payload = RESP_HEAD.pack(status, len(headers), BODY_STREAMED) + b"".join(
        HEADER_ENTRY.pack(len(n), len(v)) + n + v for n, v in headers)
    return pack_frame(MsgType.RESP_HEAD, req_id, payload)


class StreamHost(FakeHost):
    """A fake host whose sandboxes stream on /stream* paths (others as FakeHost's)."""

    def __init__(self, name: str, host_id: int) -> None:
        super().__init__(name, host_id)
        self.sent: dict[int, int] = {}  # body bytes each stream's sandbox got onto its channel

    def _answer(self, channel: socket.socket, thread: int, sock: socket.socket, request: Request) -> None:
        if not request.path.startswith("/stream"):
            super()._answer(channel, thread, sock, request)
            return
        status = 0
        try:
            self._stream(sock, request.req_id, request)
        except OSError:
            status = 256  # the front end closed the channel (it cancelled): as a sandbox that exits 1
        sock.close()
        self._report(channel, request.req_id, status=status)

    def _stream(self, sock: socket.socket, req_id: int, request: Request) -> None:
        path = request.path
        status = 204 if path == "/stream-204" else 200
        sock.sendall(stream_head(req_id, status, [(b"X-Stream", b"1"), (b"Content-Length", b"999")]))

        def chunk(data: bytes) -> None:
            sock.sendall(pack_frame(MsgType.RESP_BODY, req_id, data))
            with self._lock:
                self.sent[req_id] = self.sent.get(req_id, 0) + len(data)

        if path == "/stream-big":
            for _ in range(0, int(request.query), MAX_PAYLOAD):
                chunk(b"x" * MAX_PAYLOAD)
        else:
            chunk(b"first")
            if path == "/stream-cut":
                return  # the sandbox ends without RESP_END
            if path == "/stream-invalid":
                sock.sendall(pack_frame(MsgType.RESP_WHOLE, req_id, b""))
                return
            time.sleep(GAP_S)
            chunk(b"")
            chunk(b"second")
        sock.sendall(pack_frame(MsgType.RESP_END, req_id))


@pytest.fixture
def front(binary: Path, tmp_path: Path) -> Iterator[Front]:  # noqa: F811
    running = start_front(binary, tmp_path)
    yield running
    stop_front(running)


def attach(front: Front, **routes: object) -> StreamHost:
    front.routes(**routes)  # type: ignore[arg-type]
    host = StreamHost("app", 1)
    host.attach(front.link, "app")
    front.hosts.append(host)
    return host


def connect(front: Front) -> socket.socket:
    return socket.create_connection(("127.0.0.1", front.port), timeout=10)


def read_until(sock: socket.socket, data: bytearray, marker: bytes) -> None:
    while marker not in data:
        got = sock.recv(65536)
        assert got, f"EOF before {marker!r}: {bytes(data)!r}"
        data += got


def split_head(data: bytearray) -> tuple[str, bytes]:
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def test_a_stream_goes_out_chunked_as_it_comes_and_the_connection_goes_on(front: Front) -> None:
    attach(front)
    with connect(front) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: app.example\r\n\r\n")
        started = time.monotonic()
        data = bytearray()
        read_until(sock, data, b"5\r\nfirst\r\n")
        first_at = time.monotonic() - started
        read_until(sock, data, b"0\r\n\r\n")
        assert time.monotonic() - started >= GAP_S * 0.9 and first_at < GAP_S * 0.8, first_at
        head, body = split_head(data)
        lines = head.split("\r\n")
        assert lines[0] == "HTTP/1.1 200 OK" and "Transfer-Encoding: chunked" in lines and "X-Stream: 1" in lines
        assert not any(line.lower().startswith("content-length") for line in lines)
        assert body == b"5\r\nfirst\r\n6\r\nsecond\r\n0\r\n\r\n"
        # Keep-alive: the next request on the same connection.
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: app.example\r\n\r\n")
        data = bytearray()
        read_until(sock, data, b"}")
        assert data.startswith(b"HTTP/1.1 200 OK\r\n")


def test_http_1_0_reads_a_stream_to_the_close(front: Front) -> None:
    attach(front)
    with connect(front) as sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\nHost: app.example\r\n\r\n")
        data = bytearray()
        while got := sock.recv(65536):
            data += got
    head, body = split_head(data)
    lines = head.split("\r\n")
    assert "Connection: close" in lines and not any(line.startswith(("Transfer-Encoding", "Content-Length"))
                                                    for line in lines)
    assert body == b"firstsecond"


@pytest.mark.parametrize("method, path", [("HEAD", "/stream"), ("GET", "/stream-204")])
def test_no_body_for_head_204_and_304(front: Front, method: str, path: str) -> None:
    attach(front)
    with connect(front) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: app.example\r\n\r\n"
                     "GET /ok HTTP/1.1\r\nHost: app.example\r\n\r\n".encode())
        data = bytearray()
        read_until(sock, data, b"}")
    first, rest = split_head(data)
    assert ("Transfer-Encoding: chunked" in first) == (method == "HEAD")
    assert rest.startswith(b"HTTP/1.1 200 OK\r\n")  # nothing between the two answers


def test_pipelined_answers_stay_in_order_around_a_stream(front: Front) -> None:
    attach(front)
    with connect(front) as sock:
        sock.sendall(b"GET /stream HTTP/1.1\r\nHost: app.example\r\n\r\n"
                     b"GET /ok HTTP/1.1\r\nHost: app.example\r\n\r\n"
                     b"GET /stream HTTP/1.1\r\nHost: app.example\r\n\r\n")
        data = bytearray()
        while data.count(b"0\r\n\r\n") < 2:
            got = sock.recv(65536)
            assert got, bytes(data)
            data += got
    text = bytes(data)
    first_end = text.index(b"0\r\n\r\n")
    assert text.index(b"second") < first_end < text.index(b'"path": "/ok"') < text.rindex(b"first")


@pytest.mark.parametrize("path", ["/stream-cut", "/stream-invalid"])
def test_a_stream_that_cannot_end_cuts_the_connection(front: Front, path: str) -> None:
    attach(front)
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    conn.request("GET", path, headers={"Host": "app.example"})
    answer = conn.getresponse()
    assert answer.status == 200  # the head was out before the failure
    with pytest.raises(http.client.IncompleteRead) as failed:
        answer.read()
    assert failed.value.partial == b"first"
    conn.close()
    # HTTP/1.0 has no framing to leave incomplete: the cut is a reset.
    with connect(front) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: app.example\r\n\r\n".encode())
        with pytest.raises(ConnectionResetError):
            while sock.recv(65536):
                pass
    assert front.ask("/ok")[0] == 200  # and it serves on
    log = front.stderr.read_text()
    assert ("before the end of its streamed answer" if path == "/stream-cut" else "invalid response") in log


def test_max_response_counts_streamed_bytes(front: Front) -> None:
    host = attach(front, max_response=300_000)
    assert len(front.ask(f"/stream-big?{4 * MAX_PAYLOAD}")[2]) == 4 * MAX_PAYLOAD
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=10)
    conn.request("GET", f"/stream-big?{2 * MIB}", headers={"Host": "app.example"})
    answer = conn.getresponse()
    req_id = int(answer.getheader("X-Request-Id") or 0)
    with pytest.raises(http.client.IncompleteRead):
        answer.read()
    conn.close()
    deadline = time.monotonic() + 5
    while req_id not in host.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert req_id in host.cancelled
    assert "limit hit: max_response" in front.stderr.read_text()
    assert front.ask("/ok")[0] == 200


def test_a_slow_client_holds_the_stream_back(front: Front) -> None:
    host = attach(front, max_response=256 * MIB, timeout_ms=30_000)
    size = 48 * MIB  # far more than the buffers on its way (ours, the kernel's): held back, not all taken
    with connect(front) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /stream-big?{size} HTTP/1.1\r\nHost: app.example\r\n\r\n".encode())
        time.sleep(1)  # not reading: the front end must stop reading the sandbox
        with host._lock:
            held_back = max(host.sent.values(), default=0)
        assert 0 < held_back < 16 * MIB, held_back
        received, tail = 0, b""
        while not tail.endswith(b"0\r\n\r\n"):
            got = sock.recv(1 << 20)
            assert got
            received += len(got)
            tail = (tail + got)[-5:]
    assert received > size


def test_the_access_line_of_a_stream_gives_its_bytes(binary: Path, tmp_path: Path) -> None:  # noqa: F811
    front = start_front(binary, tmp_path)
    try:
        attach(front, access_log=True)
        assert front.ask("/stream")[2] == b"firstsecond"
        with pytest.raises(http.client.IncompleteRead):
            front.ask("/stream-cut")
        time.sleep(0.1)
        lines = [line for line in front.stderr.read_text().splitlines() if "mayflyd.access" in line]
        assert lines[0].endswith(' msg="GET /stream 200 (streamed, 11 bytes)"'), lines
        assert lines[1].endswith(' msg="GET /stream-cut 200 (streamed, cut after 5 bytes)"'), lines
    finally:
        stop_front(front)


def test_a_client_that_leaves_a_held_back_stream_cancels_its_sandbox(front: Front) -> None:
    host = attach(front, max_response=256 * MIB, timeout_ms=30_000)
    with connect(front) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(f"GET /stream-big?{48 * MIB} HTTP/1.1\r\nHost: app.example\r\n\r\n".encode())
        time.sleep(0.5)  # held back by now
    deadline = time.monotonic() + 5  # well before the request's 30 s
    while not host.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [r.req_id for r in host.requests] == list(host.cancelled)
    assert front.ask("/ok")[0] == 200
