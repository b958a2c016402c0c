"""mayflyd-front's control channel: routing tables from the supervisor.

The real front end (csrc/front with its main.c, built as test_front_http
builds it) serves a listening socket this test made (--listen-fd) and takes
its tables over a socketpair (--control-fd) from FrontLink, fed by the real
config parser. Then real HTTP requests show how it routes.
"""
from __future__ import annotations

import asyncio
import http.client
import os
import re
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mayflyd import front_protocol
from mayflyd.config import Config, load_config, parse_config
from mayflyd.front_protocol import MSG_ROUTES, RouteLimits, TenantRoute, encode_routes
from mayflyd.protocol import FRAME_HEADER, MAGIC, PROTOCOL_VERSION
from mayflyd.supervisor.front_link import FrontLink, RoutesRefused, routes_of
from tests.unit.test_front_http import REPO, _build, c_printed, pytestmark  # noqa: F401  (skips without llhttp)

# shop: exact and wildcard, a small max_body; blog: "*.example", the default.
CONFIG = """\
tenants:
  - name: shop
    hosts: [shop.example, "*.shop.example"]
    program: prog.py
    limits:
      max_body: 1000
  - name: blog
    hosts: [blog.example, "*.example"]
    program: prog.py
    default: {default}
    limits:
      max_body: 10000
"""
GLOBAL_MAX_BODY = 100000


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("front-control"), REPO / "csrc" / "front" / "main.c")


def config(tmp: Path, *, default: bool) -> Config:
    (tmp / "prog.py").write_text("def app(environ, start_response): pass\n")
    path = tmp / f"mayflyd-{default}.yaml"
    path.write_text(CONFIG.format(default="true" if default else "false"))
    return load_config(path)


@dataclass
class Front:
    proc: subprocess.Popen[bytes]
    port: int
    link: FrontLink
    stderr: Path

    def status(self, host: str, body: bytes = b"") -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("POST", "/", body=body, headers={"Host": host})
            answer = conn.getresponse()
            text = answer.read().decode()
            assert answer.getheader("X-Request-Id"), answer.headers
            if answer.status == 503:
                assert answer.getheader("Retry-After") == "1"
            return answer.status, text
        finally:
            conn.close()


