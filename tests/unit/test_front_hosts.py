"""mayflyd-front runs requests on sandbox hosts: the real executable against
a fake host written here.

The front end (csrc/front with its main.c, built as test_front_http builds
it) gets its routing table, host data channels and tenant states from
FrontLink over its control channel. A FakeHost holds the other end of one
data channel per front end thread: it reads REQUEST and its fd, reads the
request from that fd, answers there with protocol.py's frames and reports
CHILD_EXIT or REQUEST_FAILED on the channel, as the real host does. What it
does is chosen by the request's path.
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mayflyd import front_protocol
from mayflyd.front_protocol import HostDrained, RouteLimits, TenantRoute
from mayflyd.protocol import (
    CHILD_EXIT,
    ENGINE_FORK,
    EXIT_CANCELLED,
    EXIT_CPU_EXCEEDED,
    EXIT_TIMED_OUT,
    HEADER_ENTRY,
    MAX_PAYLOAD,
    REQ_HEAD,
    REQUEST_CTL,
    REQUEST_FAILED,
    RESP_HEAD,
    Frame,
    MsgType,
    pack_frame,
    parse_frame,
)
from mayflyd.supervisor.front_link import FrontLink
from tests.unit import test_front_control as control
from tests.unit.test_front_control import end, spawn
from tests.unit.test_front_http import REPO, _build, pytestmark  # noqa: F401  (skips without llhttp)

EXIT_OUT_OF_MEMORY = 8
THREADS = 2  # as spawn() starts it
MIB = 1 << 20
_RECV = MAX_PAYLOAD + 64


@dataclass
class Request:
    req_id: int
    method: str
    path: str
    query: str
    client: str
    headers: list[tuple[str, str]]
    body: bytes
    timeout_ms: int


def read_request(sock: socket.socket, req_id: int, timeout_ms: int) -> Request:
    """The request frames a sandbox reads: REQ_WHOLE, or REQ_HEAD, REQ_BODY*, REQ_END."""
    first = parse_frame(sock.recv(_RECV))
    assert first.req_id == req_id
    if first.type == MsgType.REQ_WHOLE:
        body_len = REQ_HEAD.unpack_from(first.payload)[6]
        head, body = first.payload[:len(first.payload) - body_len], first.payload[len(first.payload) - body_len:]
    else:
        assert first.type == MsgType.REQ_HEAD
        head, chunks = first.payload, []
        while True:
            frame = parse_frame(sock.recv(_RECV))
            if frame.type == MsgType.REQ_END:
                break
            assert frame.type == MsgType.REQ_BODY and len(frame.payload) <= MAX_PAYLOAD
            chunks.append(frame.payload)
        body = b"".join(chunks)
        assert len(body) == REQ_HEAD.unpack_from(head)[6]
    method_len, path_len, query_len, client_len, count, _, _ = REQ_HEAD.unpack_from(head)
    offset = REQ_HEAD.size
    strings = []
    for length in (method_len, path_len, query_len, client_len):
        strings.append(head[offset:offset + length].decode("latin-1"))
        offset += length
    headers = []
    for _ in range(count):
        name_len, value_len = HEADER_ENTRY.unpack_from(head, offset)
        offset += HEADER_ENTRY.size
        headers.append((head[offset:offset + name_len].decode("latin-1"),
                        head[offset + name_len:offset + name_len + value_len].decode("latin-1")))
        offset += name_len + value_len
    assert offset == len(head)
    return Request(req_id, *strings, headers, body, timeout_ms)


def response_packets(req_id: int, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> list[bytes]:
    """A sandbox's answer: one RESP_WHOLE when it fits, else RESP_HEAD, RESP_BODY*, RESP_END."""
    head = RESP_HEAD.pack(status, len(headers), len(body)) + b"".join(
        HEADER_ENTRY.pack(len(n), len(v)) + n + v for n, v in headers)
    if len(head) + len(body) <= MAX_PAYLOAD:
        return [pack_frame(MsgType.RESP_WHOLE, req_id, head + body)]
    packets = [pack_frame(MsgType.RESP_HEAD, req_id, head)]
    packets += [pack_frame(MsgType.RESP_BODY, req_id, body[i:i + MAX_PAYLOAD])
                for i in range(0, len(body), MAX_PAYLOAD)]
    return [*packets, pack_frame(MsgType.RESP_END, req_id)]


