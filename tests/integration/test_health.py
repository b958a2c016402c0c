"""GET /healthz and the drain before a stop, through a real daemon: what a load balancer sees."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from mayflyd.cli.admin_client import admin_request
from tests.daemon_harness import Daemon, free_port
from tests.integration.conftest import limits

ANSWER = "def on_client_request(request):\n    return 'up'\n"
CANNOT_IMPORT = "import no_such_module_here\n" + ANSWER


def tenant(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "program": f"programs/{name}.py", "limits": limits(),
            **extra}


class Node(Daemon):
    """A daemon with metrics_listen on a port of its own, where a load balancer asks GET /healthz."""

    def __init__(self, workdir: Path, tenants: list[dict[str, Any]], programs: dict[str, str], **top: Any) -> None:
        self.metrics_port = free_port()
        super().__init__(workdir, tenants, programs, **top)

    def write_config(self, tenants: list[dict[str, Any]], **top: Any) -> None:
        super().write_config(tenants, metrics_listen=f"127.0.0.1:{self.metrics_port}", **top)

    def __enter__(self) -> Node:
        self.start()
        return self


def healthz(d: Node) -> tuple[int, dict[str, Any]]:
    """GET /healthz on metrics_listen, as a load balancer asks it."""
    conn = http.client.HTTPConnection("127.0.0.1", d.metrics_port, timeout=5)
    try:
        conn.request("GET", "/healthz")
        reply = conn.getresponse()
        assert reply.getheader("Content-Type", "").startswith("application/json")
        return reply.status, json.loads(reply.read())
    finally:
        conn.close()


def admin_healthz(d: Node) -> tuple[int, dict[str, Any]]:
    code, body = admin_request(d.admin_socket, "GET", "/healthz")
    return code, body


def stopped_cleanly(d: Node) -> None:
    assert d.proc is not None and d.proc.wait(30) == 0, d.log()[-3000:]
    assert d.cgroup_dirs() == []
    assert not os.path.exists(d.admin_socket)
    for port in (d.port, d.metrics_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)


def test_healthz_is_200_on_both_sites_while_every_tenant_serves(tmp_path: Path) -> None:
    with Node(tmp_path, [tenant("a"), tenant("b")], {"a.py": ANSWER, "b.py": ANSWER}) as d:
        for status, body in (healthz(d), admin_healthz(d)):
            assert status == 200, body
            assert body == {"status": "ok", "draining": False, "front_end": "running", "problems": [],
                            "tenants": {name: {"ready": True, "state": "ready", "critical": False}
                                        for name in "ab"}}
        assert d.status()["draining"] is False


def test_a_tenant_that_cannot_load_fails_the_node_only_if_critical(tmp_path: Path) -> None:
    tenants = [tenant("a"), tenant("broken")]
    with Node(tmp_path, tenants, {"a.py": ANSWER, "broken.py": CANNOT_IMPORT}) as d:
        status, body = healthz(d)
        assert (status, body["status"]) == (200, "ok"), body
        broken = body["tenants"]["broken"]
        assert (broken["ready"], broken["state"], broken["critical"]) == (False, "backoff", False)
        assert "no_such_module_here" in broken["reason"], broken
        assert "next try in" in broken["reason"] or "trying again now" in broken["reason"], broken
        (problem,) = body["problems"]
        assert problem.startswith("tenant 'broken' has no ready host: ") and "not critical" in problem
        assert d.get("a.localhost").text == "up"

        # Made critical by a reload (no new host for that): the node leaves the balancer.
        tenants[1]["critical"] = True
        d.write_config(tenants)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda: healthz(d)[0] == 503, what="/healthz 503 once the tenant is critical")
        for status, body in (healthz(d), admin_healthz(d)):
            assert (status, body["status"]) == (503, "unhealthy"), body
            assert body["tenants"]["broken"]["critical"] is True
            (problem,) = body["problems"]
            assert problem.startswith("tenant 'broken' (critical) has no ready host: ")
            assert "no_such_module_here" in problem
        assert d.get("a.localhost").text == "up"  # the other tenant serves on regardless


def test_a_critical_tenant_in_a_crash_loop_fails_the_node_while_it_backs_off(tmp_path: Path) -> None:
    with Node(tmp_path, [tenant("a", critical=True), tenant("b")], {"a.py": ANSWER, "b.py": ANSWER}) as d:
        assert healthz(d)[0] == 200
        seen: tuple[int, dict[str, Any]] | None = None
        deadline = time.monotonic() + 30
        while seen is None and time.monotonic() < deadline:
            status = d.status()["tenants"]["a"]
            if status["state"] == "ready" and status["hosts"]:
                # Killed before it serves, again and again: after five deaths, a crash loop.
                os.kill(status["hosts"][0]["pid"], signal.SIGKILL)
            for _ in range(20):
                answer = healthz(d)
                if answer[1]["tenants"]["a"]["state"] == "backoff":
                    seen = answer
                    break
                time.sleep(0.005)
        assert seen is not None, d.log()[-3000:]
        code, body = seen
        assert (code, body["status"]) == (503, "unhealthy"), body
        reason = body["tenants"]["a"]["reason"]
        assert "crash loop" in reason and ("next try in" in reason or "trying again now" in reason), reason
        assert body["tenants"]["b"]["ready"] is True
        # It serves again once its backoff is over and a host is ready.
        d.wait_for(lambda: healthz(d)[0] == 200, timeout=30, what="/healthz 200 again")


def test_a_stop_drains_for_drain_ms_serving_on_while_healthz_says_503(tmp_path: Path) -> None:
    d = Node(tmp_path, [tenant("a")], {"a.py": ANSWER}, drain_ms=1500)
    d.start()
    assert d.proc is not None
    kept = http.client.HTTPConnection("127.0.0.1", d.port, timeout=5)
    try:
        kept.request("GET", "/", headers={"Host": "a.localhost"})
        first = kept.getresponse()
        assert (first.status, first.read(), first.getheader("Connection")) == (200, b"up", None)

        signalled = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for(lambda: healthz(d)[0] == 503, timeout=2, what="/healthz 503")
        assert time.monotonic() - signalled < 0.5
        status, body = healthz(d)
        assert (body["status"], body["draining"]) == ("draining", True), body
        assert admin_healthz(d)[1]["status"] == "draining"

        # The keep-alive connection opened before is served, and told to go.
        kept.request("GET", "/", headers={"Host": "a.localhost"})
        second = kept.getresponse()
        assert (second.status, second.read(), second.getheader("Connection")) == (200, b"up", "close")
        # So is a new connection, again and again during the drain.
        replies = []
        while time.monotonic() - signalled < 1.2:
            replies.append(d.get("a.localhost"))
            time.sleep(0.05)
        assert len(replies) > 5
        assert {(r.status, r.text, r.headers["Connection"]) for r in replies} == {(200, "up", "close")}
    finally:
        kept.close()
    stopped_cleanly(d)
    took = time.monotonic() - signalled
    assert 1.4 < took < 10, took
    log = d.log()
    assert "SIGTERM: draining: serving 1500 ms more" in log and "drained for 1500 ms: stopping" in log


def test_a_second_signal_ends_the_drain_at_once(tmp_path: Path) -> None:
    d = Node(tmp_path, [tenant("a")], {"a.py": ANSWER}, drain_ms=60_000)
    d.start()
    assert d.proc is not None
    d.proc.send_signal(signal.SIGTERM)
    d.wait_for(lambda: healthz(d)[0] == 503, timeout=2, what="/healthz 503")
    assert d.get("a.localhost").text == "up"
    started = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    stopped_cleanly(d)
    assert time.monotonic() - started < 10
    assert "SIGTERM again: ending the drain" in d.log()
