"""The client behind a trusted proxy, through a real daemon: PROXY v2
headers and Forwarded / X-Forwarded-For from 127.0.0.1 (trusted) and from
127.0.0.2 (not: loopback answers all of 127/8), with a program that shows
the request's client and headers; and the key's checks and reload."""
from __future__ import annotations

import http.client
import ipaddress
import json
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mayflyd.cli.admin_client import admin_request
from tests.daemon_harness import Daemon

SHOW = '''
import json


def on_client_request(request):
    return json.dumps({"client": request.client, "headers": [list(pair) for pair in request.headers.raw()]})
'''

TENANTS = [{"name": "p", "hosts": ["p.localhost"], "program": "programs/p.py"}]
SIGNATURE = b"\r\n\r\n\0\r\nQUIT\n"


def v2_header(source: str, *, command: int = 0x21) -> bytes:
    """A PROXY v2 header from HAProxy's send-proxy-v2: TCP over IPv4 (or
    IPv6) from source to 192.0.2.1:80; command 0x20 is LOCAL (a health check)."""
    ip = ipaddress.ip_address(source)
    if ip.version == 4:
        block, family = ip.packed + bytes([192, 0, 2, 1]) + struct.pack("!HH", 4711, 80), 0x11
    else:
        block, family = ip.packed + ipaddress.IPv6Address("2001:db8::2").packed + struct.pack("!HH", 4711, 80), 0x21
    return SIGNATURE + bytes([command, family]) + struct.pack("!H", len(block)) + block


def client(d: Daemon, source: str = "127.0.0.1", preamble: bytes = b"") -> http.client.HTTPConnection:
    """A keep-alive connection from source, preamble sent first."""
    sock = socket.create_connection(("127.0.0.1", d.port), timeout=10, source_address=(source, 0))
    sock.sendall(preamble)
    conn = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)
    conn.sock = sock
    return conn


def seen(conn: http.client.HTTPConnection, **headers: str) -> dict[str, Any]:
    """What the program saw of one request: its client and headers."""
    conn.request("GET", "/", headers={"Host": "p.localhost", **{k.replace("_", "-"): v for k, v in headers.items()}})
    answer = conn.getresponse()
    body = answer.read()
    assert answer.status == 200, body
    shown: dict[str, Any] = json.loads(body)
    return shown


@pytest.fixture(scope="module")
def trusting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = Daemon(tmp_path_factory.mktemp("proxies"), TENANTS, {"p.py": SHOW}, access_log=True,
               trusted_proxies=["127.0.0.1/32"])
    d.start()
    yield d
    assert d.stop() == 0, d.log()[-3000:]


def test_a_proxy_v2_header_names_the_client_of_every_request(trusting: Daemon) -> None:
    conn = client(trusting, preamble=v2_header("203.0.113.7"))
    try:
        assert seen(conn)["client"] == "203.0.113.7"
        assert seen(conn)["client"] == "203.0.113.7"  # the same connection, kept alive
    finally:
        conn.close()
    trusting.wait_for(lambda: trusting.log().count("client=203.0.113.7") == 2, what="two access log lines")


def test_a_health_check_s_local_header_keeps_the_proxy(trusting: Daemon) -> None:
    conn = client(trusting, preamble=v2_header("203.0.113.7", command=0x20))
    try:
        assert seen(conn)["client"] == "127.0.0.1"
    finally:
        conn.close()
    # A TCP check without a header: a connection that closes at once harms nothing.
    socket.create_connection(("127.0.0.1", trusting.port), timeout=5).close()


def test_forwarded_headers_of_a_trusted_proxy(trusting: Daemon) -> None:
    conn = client(trusting)
    try:
        shown = seen(conn, X_Forwarded_For="198.51.100.1, 127.0.0.1")
        assert shown["client"] == "198.51.100.1"
        assert ["X-Forwarded-For", "198.51.100.1, 127.0.0.1"] in shown["headers"]  # passed on as sent
        assert seen(conn, Forwarded='for="[2001:db8::1]:4711"')["client"] == "2001:db8::1"
        assert seen(conn, X_Forwarded_For="unknown")["client"] == "127.0.0.1"
    finally:
        conn.close()


def test_an_untrusted_peer_is_not_believed(trusting: Daemon) -> None:
    conn = client(trusting, source="127.0.0.2")
    try:
        shown = seen(conn, X_Forwarded_For="198.51.100.1", Forwarded="for=192.0.2.60")
        assert shown["client"] == "127.0.0.2"
        assert ["X-Forwarded-For", "198.51.100.1"] in shown["headers"]
        assert ["Forwarded", "for=192.0.2.60"] in shown["headers"]
    finally:
        conn.close()
    conn = client(trusting, source="127.0.0.2", preamble=v2_header("203.0.113.7"))
    try:
        conn.request("GET", "/", headers={"Host": "p.localhost"})
        assert conn.getresponse().status == 400
    finally:
        conn.close()


def test_nothing_is_trusted_until_a_reload_says_so(tmp_path: Path) -> None:
    with Daemon(tmp_path, TENANTS, {"p.py": SHOW}) as d:
        conn = client(d)
        try:
            assert seen(conn, X_Forwarded_For="198.51.100.1")["client"] == "127.0.0.1"
        finally:
            conn.close()
        conn = client(d, preamble=v2_header("203.0.113.7"))
        try:
            conn.request("GET", "/", headers={"Host": "p.localhost"})
            assert conn.getresponse().status == 400
        finally:
            conn.close()
        d.write_config(TENANTS, trusted_proxies=["127.0.0.0/8"])
        code, body = admin_request(d.admin_socket, "POST", "/reload")
        assert code == 200, body
        assert "trusted_proxies changed" not in d.log()  # no restart needed
        conn = client(d, source="127.0.0.2", preamble=v2_header("2001:db8::9"))
        try:
            assert seen(conn, X_Forwarded_For="198.51.100.1")["client"] == "2001:db8::9"
        finally:
            conn.close()
        conn = client(d)
        try:
            assert seen(conn, X_Forwarded_For="198.51.100.1, 127.0.0.5")["client"] == "198.51.100.1"
        finally:
            conn.close()


def test_check_refuses_bad_trusted_proxies(tmp_path: Path) -> None:
    (tmp_path / "p.py").write_text(SHOW)
    config = tmp_path / "mayflyd.yaml"
    config.write_text('trusted_proxies: ["10.0.0.1/8", "nonsense", "::1/129", "192.0.2.7", 5]\n'
                      "tenants:\n  - name: p\n    hosts: [p.localhost]\n    program: p.py\n")
    result = subprocess.run([sys.executable, "-m", "mayflyd", "check", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1
    errors = result.stderr
    assert "trusted_proxies[0]: '10.0.0.1/8' has host bits set past the /8 prefix: write the network" \
           " '10.0.0.0/8' or the single address '10.0.0.1'" in errors, errors
    assert "trusted_proxies[1]: 'nonsense' is not an IPv4 or IPv6 address" in errors, errors
    assert "trusted_proxies[2]: the prefix length of '::1/129' must be a number from 0 to 128" in errors, errors
    assert "trusted_proxies[3]" not in errors and "trusted_proxies[4]: must be a string" in errors, errors
    config.write_text("trusted_proxies: 10.0.0.0/8\ntenants:\n  - name: p\n    hosts: [p.localhost]\n"
                      "    program: p.py\n")
    result = subprocess.run([sys.executable, "-m", "mayflyd", "check", str(config)], capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 1 and "trusted_proxies: must be a list of addresses or networks" in result.stderr