def messages(channel: socket.socket) -> Iterator[tuple[Frame, list[int]]]:
    """What the front end sends on a host's data channel, with any fds, until the channel ends."""
    while True:
        try:
            packet, fds, _, _ = socket.recv_fds(channel, 4096, 1)
        except OSError:
            return
        if not packet:
            return
        yield parse_frame(packet), fds


def close_all(socks: list[socket.socket]) -> None:
    """The host's ends go (as when it dies)."""
    for sock in socks:
        if sock.fileno() >= 0:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes its reader
            except OSError:
                pass  # the front end closed it first
            sock.close()


class FakeHost:
    """One host: a data channel per front end thread, a thread reading each."""

    def __init__(self, name: str, host_id: int, *, hangs: bool = False) -> None:
        self.name = name
        self.host_id = host_id
        self.hangs = hangs  # /hang: never answer (else it answers like /ok)
        self.channels: list[socket.socket] = []
        self.requests: list[Request] = []
        self.cancelled: set[int] = set()
        self.killed: set[int] = set()  # /killed-once: the requests whose sandbox was killed once
        self._cancel_events: dict[int, threading.Event] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def attach(self, link: FrontLink, tenant: str, threads: int = THREADS) -> None:
        async def go() -> None:
            for thread in range(threads):
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                link.attach_host(self.host_id, thread, tenant, theirs.fileno(), ENGINE_FORK)
                theirs.close()
                self.channels.append(ours)
                reader = threading.Thread(target=self._serve, args=(ours, thread), daemon=True)
                reader.start()
                self._threads.append(reader)

        asyncio.run(go())

    def close(self) -> None:
        """The host's end of every channel goes (as when it dies)."""
        close_all(self.channels)

    def _serve(self, channel: socket.socket, thread: int) -> None:
        for frame, fds in messages(channel):
            if frame.type == MsgType.CANCEL:
                with self._lock:
                    self.cancelled.add(frame.req_id)
                    event = self._cancel_events.get(frame.req_id)
                if event is not None:
                    event.set()
                continue
            assert frame.type == MsgType.REQUEST and len(fds) == 1, frame
            timeout_ms = REQUEST_CTL.unpack(frame.payload)[0]
            with self._lock:
                self._cancel_events[frame.req_id] = threading.Event()
            sock = socket.socket(fileno=fds[0])
            threading.Thread(target=self._run, args=(channel, thread, frame.req_id, timeout_ms, sock),
                             daemon=True).start()

    def _report(self, channel: socket.socket, req_id: int, *, status: int = 0, flags: int = 0) -> None:
        try:
            channel.send(pack_frame(MsgType.CHILD_EXIT, req_id, CHILD_EXIT.pack(4242, status, flags, 7, 0, 0)))
        except OSError:
            pass  # the front end ended first (the test is over)

    def _run(self, channel: socket.socket, thread: int, req_id: int, timeout_ms: int, sock: socket.socket) -> None:
        with sock:
            request = read_request(sock, req_id, timeout_ms)
            with self._lock:
                self.requests.append(request)
            self._answer(channel, thread, sock, request)

    def _answer(self, channel: socket.socket, thread: int, sock: socket.socket, request: Request) -> None:
        """What the sandbox does, by the request's path."""
        req_id, timeout_ms, path = request.req_id, request.timeout_ms, request.path
        if path == "/hang" and self.hangs:
            return  # holds the request until the host's channel ends
        if path == "/sleep":
            self._cancel_events[req_id].wait(10)
            sock.close()
            self._report(channel, req_id, status=signal.SIGKILL, flags=EXIT_CANCELLED)
            return
        if path in ("/eagain", "/enomem"):
            sock.close()
            code = errno.EAGAIN if path == "/eagain" else errno.ENOMEM
            channel.send(pack_frame(MsgType.REQUEST_FAILED, req_id, REQUEST_FAILED.pack(code, 0)))
            return
        ends = {"/cpu": (signal.SIGKILL, EXIT_CPU_EXCEEDED), "/oom": (signal.SIGKILL, EXIT_OUT_OF_MEMORY),
                "/crash": (signal.SIGSEGV, 0), "/timed-out": (signal.SIGKILL, EXIT_TIMED_OUT),
                "/killed": (signal.SIGKILL, 0), "/killed-once": (signal.SIGKILL, 0)}
        if path == "/killed-once":
            with self._lock:
                first = req_id not in self.killed
                self.killed.add(req_id)
            if not first:
                path = "/ok"
        if path in ends:
            sock.close()
            self._report(channel, req_id, status=ends[path][0], flags=ends[path][1])
            return
        if path == "/silent":
            return  # the sandbox's channel ends, no report comes
        if path == "/slow":
            time.sleep(0.5)
        headers: list[tuple[bytes, bytes]] = [(b"Content-Type", b"application/json")]
        if path == "/invalid":
            headers = [(b"Bad Name", b"x")]
        if path == "/big":
            body = os.urandom(int(request.query))
            headers = [(b"X-Sha", hashlib.sha256(body).hexdigest().encode())]
        elif path == "/echo-body":
            body = request.body
        else:
            body = json.dumps({"host": self.host_id, "thread": thread, "method": request.method,
                               "path": request.path, "query": request.query, "client": request.client,
                               "body": len(request.body), "timeout_ms": timeout_ms}).encode()
        for packet in response_packets(req_id, 200, headers, body):
            sock.sendall(packet)
        self._report(channel, req_id)


