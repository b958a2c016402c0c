from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from mayflyd.cli.admin_client import AdminError, admin_request, format_status
from mayflyd.supervisor.admin import AdminServer
from mayflyd.supervisor.health import Health, TenantHealth, evaluate
from mayflyd.supervisor.metrics import Metrics

SAMPLE_STATUS: dict[str, Any] = {
    "version": "0.1.0", "pid": 123, "uptime_s": 12.5, "config": "/etc/mayflyd/mayflyd.yaml",
    "listen": "127.0.0.1:8080",
    "walls": {"mode": "root", "cgroup": "v1", "seccomp": True},
    "last_reload": {"result": "ok", "error": None, "at": "2026-11-28T19:00:00Z"},
    "tenants": {"hello": {
        "program": "/etc/mayflyd/programs/hello.py", "version": "3fa9c2d1e0b4", "engine": "fork",
        "state": "ready", "hosts": [{"pid": 456, "version": "3fa9c2d1e0b4", "in_flight": 0, "draining": False}],
        "restarts": 0, "requests": {"200": 10, "404": 3, "413": 1, "502": 1}, "errors": 2, "program_4xx": 3,
        "limit_hits": {"max_body": 1},
        "worker_replacements": 2,
        "last_reload": {"result": "failed", "error": "SyntaxError ...", "at": "..."}}},
}


class FakeControl:
    def __init__(self) -> None:
        self.reload_result: dict[str, Any] = {"result": "ok", "error": None}
        self.reloads = 0
        self.tenant_health = TenantHealth(name="hello", state="ready", critical=False, ready=True)

    def status(self) -> dict[str, Any]:
        return SAMPLE_STATUS

    def tenant_status(self, name: str) -> dict[str, Any] | None:
        tenants: dict[str, Any] = SAMPLE_STATUS["tenants"]
        return tenants.get(name)

    async def reload(self) -> dict[str, Any]:
        self.reloads += 1
        return self.reload_result

    def health(self) -> Health:
        return evaluate(draining=False, front_end="running", tenants=[self.tenant_health])


