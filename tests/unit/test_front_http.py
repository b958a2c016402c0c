"""The C front end's HTTP core (csrc/front/), driven over real TCP.

The session builds a test binary once: csrc/front (without main.c) with the
test-only echo backend of tests/front/echo_backend.c, which answers each
request as JSON of what it received and has knobs, chosen by path, for the
answer paths. Requests are raw bytes on sockets (malformed ones need that)
or http.client.
"""
from __future__ import annotations

import gzip
import http.client
import json
import os
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.http_answers import Answer, Reader

REPO = Path(__file__).resolve().parents[2]
LLHTTP = Path("/usr/share/llhttp")
LLHTTP_INCLUDE = Path("/usr/share/include/llhttp")

pytestmark = pytest.mark.skipif(not (LLHTTP / "llhttp.c").exists(),
                                reason="llhttp's C sources are missing: apt-get install node-llhttp")

# MAYFLYD_FRONT_TEST_CFLAGS adds flags to the test build: -fsanitize=address,undefined for one.
EXTRA = shlex.split(os.environ.get("MAYFLYD_FRONT_TEST_CFLAGS", ""))
CFLAGS = ["-std=gnu11", "-O1", "-g", "-DLLHTTP_STRICT_MODE=1", f"-I{REPO / 'csrc'}", f"-I{LLHTTP_INCLUDE}", *EXTRA]


def _build(out: Path, main: Path) -> Path:
    sources = [p for p in sorted((REPO / "csrc" / "front").glob("*.c")) if p.name != "main.c"]
    objects = []
    shared = [REPO / name for name in ("csrc/base/log.c", "csrc/base/wait_status.c", "csrc/wire/proto.c")]
    for src in [*sources, *shared, main]:
        obj = out / f"{src.stem}.o"
        subprocess.run(["gcc", *CFLAGS, "-Wall", "-Wextra", "-Werror", "-c", str(src), "-o", str(obj)], check=True)
        objects.append(obj)
    for src in sorted(LLHTTP.glob("*.c")):
        obj = out / f"llhttp_{src.stem}.o"
        subprocess.run(["gcc", *CFLAGS, "-Wno-unused-parameter", "-c", str(src), "-o", str(obj)], check=True)
        objects.append(obj)
    binary = out / main.stem
    subprocess.run(["gcc", *EXTRA, "-o", str(binary), *map(str, objects), "-lpthread"], check=True)
    return binary


def c_printed(tmp: Path, header: str, statements: list[str]) -> dict[str, str]:
    """Compiles statements (printf "key value" lines) against a header; what they print, by key."""
    source = tmp / "layout.c"
    source.write_text(f'#include <stddef.h>\n#include <stdio.h>\n#include "{header}"\n'
                      "int main(void)\n{\n" + "\n".join(statements) + "\nreturn 0;\n}\n")
    subprocess.run(["gcc", *CFLAGS, "-Wall", "-Wextra", "-Werror", str(source), "-o", str(tmp / "layout")],
                   check=True)
    printed = subprocess.run([str(tmp / "layout")], check=True, capture_output=True, text=True).stdout
    return {key: value for key, _, value in (line.partition(" ") for line in printed.splitlines())}


@pytest.fixture(scope="session")
def echo_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("front-echo"), REPO / "tests" / "front" / "echo_backend.c")


@pytest.fixture(scope="session")
def production_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("front-main"), REPO / "csrc" / "front" / "main.c")


@dataclass
class Front:
    proc: subprocess.Popen[bytes]
    port: int
    stderr: Path

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def client(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)