@dataclass
class Front(control.Front):
    hosts: list[FakeHost] = field(default_factory=list)

    def ask(self, path: str, *, method: str = "GET", body: bytes | None = None, host: str = "app.example",
            timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers={"Host": host})
            answer = conn.getresponse()
            data = answer.read()
            assert answer.getheader("X-Request-Id"), answer.headers
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, data
        finally:
            conn.close()

    def routes(self, *, timeout_ms: int = 3000, max_response: int = 2 * MIB, access_log: bool = False,
               names: tuple[str, ...] = ("app",), queue: int = 256) -> None:
        tenants = [TenantRoute(name, (f"{name}.example",), False,
                               RouteLimits(max_body=2 * MIB, max_response=max_response, request_timeout_ms=timeout_ms,
                                           concurrency=4, queue=queue, request_cpu_ms=250), slot=i)
                   for i, name in enumerate(names)]
        asyncio.run(self.link.send_routes(tenants, access_log=access_log))

    def state(self, name: str, state: int, reason: str = "") -> None:
        self.link.tenant_state(name, state, reason)

    def host(self, host_id: int, *, tenant: str = "app", hangs: bool = False, threads: int = THREADS) -> FakeHost:
        fake = FakeHost(tenant, host_id, hangs=hangs)
        fake.attach(self.link, tenant, threads)
        self.hosts.append(fake)
        return fake

    def drained(self, count: int) -> set[tuple[int, int]]:
        async def go() -> set[tuple[int, int]]:
            seen: list[HostDrained] = []
            async with asyncio.timeout(5):
                while len(seen) < count:
                    seen.append(await self.link.host_drained())
            return {(d.host_id, d.thread) for d in seen}

        return asyncio.run(go())


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("front-hosts"), REPO / "csrc" / "front" / "main.c")


def start_front(binary: Path, tmp: Path, *options: str) -> Front:
    return Front(*spawn(binary, tmp, "--max-body", str(2 * MIB), *options))


def stop_front(front: Front) -> None:
    try:
        end(front.proc, front.link, front.stderr)
    finally:
        for fake in front.hosts:
            fake.close()


@pytest.fixture
def front(binary: Path, tmp_path: Path) -> Iterator[Front]:
    running = start_front(binary, tmp_path)
    yield running
    stop_front(running)


def test_a_request_runs_on_the_attached_host(front: Front) -> None:
    front.routes()
    fake = front.host(1)
    status, headers, body = front.ask("/ok?a=1", method="POST", body=b"xyz")
    assert status == 200 and headers["content-type"] == "application/json"
    seen = json.loads(body)
    assert seen | {"thread": 0} == {"host": 1, "thread": 0, "method": "POST", "path": "/ok", "query": "a=1",
                                    "client": "127.0.0.1", "body": 3, "timeout_ms": seen["timeout_ms"]}
    assert 2000 < seen["timeout_ms"] <= 3000  # what is left of the request's time
    (request,) = fake.requests
    assert ("Host", "app.example") in request.headers and request.body == b"xyz"


