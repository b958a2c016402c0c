"""The front end's PROXY header and forwarded-list parsing (csrc/front/proxy.c),
as C unit tests: tests/front/proxy_test.c, built with the front end's flags
(MAYFLYD_FRONT_TEST_CFLAGS adds the sanitizers) and run."""
from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mayflyd import front_protocol
from mayflyd.front_protocol import RouteLimits, TenantRoute
from tests.unit.test_front_control import Front, end, spawn
from tests.unit.test_front_http import CFLAGS, REPO, _build, pytestmark  # noqa: F401  (skips without llhttp)


def test_proxy_parsing_in_c(tmp_path: Path) -> None:
    binary = tmp_path / "proxy_test"
    sources = [REPO / "tests" / "front" / "proxy_test.c", REPO / "csrc" / "front" / "proxy.c"]
    subprocess.run(["gcc", *CFLAGS, "-Wall", "-Wextra", "-Werror", *map(str, sources), "-o", str(binary)],
                   check=True)
    result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "all passed"


# ---- the front end itself: its access log names each request's client

PROXY_V2 = b"\r\n\r\n\0\r\nQUIT\n"
REQUEST = b"GET / HTTP/1.1\r\nHost: shop.example\r\n%s\r\n"


def v2_header(source: str, *, command: int = 0x21, tlvs: bytes = b"") -> bytes:
    """A PROXY v2 header: TCP over IPv4 or IPv6 from source, or LOCAL (command 0x20)."""
    ip = ipaddress.ip_address(source)
    if ip.version == 4:
        block = ip.packed + bytes([192, 0, 2, 1]) + struct.pack("!HH", 4711, 80)
        family = 0x11
    else:
        block = ip.packed + ipaddress.IPv6Address("2001:db8::2").packed + struct.pack("!HH", 4711, 80)
        family = 0x21
    body = block + tlvs
    return PROXY_V2 + bytes([command, family]) + struct.pack("!H", len(body)) + body


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("front-proxy"), REPO / "csrc" / "front" / "main.c")


@pytest.fixture
def front(binary: Path, tmp_path: Path) -> Iterator[Front]:
    """The front end with shop DOWN (every request a quick 503), its access
    log on, and 127.0.0.1 a trusted proxy."""
    running = Front(*spawn(binary, tmp_path, "--header-timeout-ms", "300"))
    shop = TenantRoute("shop", ("shop.example",), False, RouteLimits(1000, 1000, 1000, 1))

    async def go() -> None:
        running.link.tenant_state("shop", front_protocol.TENANT_DOWN, "no hosts in this test")
        await running.link.send_routes([shop], access_log=True, trusted_proxies=("127.0.0.1/32",))

    asyncio.run(go())
    yield running
    end(running.proc, running.link, running.stderr)