def spawn(binary: Path, tmp: Path, *options: str) -> tuple[subprocess.Popen[bytes], int, FrontLink, Path]:
    """The front end on a listening socket of ours (--listen-fd), with a
    control channel (--control-fd) and 2 threads: its process, port, link, stderr."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    err = tmp / "front.stderr"
    proc = subprocess.Popen(
        [str(binary), "--listen-fd", str(listener.fileno()), "--control-fd", str(theirs.fileno()),
         "--threads", "2", "--allow-root", *options],
        stdout=subprocess.PIPE, stderr=err.open("wb"), pass_fds=(listener.fileno(), theirs.fileno()),
        # With sanitizers: what the loops hold at exit is not a leak (the process ends with them).
        env={**os.environ, "ASAN_OPTIONS": "detect_leaks=0"})
    theirs.close()
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert "listening on an inherited socket port" in line, err.read_text()
    port = listener.getsockname()[1]
    listener.close()  # the front end holds its own copy: the port stays served
    return proc, port, FrontLink(ours), err


def end(proc: subprocess.Popen[bytes], link: FrontLink, err: Path) -> None:
    """Closes the control channel, which ends the front end cleanly."""
    link.close()
    try:
        assert proc.wait(5) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def front(binary: Path, tmp_path: Path) -> Iterator[Front]:
    running = Front(*spawn(binary, tmp_path, "--max-body", str(GLOBAL_MAX_BODY)))
    yield running
    end(running.proc, running.link, running.stderr)


def send(front: Front, cfg: Config) -> int:
    """The table, its tenants said DOWN first (no host comes in these tests:
    a request gets its 503 at once instead of at its request_timeout_ms)."""
    async def go() -> int:
        for tenant in cfg.tenants:
            front.link.tenant_state(tenant.name, front_protocol.TENANT_DOWN, "no hosts in this test")
        return await front.link.send_config(cfg)

    return asyncio.run(go())


def test_before_its_first_table_it_accepts_nothing_then_serves_the_backlog(front: Front, tmp_path: Path) -> None:
    # A restarted front end must not answer the connections waiting in the
    # supervisor's backlog before it knows the tenants.
    early = socket.create_connection(("127.0.0.1", front.port), timeout=5)
    early.sendall(b"GET / HTTP/1.1\r\nHost: nobody.example\r\nConnection: close\r\n\r\n")
    early.settimeout(0.5)
    with pytest.raises(TimeoutError):
        early.recv(100)
    (tmp_path / "p.py").write_text("def on_client_request(request):\n    return 'x'\n")
    send(front, parse_config("tenants:\n  - {name: shop, hosts: [shop.example], program: p.py}\n",
                             source="test", base_dir=tmp_path))
    early.settimeout(5)
    assert early.recv(100).startswith(b"HTTP/1.1 404 ")  # served by the table: no tenant has that host
    early.close()


def test_routes_by_exact_wildcard_and_default_host(front: Front, tmp_path: Path) -> None:
    assert send(front, config(tmp_path, default=True)) == 1
    not_running = (503, "503 Service Unavailable: the tenant's program is not running\n")
    for host in ["shop.example", "a.shop.example", "x.y.shop.example", "blog.example", "other.example",
                 "example", "unknown.test", "SHOP.example:8080"]:
        assert front.status(host) == not_running, host
    # Which tenant answered shows in its max_body: shop 1000, blog 10000.
    assert front.status("a.shop.example", b"x" * 1001)[0] == 413  # the longest wildcard wins
    assert front.status("shop.example", b"x" * 1000)[0] == 503
    assert front.status("other.example", b"x" * 1001)[0] == 503
    assert front.status("other.example", b"x" * 10001)[0] == 413
    assert front.status("unknown.test", b"x" * 10001)[0] == 413  # the default: blog

    assert send(front, config(tmp_path, default=False)) == 2
    assert front.status("unknown.test") == (404, "404 Not Found: no tenant serves this host\n")
    assert front.status("example")[0] == 404  # "*.example" is not example itself
    assert front.status("unknown.test", b"x" * 20000)[0] == 404
    assert front.status("blog.example")[0] == 503


def test_the_global_max_body_stays_the_ceiling(front: Front) -> None:
    big = RouteLimits(max_body=10 * GLOBAL_MAX_BODY, max_response=1 << 20, request_timeout_ms=1000, concurrency=1)
    async def go() -> None:
        front.link.tenant_state("big", front_protocol.TENANT_DOWN)
        await front.link.send_routes([TenantRoute("big", ("big.example",), False, big)])

    asyncio.run(go())
    assert front.status("big.example", b"x" * GLOBAL_MAX_BODY)[0] == 503
    assert front.status("big.example", b"x" * (GLOBAL_MAX_BODY + 1))[0] == 413


def test_a_new_table_swaps_in_while_requests_run(front: Front, tmp_path: Path) -> None:
    with_default, without = config(tmp_path, default=True), config(tmp_path, default=False)
    send(front, with_default)
    seen: dict[str, set[int]] = {"shop.example": set(), "unknown.test": set()}
    errors: list[BaseException] = []
    done = threading.Event()

    def hammer() -> None:
        while not done.is_set():
            for host, statuses in seen.items():
                try:
                    statuses.add(front.status(host)[0])
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for thread in threads:
        thread.start()

    async def swap() -> None:
        for i in range(40):
            await front.link.send_config(without if i % 2 == 0 else with_default)
            await asyncio.sleep(0.005)

    try:
        asyncio.run(swap())
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert seen["shop.example"] == {503}
    assert seen["unknown.test"] <= {503, 404}
    # The last table (with the default) is the one in use once acknowledged.
    assert front.status("unknown.test")[0] == 503


def malformed(generation: int) -> list[bytes]:
    limits = RouteLimits(max_body=10, max_response=10, request_timeout_ms=10, concurrency=1)
    good = encode_routes(generation, [TenantRoute("t", ("t.example",), False, limits)])
    header = FRAME_HEADER.size
    head = front_protocol.ROUTES_HEAD.pack(generation, 2, 0, 0, 0)
    proxy = front_protocol.ROUTE_PROXY.pack(b"\0" * 16, 129, 0)  # a prefix over 128
    one_proxy = front_protocol.ROUTES_HEAD.pack(generation, 0, 0, 1, 0)
    return [
        encode_routes(generation, [TenantRoute("t", ("bad host",), False, limits)]),
        encode_routes(generation, [TenantRoute("t", ("*.",), False, limits)]),
        encode_routes(generation, [TenantRoute("t", ("a.*.example",), False, limits)]),
        encode_routes(generation, [TenantRoute("t", ("t.example:80",), False, limits)]),
        encode_routes(generation, [TenantRoute("t", ("T.example",), False, limits)]),
        encode_routes(generation, [TenantRoute("a", ("x.example",), False, limits),
                                   TenantRoute("b", ("x.example",), False, limits)]),
        encode_routes(generation, [TenantRoute("a", (), True, limits), TenantRoute("b", (), True, limits)]),
        encode_routes(generation, [TenantRoute("t", (), False, RouteLimits(10, 10, 0, 1))]),
        good[:-1],  # truncated: payload_len no longer matches
        FRAME_HEADER.pack(MAGIC, MSG_ROUTES, PROTOCOL_VERSION, 0, len(head), 0) + head,  # 2 tenants, none sent
        FRAME_HEADER.pack(MAGIC, MSG_ROUTES, PROTOCOL_VERSION, 0, len(one_proxy), 0) + one_proxy,  # 1 proxy, not sent
        FRAME_HEADER.pack(MAGIC, MSG_ROUTES, PROTOCOL_VERSION, 0, len(one_proxy) + len(proxy), 0) + one_proxy + proxy,
        # A byte after the last tenant, payload_len counting it.
        FRAME_HEADER.pack(MAGIC, MSG_ROUTES, PROTOCOL_VERSION, 0, len(good) - header + 1, 0) + good[header:] + b"\0",
        FRAME_HEADER.pack(MAGIC, 127, PROTOCOL_VERSION, 0, len(good) - header, 0) + good[header:],  # unknown type
    ]


def test_a_malformed_table_is_refused_and_the_old_one_stays(front: Front, tmp_path: Path) -> None:
    send(front, config(tmp_path, default=False))
    for i, packet in enumerate(malformed(100)):
        with pytest.raises(RoutesRefused):
            asyncio.run(front.link.send_raw(100, packet))
        assert front.status("unknown.test")[0] == 404, i
        assert front.status("a.shop.example", b"x" * 1001)[0] == 413, i
    assert "ROUTES" in front.stderr.read_text()
    assert send(front, config(tmp_path, default=True)) == 2  # the channel still works
    assert front.status("unknown.test")[0] == 503


def test_leaving_closes_every_connection_after_its_answer(front: Front, tmp_path: Path) -> None:
    send(front, config(tmp_path, default=False))
    conn = http.client.HTTPConnection("127.0.0.1", front.port, timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "unknown.test"})
        first = conn.getresponse()
        first.read()
        assert (first.status, first.getheader("Connection")) == (404, None)
        front.link.leaving()
        # A table's answer comes after the control thread took LEAVING: no race.
        assert send(front, config(tmp_path, default=False)) == 2
        conn.request("GET", "/", headers={"Host": "unknown.test"})  # the same keep-alive connection
        second = conn.getresponse()
        second.read()
        assert (second.status, second.getheader("Connection")) == (404, "close")
    finally:
        conn.close()


def test_the_end_of_the_control_channel_ends_the_front_end(front: Front) -> None:
    front.link.close()
    assert front.proc.wait(5) == 0
    assert "the supervisor is gone" in front.stderr.read_text()


def test_routes_of_a_config_keeps_hosts_default_and_limits(tmp_path: Path) -> None:
    routes = routes_of(config(tmp_path, default=True))
    assert [(r.name, r.hosts, r.default, r.limits.max_body) for r in routes] == [
        ("shop", ("shop.example", "*.shop.example"), False, 1000),
        ("blog", ("blog.example", "*.example"), True, 10000),
    ]


# Named MF_<name> in the C header.
CONSTANTS = ["MSG_ROUTES", "MSG_ROUTES_ACK", "MSG_ROUTES_REFUSED", "MAX_ROUTES_PAYLOAD", "ROUTE_DEFAULT",
             "ROUTES_ACCESS_LOG", "MSG_HOST_ATTACH", "MSG_HOST_DETACH", "MSG_TENANT_STATE", "MSG_HOST_DRAINED",
             "TENANT_STARTING", "TENANT_DOWN", "MSG_LEAVING"]


def test_struct_layouts_match_the_c_header(tmp_path: Path) -> None:
    """A program compiled against front_protocol.h prints what Python assumes."""
    lines = []
    for name, (_st, fields) in front_protocol.STRUCTS.items():
        lines.append(f'printf("{name} %zu\\n", sizeof(struct {name}));')
        for f in fields:
            lines.append(f'printf("{name}.{f} %zu %zu\\n", offsetof(struct {name}, {f}), '
                         f'sizeof(((struct {name} *)0)->{f}));')
    for const in CONSTANTS:
        lines.append(f'printf("{const} %llu\\n", (unsigned long long)MF_{const});')
    lines.append('printf("MAX_TENANTS %llu\\n", (unsigned long long)MF_ROUTE_MAX_TENANTS);')
    lines.append('printf("MAX_NAME %llu\\n", (unsigned long long)MF_ROUTE_MAX_NAME);')
    lines.append('printf("MAX_PROXIES %llu\\n", (unsigned long long)MF_ROUTE_MAX_PROXIES);')
    out = c_printed(tmp_path, "wire/front_protocol.h", lines)
    for name, (st, fields) in front_protocol.STRUCTS.items():
        assert int(out[name]) == st.size, name
        offset = 0
        for f, code in zip(fields, re.findall(r"[0-9]*[a-zA-Z]", st.format.lstrip("=")), strict=True):
            size = struct.calcsize("=" + code)
            assert out[f"{name}.{f}"] == f"{offset} {size}", f"{name}.{f}"
            offset += size
    for const in [*CONSTANTS, "MAX_TENANTS", "MAX_NAME", "MAX_PROXIES"]:
        assert int(out[const]) == getattr(front_protocol, const), const