def test_each_thread_has_its_own_channel(front: Front) -> None:
    front.routes()
    front.host(1)
    threads: set[int] = set()
    deadline = time.monotonic() + 10
    while threads != {0, 1} and time.monotonic() < deadline:
        socks = [socket.create_connection(("127.0.0.1", front.port)) for _ in range(8)]
        for sock in socks:
            sock.sendall(b"GET /ok HTTP/1.1\r\nHost: app.example\r\nConnection: close\r\n\r\n")
        for sock in socks:
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            sock.close()
            threads.add(json.loads(data.split(b"\r\n\r\n", 1)[1])["thread"])
    assert threads == {0, 1}


def test_the_newest_host_serves_and_a_detached_one_drains(front: Front) -> None:
    front.routes()
    front.host(1)
    front.host(2)
    assert json.loads(front.ask("/ok")[2])["host"] == 2
    front.link.detach_host(2)
    assert front.drained(THREADS) == {(2, 0), (2, 1)}
    assert json.loads(front.ask("/ok")[2])["host"] == 1


def test_a_detached_host_drains_once_its_requests_end(front: Front) -> None:
    front.routes(timeout_ms=1000)
    fake = front.host(1)
    answers: list[int] = []
    asking = threading.Thread(target=lambda: answers.append(front.ask("/sleep")[0]))
    asking.start()
    while not fake.requests:
        time.sleep(0.01)
    front.link.detach_host(1)
    drained = front.drained(THREADS)  # the idle thread's at once, the other after the 504 and its report
    asking.join()
    assert answers == [504] and drained == {(1, 0), (1, 1)}


def test_a_starting_tenant_waits_for_its_host(front: Front) -> None:
    front.routes(timeout_ms=5000)
    answers: list[int] = []
    asking = threading.Thread(target=lambda: answers.append(front.ask("/ok")[0]))
    asking.start()
    time.sleep(0.3)
    assert not answers
    front.host(1)
    asking.join()
    assert answers == [200]


def test_without_a_host_by_the_deadline_503(front: Front) -> None:
    front.routes(timeout_ms=300)
    status, headers, body = front.ask("/ok")
    assert (status, headers["retry-after"]) == (503, "1")
    assert body == b"503 Service Unavailable: the tenant's program is not running\n"


def test_while_a_host_starts_as_many_wait_as_it_would_take(front: Front) -> None:
    front.routes(timeout_ms=5000, queue=2)  # concurrency 4: six wait, the seventh is refused
    answers: list[int] = []
    asking = [threading.Thread(target=lambda: answers.append(front.ask("/ok")[0])) for _ in range(6)]
    for thread in asking:
        thread.start()
    time.sleep(0.3)
    assert not answers
    started = time.monotonic()
    status, headers, body = front.ask("/ok")
    assert (status, headers["retry-after"]) == (503, "1") and time.monotonic() - started < 1
    assert body == b"503 Service Unavailable: the tenant is at its concurrency limit and its queue is full\n"
    front.host(1)
    for thread in asking:
        thread.join(5)
    assert answers == [200] * 6
    assert front.ask("/ok")[0] == 200  # none is counted as waiting any more


def test_a_get_whose_sandbox_was_killed_runs_once_more(front: Front) -> None:
    front.routes()
    fake = front.host(1)
    status, _, body = front.ask("/killed-once")
    assert status == 200 and json.loads(body)["path"] == "/killed-once"
    # Killed twice: a 502, not a third run.
    assert front.ask("/killed")[::2] == (502, b"502 Bad Gateway: the program ended without answering\n")
    assert [r.path for r in fake.requests] == ["/killed-once"] * 2 + ["/killed"] * 2
    assert front.stderr.read_text().count("the sandbox was killed under the request; retrying once") == 2


def test_a_post_whose_sandbox_was_killed_is_a_502(front: Front) -> None:
    front.routes()
    fake = front.host(1)
    answer = front.ask("/killed-once", method="POST", body=b"x")
    assert answer[::2] == (502, b"502 Bad Gateway: the program ended without answering\n")
    assert len(fake.requests) == 1