def connect(front: Front, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", front.port))
    return sock


def answers(sock: socket.socket, count: int) -> list[bytes]:
    """The status lines of count answers (each a short 503, 400 or so)."""
    data = b""
    while data.count(b"HTTP/1.1 ") < count or not data.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return re.findall(rb"HTTP/1\.1 [0-9]{3} [^\r]*", data)


def clients(front: Front) -> list[str]:
    """The client field of every access log line so far."""
    lines = front.stderr.read_text().splitlines()
    return [line.split(" client=")[1].split(" ")[0] for line in lines if "logger=mayflyd.access" in line]


def wait_clients(front: Front, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while len(found := clients(front)) < count and time.monotonic() < deadline:
        time.sleep(0.02)
    return found


def test_a_proxy_header_sent_byte_by_byte_names_every_request_s_client(front: Front) -> None:
    with connect(front) as sock:
        for byte in v2_header("203.0.113.7"):
            sock.sendall(bytes([byte]))
            time.sleep(0.001)
        sock.sendall(REQUEST % b"" + REQUEST % b"")
        assert answers(sock, 2) == [b"HTTP/1.1 503 Service Unavailable"] * 2
    assert wait_clients(front, 2) == ["203.0.113.7", "203.0.113.7"]


@pytest.mark.parametrize(("header", "client"), [
    (v2_header("2001:db8::1", tlvs=b"\x01\x00\x02h2\x04\x00\x00"), "2001:db8::1"),
    (v2_header("203.0.113.7", command=0x20), "127.0.0.1"),  # LOCAL: a health check
    (b"PROXY TCP4 198.51.100.4 192.0.2.1 4711 80\r\n", "198.51.100.4"),
    (b"PROXY UNKNOWN\r\n", "127.0.0.1"),
    (b"", "127.0.0.1"),  # a trusted peer need not send one
])
def test_proxy_headers(front: Front, header: bytes, client: str) -> None:
    with connect(front) as sock:
        sock.sendall(header + REQUEST % b"")
        assert answers(sock, 1) == [b"HTTP/1.1 503 Service Unavailable"]
    assert wait_clients(front, 1) == [client]


@pytest.mark.parametrize("header", [
    v2_header("203.0.113.7")[:12] + b"\x11" + v2_header("203.0.113.7")[13:],  # version 1
    PROXY_V2 + b"\x21\x11\xff\xff",  # over the bound
    b"PROXY TCP4 203.0.113.7 192.0.2.1 4711\r\n",
])
def test_a_malformed_proxy_header_closes_the_connection(front: Front, header: bytes) -> None:
    with connect(front) as sock:
        sock.sendall(header + REQUEST % b"")
        assert sock.recv(100) == b""
    assert "PROXY header from 127.0.0.1 refused" in front.stderr.read_text()
    assert clients(front) == []


def test_a_proxy_header_cut_short_times_out(front: Front) -> None:
    with connect(front) as sock:
        sock.sendall(v2_header("203.0.113.7")[:20])
        assert sock.recv(100) == b""  # --header-timeout-ms 300
    assert "PROXY header from 127.0.0.1 incomplete after 20 bytes and the header timeout" in front.stderr.read_text()
    with connect(front) as sock:
        sock.sendall(v2_header("203.0.113.7")[:13])
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(100) == b""
    assert "incomplete after 13 bytes and the peer's end" in front.stderr.read_text()


def test_an_untrusted_peer_s_proxy_header_is_bad_http(front: Front) -> None:
    for header in (v2_header("203.0.113.7"), b"PROXY TCP4 203.0.113.7 192.0.2.1 4711 80\r\n"):
        with connect(front, "127.0.0.2") as sock:
            sock.sendall(header + REQUEST % b"")
            assert answers(sock, 1) == [b"HTTP/1.1 400 Bad Request"]
    assert wait_clients(front, 2) == ["127.0.0.2", "127.0.0.2"]


@pytest.mark.parametrize(("source", "headers", "client"), [
    ("127.0.0.1", b"X-Forwarded-For: 198.51.100.1, 127.0.0.1\r\n", "198.51.100.1"),
    ("127.0.0.1", b"Forwarded: for=\"[2001:db8::1]:4711\"\r\n", "2001:db8::1"),
    ("127.0.0.1", b"Forwarded: for=192.0.2.60\r\nX-Forwarded-For: 198.51.100.1\r\n", "192.0.2.60"),
    ("127.0.0.1", b"X-Forwarded-For: nonsense\r\n", "127.0.0.1"),
    ("127.0.0.2", b"X-Forwarded-For: 198.51.100.1\r\nForwarded: for=192.0.2.60\r\n", "127.0.0.2"),
])
def test_forwarded_headers(front: Front, source: str, headers: bytes, client: str) -> None:
    with connect(front, source) as sock:
        sock.sendall(REQUEST % headers)
        assert answers(sock, 1) == [b"HTTP/1.1 503 Service Unavailable"]
    assert wait_clients(front, 1) == [client]


def test_a_new_table_changes_who_is_trusted(front: Front) -> None:
    shop = TenantRoute("shop", ("shop.example",), False, RouteLimits(1000, 1000, 1000, 1))
    asyncio.run(front.link.send_routes([shop], access_log=True))
    with connect(front) as sock:
        sock.sendall(REQUEST % b"X-Forwarded-For: 198.51.100.1\r\n")
        assert answers(sock, 1) == [b"HTTP/1.1 503 Service Unavailable"]
    assert wait_clients(front, 1) == ["127.0.0.1"]