@pytest.fixture
def short_dir() -> Iterator[str]:
    # A Unix socket path must be under 108 bytes; pytest's tmp_path may be longer.
    path = tempfile.mkdtemp(prefix="mfa", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(short_dir: str) -> str:
    return os.path.join(short_dir, "run", "admin.sock")


@pytest.fixture
def control() -> FakeControl:
    return FakeControl()


@pytest.fixture
async def server(control: FakeControl, sock_path: str) -> AsyncIterator[AdminServer]:
    metrics = Metrics()
    metrics.host_restarted("hello")
    admin = AdminServer(control, metrics, socket_path=sock_path)
    await admin.start()
    yield admin
    await admin.close()


async def request(path: str, method: str, url: str) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(admin_request, path, method, url, timeout=10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stale_socket(path: str) -> None:
    """A socket file nobody listens on, as a crashed daemon leaves it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


async def test_status(server: AdminServer, sock_path: str) -> None:
    assert await request(sock_path, "GET", "/status") == (200, SAMPLE_STATUS)


async def test_tenant(server: AdminServer, sock_path: str) -> None:
    status, body = await request(sock_path, "GET", "/tenants/hello")
    assert status == 200 and body["engine"] == "fork"
    status, body = await request(sock_path, "GET", "/tenants/nope")
    assert status == 404 and "no tenant named" in body["error"] and "nope" in body["error"]


async def test_reload(server: AdminServer, sock_path: str, control: FakeControl) -> None:
    assert await request(sock_path, "POST", "/reload") == (200, {"result": "ok", "error": None})
    control.reload_result = {"result": "failed", "error": "tenant a: bad yaml"}
    assert await request(sock_path, "POST", "/reload") == (409, control.reload_result)
    assert control.reloads == 2


async def test_metrics_on_the_socket(server: AdminServer, sock_path: str) -> None:
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"content-type: text/plain" in head.lower()
    assert b'mayflyd_host_restarts_total{tenant="hello"} 1.0' in body


async def test_unknown_path_and_wrong_method(server: AdminServer, sock_path: str) -> None:
    status, body = await request(sock_path, "GET", "/nope")
    assert status == 404 and "/nope" in body["error"]
    status, body = await request(sock_path, "POST", "/status")
    assert status == 405 and "POST" in body["error"]
    status, body = await request(sock_path, "GET", "/reload")
    assert status == 405 and "GET" in body["error"]


async def test_socket_and_created_parent_are_root_only(server: AdminServer, sock_path: str) -> None:
    st = os.lstat(sock_path)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(sock_path)).st_mode) == 0o700


async def test_existing_parent_is_not_chmodded(control: FakeControl, short_dir: str) -> None:
    os.chmod(short_dir, 0o755)
    admin = AdminServer(control, Metrics(), socket_path=os.path.join(short_dir, "admin.sock"))
    await admin.start()
    await admin.close()
    assert stat.S_IMODE(os.stat(short_dir).st_mode) == 0o755


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
async def test_writable_parent_is_refused(control: FakeControl, short_dir: str, mode: int) -> None:
    os.chmod(short_dir, mode)
    admin = AdminServer(control, Metrics(), socket_path=os.path.join(short_dir, "admin.sock"))
    with pytest.raises(OSError, match="writable by group or others"):
        await admin.start()
    assert not os.path.exists(os.path.join(short_dir, "admin.sock"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
async def test_parent_of_another_user_is_refused(control: FakeControl, short_dir: str) -> None:
    os.chmod(short_dir, 0o755)
    os.chown(short_dir, 12345, 12345)  # e.g. /tmp/mayflyd-UID made by someone else first
    admin = AdminServer(control, Metrics(), socket_path=os.path.join(short_dir, "admin.sock"))
    with pytest.raises(OSError, match=f"{short_dir} belongs to uid 12345"):
        await admin.start()
    assert not os.path.exists(os.path.join(short_dir, "admin.sock"))


async def test_stale_socket_is_replaced(control: FakeControl, short_dir: str) -> None:
    path = os.path.join(short_dir, "admin.sock")
    stale_socket(path)
    os.chmod(path, 0o755)  # unlike ours: the inode number may be reused, the mode tells them apart
    admin = AdminServer(control, Metrics(), socket_path=path)
    await admin.start()
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert (await request(path, "GET", "/status"))[0] == 200
    finally:
        await admin.close()


async def test_file_that_is_not_a_socket_is_kept(control: FakeControl, short_dir: str) -> None:
    path = os.path.join(short_dir, "admin.sock")
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        await AdminServer(control, Metrics(), socket_path=path).start()
    with open(path) as f:
        assert f.read() == "precious"


async def test_live_socket_refuses_a_second_daemon(server: AdminServer, sock_path: str,
                                                   control: FakeControl) -> None:
    second = AdminServer(control, Metrics(), socket_path=sock_path)
    with pytest.raises(OSError, match="another mayflyd is running"):
        await second.start()
    await second.close()
    # The first daemon's socket is untouched and still answers.
    assert (await request(sock_path, "GET", "/status"))[0] == 200


async def test_close_removes_the_socket(control: FakeControl, sock_path: str) -> None:
    admin = AdminServer(control, Metrics(), socket_path=sock_path)
    await admin.start()
    assert os.path.exists(sock_path)
    await admin.close()
    assert not os.path.exists(sock_path)
    await admin.close()  # twice is harmless


async def test_healthz_answers_503_with_what_is_wrong(
        server: AdminServer, control: FakeControl, sock_path: str) -> None:
    assert (await request(sock_path, "GET", "/healthz"))[0] == 200
    control.tenant_health = TenantHealth(name="hello", state="starting", critical=False, ready=False,
                                         reason="its host is starting")
    code, body = await request(sock_path, "GET", "/healthz")
    assert (code, body["status"]) == (503, "unhealthy")
    assert body["problems"] == ["tenant 'hello' has no ready host: its host is starting"]


async def test_metrics_listen_serves_only_metrics_and_health(control: FakeControl, sock_path: str) -> None:
    port = free_port()
    metrics = Metrics()
    metrics.reload("config", "ok")
    admin = AdminServer(control, metrics, socket_path=sock_path, metrics_listen=("127.0.0.1", port))
    await admin.start()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/metrics") as resp:
                assert resp.status == 200
                assert 'mayflyd_reloads_total{kind="config",result="ok"} 1.0' in await resp.text()
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200 and (await resp.json())["status"] == "ok"
            async with session.get(f"http://127.0.0.1:{port}/status") as resp:
                assert resp.status == 404
                assert "error" in await resp.json()
            async with session.post(f"http://127.0.0.1:{port}/reload") as resp:
                assert resp.status == 404
    finally:
        await admin.close()
    assert control.reloads == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as session:
            await session.get(f"http://127.0.0.1:{port}/metrics")


async def test_failed_metrics_listen_cleans_up(control: FakeControl, sock_path: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        admin = AdminServer(control, Metrics(), socket_path=sock_path,
                            metrics_listen=busy.getsockname())
        with pytest.raises(OSError):
            await admin.start()
    assert not os.path.exists(sock_path)


def test_admin_error_when_socket_missing(short_dir: str) -> None:
    path = os.path.join(short_dir, "admin.sock")
    with pytest.raises(AdminError, match=f"cannot reach mayflyd at {path}: .* is it running\\?"):
        admin_request(path, "GET", "/status")


def test_admin_error_when_nobody_listens(short_dir: str) -> None:
    path = os.path.join(short_dir, "admin.sock")
    stale_socket(path)
    with pytest.raises(AdminError, match="cannot reach mayflyd at .*refused.* is it running\\?"):
        admin_request(path, "GET", "/status")


def test_format_status() -> None:
    text = format_status(SAMPLE_STATUS)
    lines = text.splitlines()
    assert "mayflyd 0.1.0" in lines[0] and "pid 123" in lines[0] and "127.0.0.1:8080" in lines[0]
    assert "mode root, cgroup v1, seccomp on" in text
    assert "last reload: ok at 2026-11-28T19:00:00Z" in text
    header = next(line for line in lines if line.startswith("TENANT"))
    row = next(line for line in lines if line.startswith("hello"))
    # ERRORS are the daemon's count (the 502 and the 413 it refused), not every status but 2xx.
    assert row.split()[:10] == ["hello", "ready", "3fa9c2d1e0b4", "fork", "1", "15", "2", "3", "1", "2"]
    assert header.split()[5:8] == ["REQUESTS", "ERRORS", "4XX"]
    assert row.endswith("failed: SyntaxError ...")
    assert header.index("HOSTS") == row.index(" 1 ") + 1
    assert "draining" not in lines[0]
    assert format_status({**SAMPLE_STATUS, "draining": True}).splitlines()[0].endswith(", draining: stopping soon")


def test_format_status_is_defensive() -> None:
    assert "no tenants" in format_status({})
    text = format_status({"tenants": {"odd": {"requests": "x", "hosts": None, "limit_hits": {"a": "b"},
                                               "last_reload": {"error": "boom\nTraceback ..."}}}})
    row = next(line for line in text.splitlines() if line.startswith("odd"))
    assert row.split()[:10] == ["odd", "?", "-", "?", "?", "0", "?", "?", "0", "0"]
    assert row.endswith("?: boom")