def test_a_down_tenant_gets_503_at_once(front: Front) -> None:
    front.routes(timeout_ms=10000)
    answers: list[int] = []
    asking = threading.Thread(target=lambda: answers.append(front.ask("/ok")[0]))
    asking.start()
    time.sleep(0.2)
    front.state("app", front_protocol.TENANT_DOWN, "its program failed to load")
    asking.join(2)
    assert answers == [503]
    started = time.monotonic()
    assert front.ask("/ok")[0] == 503 and time.monotonic() - started < 1
    assert front.stderr.read_text().count("its program failed to load") == 1  # once, not per request
    front.host(1)  # attaching serves again
    assert front.ask("/ok")[0] == 200


@pytest.mark.parametrize(("path", "status", "text"), [
    ("/eagain", 503, "503 Service Unavailable: the tenant is at its concurrency limit and its queue is full\n"),
    ("/enomem", 503, "503 Service Unavailable: the tenant's program is not running\n"),
    ("/cpu", 504, "504 Gateway Timeout: the program used more than its 250 ms of CPU\n"),
    ("/oom", 502, "502 Bad Gateway: the program ran out of memory\n"),
    ("/crash", 502, "502 Bad Gateway: the program ended without answering\n"),
    ("/silent", 502, "502 Bad Gateway: the program ended without answering\n"),
    ("/timed-out", 504, "504 Gateway Timeout: the program did not answer within 3000 ms\n"),
    ("/invalid", 502, "502 Bad Gateway: the program sent an invalid response\n"),
])
def test_how_a_sandbox_ends_decides_the_status(front: Front, path: str, status: int, text: str) -> None:
    front.routes()
    front.host(1)
    answer = front.ask(path)
    assert (answer[0], answer[2].decode()) == (status, text)
    if status == 503:
        assert answer[1]["retry-after"] == "1"


def test_the_request_timeout_answers_504_and_cancels(front: Front) -> None:
    front.routes(timeout_ms=400)
    fake = front.host(1)
    started = time.monotonic()
    status, headers, body = front.ask("/sleep")
    assert (status, body) == (504, b"504 Gateway Timeout: the program did not answer within 400 ms\n")
    assert 0.35 < time.monotonic() - started < 2
    deadline = time.monotonic() + 2
    while int(headers["x-request-id"]) not in fake.cancelled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert int(headers["x-request-id"]) in fake.cancelled


def test_a_response_over_max_response_is_a_502(front: Front) -> None:
    front.routes(max_response=1000)
    front.host(1)
    assert front.ask("/big?1000")[0] == 200
    assert front.ask("/big?1001")[:3:2] == (502, b"502 Bad Gateway: the program sent an invalid response\n")


def test_large_bodies_both_ways(front: Front) -> None:
    front.routes()
    fake = front.host(1)
    body = os.urandom(MIB)
    status, _, echoed = front.ask("/echo-body", method="POST", body=body)
    assert status == 200 and echoed == body
    assert fake.requests[-1].body == body
    status, headers, big = front.ask(f"/big?{MIB}")
    assert status == 200 and len(big) == MIB and hashlib.sha256(big).hexdigest() == headers["x-sha"]


def test_a_get_is_retried_on_the_next_host_when_its_host_dies(front: Front) -> None:
    front.routes(timeout_ms=5000)
    dying = front.host(1, hangs=True)
    answers: list[tuple[int, bytes]] = []
    asking = threading.Thread(target=lambda: answers.append(front.ask("/hang")[::2]))
    asking.start()
    while not dying.requests:
        time.sleep(0.01)
    dying.close()
    time.sleep(0.2)
    front.host(2)
    asking.join()
    assert answers[0][0] == 200 and json.loads(answers[0][1])["host"] == 2


def test_a_post_is_not_retried(front: Front) -> None:
    front.routes(timeout_ms=5000)
    dying = front.host(1, hangs=True)
    front.host(2, hangs=True)  # the newest: it gets the request
    answers: list[tuple[int, bytes]] = []
    asking = threading.Thread(target=lambda: answers.append(front.ask("/hang", method="POST", body=b"x")[::2]))
    asking.start()
    while not front.hosts[1].requests:
        time.sleep(0.01)
    front.hosts[1].close()
    asking.join()
    assert answers == [(502, b"502 Bad Gateway: the program ended without answering\n")]
    assert not dying.requests


