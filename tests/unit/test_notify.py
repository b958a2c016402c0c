"""Tests of mayflyd.supervisor.notify: the exact datagrams a service manager receives."""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mayflyd.supervisor.notify import Notifier


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A stand-in for systemd's notification socket, bound at a path."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def nothing_queued(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(2.0)
    return False


def test_every_message_is_sent_exactly(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier(path)
    assert notifier.enabled
    notifier.ready()
    assert received(sock) == "READY=1"
    notifier.ready("serving 2 tenants")
    assert received(sock) == "READY=1\nSTATUS=serving 2 tenants"
    notifier.stopping()
    assert received(sock) == "STOPPING=1"
    notifier.stopping("draining")
    assert received(sock) == "STOPPING=1\nSTATUS=draining"
    notifier.stopping("draining", within_usec=25_000_000)
    assert received(sock) == "STOPPING=1\nEXTEND_TIMEOUT_USEC=25000000\nSTATUS=draining"
    notifier.status("reload failed: bad.yaml:3")
    assert received(sock) == "STATUS=reload failed: bad.yaml:3"
    notifier.watchdog()
    assert received(sock) == "WATCHDOG=1"
    notifier.close()


def test_reloading_carries_the_monotonic_clock(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier(path)
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    lines = received(sock).split("\n")
    assert lines[0] == "RELOADING=1"
    key, _, value = lines[1].partition("=")
    assert key == "MONOTONIC_USEC" and len(lines) == 2
    assert before <= int(value) <= after
    notifier.reloading("reloading /etc/mayflyd/mayflyd.yaml")
    lines = received(sock).split("\n")
    assert lines[0] == "RELOADING=1" and lines[1].startswith("MONOTONIC_USEC=")
    assert lines[2] == "STATUS=reloading /etc/mayflyd/mayflyd.yaml"
    notifier.close()


def test_a_newline_in_a_status_cannot_add_a_line(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier(path)
    notifier.status("one\nREADY=1")
    assert received(sock) == "STATUS=one READY=1"
    notifier.close()


def test_abstract_socket() -> None:
    name = f"mayflyd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2.0)
    try:
        notifier = Notifier("@" + name)
        assert notifier.enabled
        notifier.ready("up")
        assert received(sock) == "READY=1\nSTATUS=up"
        notifier.close()
    finally:
        sock.close()


def test_without_a_socket_nothing_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier(watchdog_usec=1_000_000)
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("x")
    notifier.reloading()
    notifier.stopping()
    notifier.status("x")
    notifier.watchdog()
    notifier.close()


async def test_run_watchdog_without_a_watchdog_returns_at_once(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier(path, watchdog_usec=0)
    assert notifier.watchdog_interval is None
    await asyncio.wait_for(notifier.run_watchdog(), 1.0)
    assert nothing_queued(sock)
    notifier.close()


def test_unsupported_address_disables(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mayflyd.notify"):
        notifier = Notifier("relative/notify.sock")
    assert not notifier.enabled
    assert "not an absolute path" in caplog.text


def test_watchdog_interval_is_half_the_timeout(manager: tuple[str, socket.socket]) -> None:
    path, _ = manager
    notifier = Notifier(path, watchdog_usec=30_000_000)
    assert notifier.watchdog_interval == 15.0
    notifier.close()


def test_environment_is_read_and_then_removed(manager: tuple[str, socket.socket],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path, sock = manager
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    notifier = Notifier.from_environment()
    assert notifier.enabled and notifier.watchdog_interval == 2.0
    # Children the daemon starts must not notify in its name.
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        assert name not in os.environ
    notifier.ready()
    assert received(sock) == "READY=1"
    notifier.close()


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "4000000"}, 2.0),                      # no WATCHDOG_PID: ours
    ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_from_environment(manager: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch,
                                   env: dict[str, str], interval: float | None) -> None:
    path, _ = manager
    for name in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    notifier = Notifier(path)
    assert notifier.watchdog_interval == interval
    notifier.close()


async def test_run_watchdog_pings_until_cancelled(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier(path, watchdog_usec=20_000)  # a ping every 10 ms
    task = asyncio.create_task(notifier.run_watchdog())
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    pings = []
    for _ in range(3):
        pings.append((await loop.sock_recv(sock, 4096)).decode())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pings == ["WATCHDOG=1"] * 3
    notifier.close()


def test_send_errors_do_not_raise_and_are_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert notifier.enabled
    with caplog.at_level(logging.DEBUG, logger="mayflyd.notify"):
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "nobody-listens.sock" in warnings[0].getMessage()
    assert sum(r.levelno == logging.DEBUG for r in caplog.records) == 2
    notifier.close()


def test_a_full_queue_does_not_block(manager: tuple[str, socket.socket]) -> None:
    path, _ = manager
    notifier = Notifier(path)
    started = time.monotonic()
    for _ in range(10_000):  # far more than the receiver's queue holds
        notifier.watchdog()
    assert time.monotonic() - started < 5.0
    notifier.close()


def test_close_is_idempotent_and_silences(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier(path)
    notifier.close()
    notifier.close()
    assert not notifier.enabled
    notifier.ready()
    assert nothing_queued(sock)