def start(binary: Path, tmp: Path, *options: str) -> Front:
    err = tmp / "front.stderr"
    # With sanitizers: what the loops hold at exit is not a leak (the process ends with them).
    env = {**os.environ, "ASAN_OPTIONS": "detect_leaks=0"}
    # --allow-root: the tests run as root; test_front_walls runs it confined.
    proc = subprocess.Popen([str(binary), "--listen", "127.0.0.1:0", "--threads", "2", "--allow-root", *options],
                            stdout=subprocess.PIPE, stderr=err.open("wb"), env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "listening on 127.0.0.1 port" in line, err.read_text()
    return Front(proc, int(line.split(" port ")[1].split()[0]), err)


def stop(front: Front) -> None:
    front.proc.terminate()
    assert front.proc.wait(5) == 0, front.stderr.read_text()


@pytest.fixture(scope="module")
def front(echo_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Front]:
    running = start(echo_binary, tmp_path_factory.mktemp("front"), "--max-body", "100000")
    yield running
    stop(running)


@pytest.fixture
def short_timeouts(echo_binary: Path, tmp_path: Path) -> Iterator[Front]:
    running = start(echo_binary, tmp_path, "--header-timeout-ms", "400", "--body-timeout-ms", "400",
                    "--idle-timeout-ms", "400")
    yield running
    stop(running)


def ask(front: Front, raw: bytes) -> tuple[Answer, Reader]:
    sock = front.connect()
    sock.sendall(raw)
    reader = Reader(sock)
    return reader.answer(), reader


def get(path: str, *headers: str, method: str = "GET") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test.example", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# ---- requests that pass -----------------------------------------------------

def test_a_request_reaches_the_backend_as_sent(front: Front) -> None:
    conn = front.client()
    body = gzip.compress(b"hello " * 100)
    conn.request("POST", "/some/path%20x?a=1&b=%41", body=body,
                 headers={"Host": "Tenant.Example:8080", "Content-Encoding": "gzip", "X-Multi": "1"})
    response = conn.getresponse()
    assert response.status == 200
    seen = json.loads(response.read())
    assert seen["method"] == "POST" and seen["path"] == "/some/path%20x" and seen["query"] == "a=1&b=%41"
    assert seen["host"] == "tenant.example"
    assert ["Content-Encoding", "gzip"] in seen["headers"] and ["X-Multi", "1"] in seen["headers"]
    # never decompressed: the very bytes sent
    assert seen["body_length"] == len(body) and seen["body"].encode("latin-1") == body
    assert response.getheader("X-Request-Id") == str(seen["id"])


def test_keep_alive_serves_many_requests_on_one_connection(front: Front) -> None:
    conn = front.client()
    ids = []
    for i in range(5):
        conn.request("GET", f"/n{i}")
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["path"] == f"/n{i}"
        ids.append(int(response.getheader("X-Request-Id") or 0))
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert conn.sock is not None  # still the first connection: http.client reconnects silently otherwise


def test_pipelined_answers_leave_in_request_order(front: Front) -> None:
    sock = front.connect()
    sock.sendall(get("/delay/400/first") + get("/second") + get("/delay/100/third") + get("/fourth"))
    reader = Reader(sock)
    paths = [reader.answer().json()["path"] for _ in range(4)]
    assert paths == ["/delay/400/first", "/second", "/delay/100/third", "/fourth"]


def test_more_pipelined_requests_than_the_queue_holds(front: Front) -> None:
    sock = front.connect()
    sock.sendall(b"".join(get(f"/delay/{5 * (i % 3)}/{i}") for i in range(40)))  # the queue holds 16
    reader = Reader(sock)
    assert [reader.answer().json()["path"] for _ in range(40)] == [f"/delay/{5 * (i % 3)}/{i}" for i in range(40)]


def test_a_request_sent_byte_by_byte(front: Front) -> None:
    sock = front.connect()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for byte in get("/slow?q=1", "X-Long: " + "v" * 50, "Content-Length: 4") + b"body":
        sock.send(bytes([byte]))
        time.sleep(0.001)
    answer = Reader(sock).answer()
    assert answer.status == 200 and answer.json()["body"] == "body" and ["X-Long", "v" * 50] in answer.json()["headers"]


def test_obs_fold_split_across_reads_is_refused(front: Front) -> None:
    sock = front.connect()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n")
    time.sleep(0.1)
    sock.sendall(b" b\r\n\r\n")
    assert Reader(sock).answer().status == 400


def test_many_clients_at_once(front: Front) -> None:
    socks = [front.connect() for _ in range(100)]
    for i, sock in enumerate(socks):
        sock.sendall(get(f"/delay/50/{i}"))
    assert [Reader(sock).answer().json()["path"] for sock in socks] == [f"/delay/50/{i}" for i in range(100)]


@pytest.mark.parametrize("coding", ["chunked", "Chunked", " chunked ", ", chunked"])
def test_chunked_request_body(front: Front, coding: str) -> None:
    raw = get("/c", f"Transfer-Encoding:{coding}")[:-2] + b"\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"
    answer, _ = ask(front, raw)
    assert answer.status == 200
    assert answer.json()["body"] == "hello world"


def test_expect_100_continue(front: Front) -> None:
    sock = front.connect()
    sock.sendall(get("/e", "Content-Length: 5", "Expect: 100-continue"))
    reader = Reader(sock)
    assert reader.answer().status == 100
    sock.sendall(b"12345")
    answer = reader.answer()
    assert answer.status == 200 and answer.json()["body"] == "12345"


def test_expect_100_continue_of_an_http10_client_is_ignored(front: Front) -> None:
    sock = front.connect()
    sock.sendall(b"POST /e HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
    time.sleep(0.2)
    sock.sendall(b"12345")
    answer = Reader(sock).answer()
    assert answer.status == 200 and answer.json()["body"] == "12345"


@pytest.mark.parametrize("headers, status", [
    (("Content-Length: 5", "Expect: something-else"), 417),
    (("Content-Length: 100001", "Expect: 100-continue"), 413),
])
def test_expect_refused_without_100(front: Front, headers: tuple[str, ...], status: int) -> None:
    answer, reader = ask(front, get("/e", *headers))
    assert answer.status == status and answer.header("Connection") == "close"
    assert reader.closed()


@pytest.mark.parametrize("body", [b"", b"12345"])
def test_upgrade_is_ignored_and_the_next_request_served(front: Front, body: bytes) -> None:
    sock = front.connect()
    length = [f"Content-Length: {len(body)}"] if body else []
    sock.sendall(get("/up", "Connection: Upgrade", "Upgrade: websocket", *length) + body + get("/after"))
    reader = Reader(sock)
    first, second = reader.answer(), reader.answer()
    assert (first.status, first.json()["path"], first.json()["body"]) == (200, "/up", body.decode())
    assert (second.status, second.json()["path"]) == (200, "/after")


def test_head_gets_no_body(front: Front) -> None:
    sock = front.connect()
    sock.sendall(get("/h", method="HEAD") + get("/after"))
    reader = Reader(sock)
    head = reader.answer(head_only=True)
    assert head.status == 200 and int(head.header("Content-Length") or 0) > 0
    assert reader.answer().json()["path"] == "/after"  # no body bytes came between


def test_http10_keep_alive_is_said(front: Front) -> None:
    sock = front.connect()
    sock.sendall(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    reader = Reader(sock)
    answer = reader.answer()
    assert answer.header("Connection") == "keep-alive" and answer.json()["host"] == ""
    sock.sendall(b"GET /b HTTP/1.0\r\n\r\n")
    assert reader.answer().header("Connection") == "close"
    assert reader.closed()


def test_connection_close_closes_after_the_answer(front: Front) -> None:
    answer, reader = ask(front, get("/bye", "Connection: close") + get("/ignored"))
    assert answer.status == 200 and answer.header("Connection") == "close"
    assert reader.closed()


@pytest.mark.parametrize("host, normal", [
    ("Example.COM", "example.com"), ("example.com:8080", "example.com"), ("example.com.", "example.com"),
    ("127.0.0.1:80", "127.0.0.1"), ("[::1]:8080", "[::1]"), ("a_b-c.x", "a_b-c.x"),
    ("example.com \t ", "example.com"),
])
def test_host_is_lowercase_ascii_without_port(front: Front, host: str, normal: str) -> None:
    answer, _ = ask(front, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert answer.status == 200 and answer.json()["host"] == normal


def test_trailing_whitespace_is_no_part_of_a_value(front: Front) -> None:
    sock = front.connect()
    sock.sendall(get("/e", "X-T: v \t", "Content-Length: 2", "Expect: 100-continue  "))
    reader = Reader(sock)
    assert reader.answer().status == 100
    sock.sendall(b"hi")
    assert ["X-T", "v"] in reader.answer().json()["headers"]


@pytest.mark.parametrize("target, host, path, query", [
    ("http://Target.Example:8080/p%20q?a=1", "target.example", "/p%20q", "a=1"),
    ("HTTPS://target.example", "target.example", "/", ""),
    ("http://target.example?a=1", "target.example", "/", "a=1"),
    ("http://[::1]/x", "[::1]", "/x", ""),
])
def test_an_absolute_form_target_names_the_host(front: Front, target: str, host: str, path: str, query: str) -> None:
    # RFC 9112 3.2.2: accepted, and its authority wins over the Host field.
    answer, _ = ask(front, f"GET {target} HTTP/1.1\r\nHost: other.example\r\n\r\n".encode())
    assert answer.status == 200
    seen = answer.json()
    assert (seen["host"], seen["path"], seen["query"]) == (host, path, query)


def test_options_asterisk(front: Front) -> None:
    answer, _ = ask(front, get("*", method="OPTIONS"))
    assert answer.status == 200 and answer.json()["path"] == "*"


def test_a_client_that_leaves_before_its_answer(front: Front) -> None:
    for _ in range(5):
        sock = front.connect()
        sock.sendall(get("/delay/100/gone") + get("/queued"))
        sock.close()
    time.sleep(0.3)  # the answers come for nobody: the front end frees them
    assert ask(front, get("/still-serving"))[0].status == 200


# ---- requests refused -------------------------------------------------------

def _raw(head: str, body: bytes = b"") -> bytes:
    return head.replace("\n", "\r\n").encode("latin-1") + body


MALFORMED = {
    "content-length and transfer-encoding": _raw(
        "POST / HTTP/1.1\nHost: x\nContent-Length: 5\nTransfer-Encoding: chunked\n\n", b"0\r\n\r\n"),
    "differing content-lengths": _raw("POST / HTTP/1.1\nHost: x\nContent-Length: 5\nContent-Length: 6\n\n",
                                      b"123456"),
    "invalid chunk size": _raw("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n\n", b"zz\r\nhi\r\n0\r\n\r\n"),
    "transfer-encoding on HTTP/1.0": _raw("POST / HTTP/1.0\nTransfer-Encoding: chunked\n\n", b"2\r\nhi\r\n0\r\n\r\n"),
    "chunked not the last coding": _raw("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked, gzip\n\n",
                                        b"2\r\nhi\r\n0\r\n\r\n"),
    "chunked in two fields": _raw("POST / HTTP/1.1\nHost: x\nTransfer-Encoding: chunked\n"
                                  "Transfer-Encoding: chunked\n\n", b"2\r\nhi\r\n0\r\n\r\n"),
    "bare CR": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n",
    "bare CR ending a line": b"GET / HTTP/1.1\r\nHost: x\rX-A: b\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "control byte in a value": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\nHost : x\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "host with NBSP": b"GET / HTTP/1.1\r\nHost: example.com\xc2\xa0\r\n\r\n",
    "host with KELVIN SIGN": b"GET / HTTP/1.1\r\nHost: \xe2\x84\xaaexample.com\r\n\r\n",
    "host with a space": b"GET / HTTP/1.1\r\nHost: exa mple.com\r\n\r\n",
    "host with an empty label": b"GET / HTTP/1.1\r\nHost: example..com\r\n\r\n",
    "host with a bad port": b"GET / HTTP/1.1\r\nHost: example.com:80x\r\n\r\n",
    "host with a slash": b"GET / HTTP/1.1\r\nHost: example.com/a\r\n\r\n",
    "empty host": b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
    "absolute-form target of another scheme": b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-form target with userinfo": b"GET http://u@x/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-form target with a bad host": b"GET http://x..y/ HTTP/1.1\r\nHost: x\r\n\r\n",
    "absolute-form target and a bad Host": b"GET http://x/ HTTP/1.1\r\nHost: a b\r\n\r\n",
    "absolute-form target without Host": b"GET http://x/ HTTP/1.1\r\n\r\n",
    "relative target": b"GET a/b HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad version": b"GET / HTTP/7.1\r\nHost: x\r\n\r\n",
    "bad method": b"G@T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "no request line": b"\r\nHost: x\r\n\r\n",
    "junk": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
}


@pytest.mark.parametrize("raw", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_requests_get_400_and_a_close(front: Front, raw: bytes) -> None:
    answer, reader = ask(front, raw)
    assert answer.status == 400
    assert answer.header("X-Request-Id") is not None and answer.header("Connection") == "close"
    assert reader.closed()


def test_a_refusal_waits_for_the_earlier_answers(front: Front) -> None:
    sock = front.connect()
    sock.sendall(get("/delay/200/first") + b"GET / HTTP/1.1\r\nHost : x\r\n\r\n")
    reader = Reader(sock)
    first, second = reader.answer(), reader.answer()
    assert (first.status, second.status) == (200, 400)
    assert int(second.header("X-Request-Id") or 0) > int(first.header("X-Request-Id") or 0)
    assert reader.closed()


@pytest.mark.parametrize("raw, status", [
    (get("/" + "a" * 9000), 414),
    (get("/", "X-Big: " + "b" * (65 * 1024)), 431),
    (get("/", *[f"X-{i}: v" for i in range(300)]), 431),
    (get("/", "Transfer-Encoding: gzip, chunked")[:-2] + b"\r\n2\r\nhi\r\n0\r\n\r\n", 501),
    (get("/", "Transfer-Encoding: gzip", "Transfer-Encoding: chunked")[:-2] + b"\r\n2\r\nhi\r\n0\r\n\r\n", 501),
    (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
    (get("/", "Content-Length: 100001"), 413),
    (get("/", "Transfer-Encoding: chunked")[:-2] + b"\r\n" + b"ffff\r\n" + b"x" * 65535 + b"\r\n" +
     b"ffff\r\n" + b"x" * 65535 + b"\r\n0\r\n\r\n", 413),
])
def test_limits_and_refusals(front: Front, raw: bytes, status: int) -> None:
    sock = front.connect()
    try:
        sock.sendall(raw)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the answer came before we finished sending
    reader = Reader(sock)
    answer = reader.answer()
    assert answer.status == status and answer.header("Connection") == "close"
    assert answer.header("X-Request-Id") is not None
    if status == 405:
        assert answer.header("Allow") is not None
    assert reader.closed()


def test_head_under_the_limits_passes(front: Front) -> None:
    answer, _ = ask(front, get("/" + "a" * 8000, *[f"X-{i}: {'v' * 200}" for i in range(250)]))
    assert answer.status == 200 and len(answer.json()["headers"]) == 251


# ---- answers ----------------------------------------------------------------

def test_hop_by_hop_headers_of_the_program_are_dropped(front: Front) -> None:
    answer, reader = ask(front, get("/hop") + get("/after"))
    assert answer.status == 200 and answer.body == b"hop"
    assert answer.header("X-Kept") == "yes" and answer.header("Content-Length") == "3"
    names = {n.lower() for n, _ in answer.headers}
    assert not names & {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                        "upgrade"}
    assert answer.header("X-Request-Id") != "from-the-program"
    assert reader.answer().json()["path"] == "/after"  # the program's Connection: close did not close


@pytest.mark.parametrize("byte", ["0d", "0a", "00", "01", "1f", "7f"])
def test_control_bytes_in_an_answer_make_it_a_502(front: Front, byte: str) -> None:
    answer, reader = ask(front, get(f"/bad-value/{byte}") + get("/after"))
    assert answer.status == 502 and answer.header("X-Bad") is None
    assert reader.answer().status == 200  # the connection stays usable


def test_htab_in_an_answer_is_kept(front: Front) -> None:
    answer, _ = ask(front, get("/bad-value/09"))
    assert answer.status == 200 and answer.header("X-Bad") == "a\tb"


@pytest.mark.parametrize("path, status", [
    ("/bad-name", 502), ("/status/100", 502), ("/status/103", 502), ("/status/99", 502), ("/status/600", 502),
    ("/status/599", 599), ("/status/404", 404), ("/fail", 502),
])
def test_answer_status(front: Front, path: str, status: int) -> None:
    answer, _ = ask(front, get(path))
    assert answer.status == status and answer.header("X-Request-Id") is not None


def test_204_has_no_body(front: Front) -> None:
    answer, reader = ask(front, get("/status/204") + get("/after"))
    assert answer.status == 204 and answer.header("Content-Length") is None
    assert reader.answer().json()["path"] == "/after"


def test_big_answer(front: Front) -> None:
    conn = front.client()
    conn.request("GET", "/big/5000000")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"x" * 5_000_000


# ---- time -------------------------------------------------------------------

def test_header_timeout_answers_408(short_timeouts: Front) -> None:
    sock = short_timeouts.connect()
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    reader = Reader(sock)
    answer = reader.answer()
    assert answer.status == 408 and answer.header("Connection") == "close"
    assert 0.3 < time.monotonic() - started < 3
    assert reader.closed()


def test_body_timeout_answers_408(short_timeouts: Front) -> None:
    sock = short_timeouts.connect()
    sock.sendall(get("/", "Content-Length: 10") + b"12345")
    reader = Reader(sock)
    assert reader.answer().status == 408
    assert reader.closed()


def test_a_silent_connection_is_closed(short_timeouts: Front) -> None:
    reader = Reader(short_timeouts.connect())
    assert reader.closed(within=3)


def test_idle_keep_alive_connection_is_closed(short_timeouts: Front) -> None:
    answer, reader = ask(short_timeouts, get("/"))
    assert answer.status == 200
    started = time.monotonic()
    assert reader.closed(within=3)
    assert 0.3 < time.monotonic() - started < 3


def test_a_request_in_flight_is_not_idle(short_timeouts: Front) -> None:
    answer, _ = ask(short_timeouts, get("/delay/900/slow"))
    assert answer.status == 200


def test_slow_clients_do_not_block_others(front: Front) -> None:
    slow = [front.connect() for _ in range(20)]
    for sock in slow:
        sock.sendall(b"GET / HTTP/1.1\r\nHo")  # and then nothing
    lazy = front.connect()
    lazy.sendall(get("/big/20000000"))  # and never reads
    started = time.monotonic()
    for _ in range(10):
        answer, _ = ask(front, get("/fresh"))
        assert answer.status == 200
    assert time.monotonic() - started < 2
    for sock in [*slow, lazy]:
        sock.close()


# ---- the production executable ---------------------------------------------

def test_without_a_backend_every_request_gets_503(production_binary: Path, tmp_path: Path) -> None:
    running = start(production_binary, tmp_path)
    try:
        answer, reader = ask(running, get("/") + get("/again"))
        assert answer.status == 503 and answer.header("Retry-After") == "1"
        assert b"no tenant is connected" in answer.body
        assert reader.answer().status == 503
        assert ask(running, b"GET / HTTP/1.1\r\n\r\n")[0].status == 400  # HTTP still checked
    finally:
        stop(running)


def test_bad_options_are_refused(production_binary: Path) -> None:
    done = subprocess.run([str(production_binary), "--threads", "zero"], capture_output=True, timeout=5)
    assert done.returncode == 2 and b"--threads" in done.stderr


def test_the_installed_package_has_the_executable() -> None:
    import mayflyd

    binary = Path(mayflyd.__file__).parent / "bin" / "mayflyd-front"
    assert binary.is_file(), "pip install . builds mayflyd-front (setup.py)"
    done = subprocess.run([str(binary), "--help"], capture_output=True, timeout=5)
    assert done.returncode == 0 and b"--idle-timeout-ms" in done.stdout
    assert b"/bad-value/" not in binary.read_bytes()  # the echo backend is the tests' only