@pytest.mark.parametrize("log_format", ["logfmt", "json"])
def test_access_log_lines(binary: Path, tmp_path: Path, log_format: str) -> None:
    front = start_front(binary, tmp_path, "--log-format", log_format)
    try:
        front.routes(access_log=True)
        front.host(1)
        _, headers, _ = front.ask("/ok?q=\"x\"")
        assert front.ask("/", host="nobody.example")[0] == 404
        time.sleep(0.1)
        lines = [line for line in front.stderr.read_text().splitlines() if "mayflyd.access" in line]
        assert len(lines) == 2, lines
        req = headers["x-request-id"]
        if log_format == "json":
            first, second = (json.loads(line) for line in lines)
            assert {k: first[k] for k in ("level", "logger", "tenant", "req", "msg")} == {
                "level": "info", "logger": "mayflyd.access", "tenant": "app", "req": int(req),
                "msg": 'GET /ok?q="x" 200'}
            assert isinstance(first["ms"], float) and first["ts"].endswith("Z")
            assert "tenant" not in second and second["msg"] == "GET / 404"
        else:
            first, second = lines
            assert first.startswith("ts=") and first.split(" ", 1)[1].startswith(
                f"level=info logger=mayflyd.access tenant=app req={req} ms=")
            assert first.endswith(' msg="GET /ok?q=\\"x\\" 200"')
            assert "tenant=" not in second and second.endswith(' msg="GET / 404"')
    finally:
        stop_front(front)


def test_without_the_flag_no_access_log(front: Front) -> None:
    front.routes()
    front.host(1)
    assert front.ask("/ok")[0] == 200
    assert "mayflyd.access" not in front.stderr.read_text()


def test_a_head_that_does_not_fit_one_frame_is_a_431(front: Front) -> None:
    front.routes()
    fake = front.host(1)
    # Under the front end's own head limit, over one REQ_HEAD frame with the entries' lengths.
    headers = "".join(f"X-H{i:03d}: {'v' * 321}\r\n" for i in range(200))
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(f"GET /ok HTTP/1.1\r\nHost: app.example\r\n{headers}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):  # then the front end closes
            data += chunk
    assert data.startswith(b"HTTP/1.1 431 ") and b"Connection: close" in data
    assert data.endswith(b"\r\n\r\n431 Request Header Fields Too Large\n")
    assert not fake.requests


def test_a_bad_host_message_is_logged_and_dropped(front: Front) -> None:
    front.routes()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        front.link.attach_host(9, THREADS, "app", theirs.fileno(), ENGINE_FORK)  # no such thread
        theirs.close()
        ours.settimeout(5)
        assert ours.recv(64) == b""  # the front end closed the fd it got
    front.state("app", 7)  # no such state
    front.routes()  # the channel still works, in order
    assert "HOST_ATTACH" in front.stderr.read_text() and "TENANT_STATE" in front.stderr.read_text()
    front.host(1)
    assert front.ask("/ok")[0] == 200


def test_sigterm_finishes_the_requests_in_flight_and_closes_idle_connections(front: Front) -> None:
    front.routes()
    front.host(1)
    idle = socket.create_connection(("127.0.0.1", front.port), timeout=5)
    idle.sendall(b"GET /ok HTTP/1.1\r\nHost: app.example\r\n\r\n")
    assert idle.recv(65536).startswith(b"HTTP/1.1 200")  # kept alive, then idle
    slow: list[tuple[int, dict[str, str], bytes]] = []
    asking = threading.Thread(target=lambda: slow.append(front.ask("/slow")))
    asking.start()
    deadline = time.monotonic() + 5
    while not any(r.path == "/slow" for r in front.hosts[0].requests) and time.monotonic() < deadline:
        time.sleep(0.01)
    half = socket.create_connection(("127.0.0.1", front.port), timeout=5)
    half.sendall(b"GET /ok HTTP/1.1\r\nHost: app.exa")  # a head that would take header_timeout_ms
    time.sleep(0.2)
    front.proc.send_signal(signal.SIGTERM)
    assert idle.recv(65536) == b""  # closed at once: nothing was in progress on it
    assert half.recv(65536) == b""  # nor on this one: no request was handed on yet
    idle.close()
    half.close()
    asking.join(5)
    assert slow and slow[0][0] == 200  # answered before the front end ended
    assert front.proc.wait(5) == 0
    log = front.stderr.read_text()
    assert "finishing the requests in flight" in log and "every connection is closed" in log
