"""Running it like a service: reloads under load, lifecycle, notify, admin API, logs."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from mayflyd.cli.admin_client import admin_request
from tests.daemon_harness import Daemon, DaemonProcess, free_port
from tests.load import Load

VERSIONED = '''
import os
VERSION = "{version}"


def on_init():
    {init}


def on_client_request(request):
    if request.path == "/slow":
        import time
        time.sleep(1)
    return "%s %s" % (VERSION, os.environ.get("CONFIG_VERSION", "-"))
'''


def program(version: str, init: str = "pass") -> str:
    return VERSIONED.format(version=version, init=init)


def tenant(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "program": f"programs/{name}.py",
            "limits": {"concurrency": 64, "init_timeout_ms": 1500}, **extra}


def wait_for_answer(daemon: Daemon, host: str, expected: str, timeout: float) -> float:
    """Seconds until `host` answers `expected`; fails after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        reply = daemon.get(host)
        if reply.status == 200 and reply.text == expected:
            return time.monotonic() - started
        time.sleep(0.01)
    pytest.fail(f"{host} did not answer {expected!r} within {timeout}s; last {daemon.get(host).text!r}\n"
                f"{daemon.log()[-3000:]}")


@pytest.fixture
def two_tenants(tmp_path: Path) -> Any:
    d = Daemon(tmp_path, [tenant("a"), tenant("b")], {"a.py": program("a0"), "b.py": program("b0")})
    d.start()
    yield d
    assert d.stop() == 0, d.log()[-3000:]
    assert d.cgroup_dirs() == []


def test_reloads_under_load_fail_nothing(two_tenants: Daemon) -> None:
    d = two_tenants
    programs = d.workdir / "programs"
    switch_times: list[float] = []
    with Load(d, ["a.localhost", "b.localhost"], connections=16) as load:
        time.sleep(0.3)
        for i in range(1, 21):
            name = "ab"[i % 2]
            (programs / f"{name}.py").write_text(program(f"{name}{i}"))
            changed = time.monotonic()
            config_version = "-" if i <= 0 else d.get(f"{name}.localhost").text.split()[1]
            wait_for_answer(d, f"{name}.localhost", f"{name}{i} {config_version}", timeout=5)
            switch_times.append(time.monotonic() - changed)
        versions = {"a": d.get("a.localhost").text.split()[0], "b": d.get("b.localhost").text.split()[0]}
        for i in range(1, 6):
            d.write_config([tenant("a", env={"CONFIG_VERSION": f"c{i}"}),
                            tenant("b", env={"CONFIG_VERSION": f"c{i}"})])
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            changed = time.monotonic()
            for name in "ab":
                wait_for_answer(d, f"{name}.localhost", f"{versions[name]} c{i}", timeout=5)
            switch_times.append(time.monotonic() - changed)
        time.sleep(0.3)
    assert load.errors == [], load.errors[:5]
    assert set(load.statuses) == {200}, load.statuses
    assert sum(load.statuses.values()) > 200
    # Every switch landed within wait_for_answer's 5 s; how fast is the
    # benchmark's question, not a timed assertion here.
    print(f"slowest switch {max(switch_times):.2f}s")
    status = d.status()
    assert status["tenants"]["a"]["last_reload"]["result"] == "ok"
    assert status["last_reload"]["result"] == "ok"
    # Old hosts were drained and stopped: one host per tenant remains.
    assert all(len(t["hosts"]) == 1 for t in status["tenants"].values())


@pytest.mark.parametrize("broken,error", [
    (program("x").replace("def on_client_request", "def on_client_request(:"), "SyntaxError"),
    (program("x", init="raise RuntimeError('no model')"), "on_init() raised RuntimeError: no model"),
    (program("x", init="import time; time.sleep(60)"), "longer than 1.5s"),
])
def test_a_broken_program_keeps_the_old_version_serving(two_tenants: Daemon, broken: str, error: str) -> None:
    d = two_tenants
    (d.workdir / "programs" / "a.py").write_text(broken)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reload = d.status()["tenants"]["a"]["last_reload"]
        if reload is not None:
            break
        assert d.get("a.localhost").text == "a0 -"
        time.sleep(0.05)
    assert reload["result"] == "failed" and error in reload["error"], reload
    assert d.get("a.localhost").text == "a0 -"
    assert "program reload failed, version" in d.log()
    # Fixing it brings the new version.
    (d.workdir / "programs" / "a.py").write_text(program("a-fixed"))
    wait_for_answer(d, "a.localhost", "a-fixed -", timeout=5)


def test_sighup_with_an_invalid_config_changes_nothing(two_tenants: Daemon) -> None:
    d = two_tenants
    d.config_path.write_text(d.config_path.read_text() + "bogus_key: 1\n")
    assert d.proc is not None
    d.proc.send_signal(signal.SIGHUP)
    d.wait_for(lambda: (d.status()["last_reload"] or {}).get("result") == "failed", what="the failed reload")
    assert "unknown key 'bogus_key'" in d.status()["last_reload"]["error"]
    assert "configuration reload rejected" in d.log()
    assert d.get("a.localhost").text == "a0 -" and d.get("b.localhost").text == "b0 -"


def test_config_reload_adds_changes_and_removes_tenants(two_tenants: Daemon) -> None:
    d = two_tenants
    (d.workdir / "programs" / "c.py").write_text(program("c0"))
    a_host = d.status()["tenants"]["a"]["hosts"][0]["pid"]
    d.write_config([tenant("a"), tenant("c", env={"CONFIG_VERSION": "new"})])
    code, body = admin_request(d.admin_socket, "POST", "/reload")
    assert code == 200, body
    assert d.get("c.localhost").text == "c0 new"
    assert d.get("b.localhost").status == 404  # no default tenant any more for b's host
    status = d.status()
    assert set(status["tenants"]) == {"a", "c"}
    assert status["tenants"]["a"]["hosts"][0]["pid"] == a_host, "an unchanged tenant was touched"


def test_reload_names_the_tenants_that_failed_to_load(two_tenants: Daemon) -> None:
    d = two_tenants
    (d.workdir / "programs" / "c.py").write_text("import no_such_module_here\n" + program("c0"))
    d.write_config([tenant("a"), tenant("b"), tenant("c")])
    reload = subprocess.run([sys.executable, "-m", "mayflyd", "reload", "--config", str(d.config_path)],
                            capture_output=True, text=True, timeout=60)
    assert reload.returncode == 1 and reload.stdout == "", reload.stdout
    head, *failures = reload.stderr.splitlines()
    assert head == "reloaded, but 1 tenant(s) failed to load:", reload.stderr
    assert len(failures) == 1 and failures[0].startswith("  c: ") and "no_such_module_here" in failures[0]
    last = d.status()["last_reload"]
    assert last["result"] == "failed" and "no_such_module_here" in last["failed_tenants"]["c"]
    assert d.status()["tenants"]["c"]["state"] == "backoff"
    assert d.get("a.localhost").text == "a0 -"


def test_sigterm_lets_requests_in_flight_finish(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [tenant("a")], {"a.py": program("a0")}).start()
    with ThreadPoolExecutor(5) as pool:
        slow = [pool.submit(d.get, "a.localhost", "/slow") for _ in range(5)]
        time.sleep(0.4)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        replies = [f.result() for f in slow]
    assert [r.status for r in replies] == [200] * 5
    assert d.proc.wait(20) == 0
    assert d.cgroup_dirs() == []
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", d.port), timeout=2)


def test_a_second_signal_stops_at_once(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [tenant("a")], {"a.py": program("a0")}, shutdown_grace_ms=30000).start()
    with ThreadPoolExecutor(1) as pool:
        slow = pool.submit(d.get, "a.localhost", "/slow")
        time.sleep(0.3)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        try:
            slow.result()
        except (OSError, http.client.HTTPException):
            pass  # cut off: that is what a second signal asks for
    assert "stopping at once" in d.log()
    assert d.cgroup_dirs() == []


def test_a_killed_host_leaves_no_request_unanswered(two_tenants: Daemon) -> None:
    d = two_tenants
    with Load(d, ["a.localhost"], connections=8) as load:
        time.sleep(0.3)
        os.kill(d.host_pid("a"), signal.SIGKILL)
        d.wait_for(lambda: "host died; restarting" in d.log(), what="the restart")
        wait_for_answer(d, "a.localhost", "a0 -", timeout=10)
        time.sleep(0.3)
    assert load.errors == [], load.errors[:5]
    assert set(load.statuses) <= {200, 503}, load.statuses
    assert d.status()["tenants"]["a"]["restarts"] == 1


def test_requests_on_a_host_that_dies_get_a_retry_or_a_502(two_tenants: Daemon) -> None:
    d = two_tenants
    with ThreadPoolExecutor(2) as pool:
        get = pool.submit(d.get, "a.localhost", "/slow")
        post = pool.submit(d.request, "POST", "/slow", host="a.localhost", body=b"x")
        time.sleep(0.4)  # both are in their sandboxes now
        os.kill(d.host_pid("a"), signal.SIGKILL)
        # The GET had received nothing: retried once on the fresh host.
        assert (get.result().status, get.result().text) == (200, "a0 -")
        # A POST is not safe to repeat.
        assert post.result().status == 502
    assert "the host died under the request; retrying once" in d.log()


def test_notify_protocol(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = str(tmp_path / "notify")
    notify.bind(notify_path)
    notify.settimeout(10)
    messages: list[str] = []

    def receive_until(prefix: str) -> None:
        while True:
            text = notify.recv(4096).decode()
            messages.append(text)
            if text.startswith(prefix):
                return

    d = Daemon(tmp_path, [tenant("a")], {"a.py": program("a0")}, drain_ms=300, shutdown_grace_ms=2000)
    d.start(env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": ""})
    try:
        receive_until("READY=1")
        assert d.get("a.localhost").status == 200  # READY came after the tenants were up
        receive_until("WATCHDOG=1")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        receive_until("RELOADING=1")
        receive_until("READY=1")
    finally:
        assert d.stop() == 0
    receive_until("STOPPING=1")
    notify.close()
    ready = [m for m in messages if m.startswith("READY=1")]
    assert len(ready) == 2 and all("STATUS=serving 1/1 tenants" in m for m in ready), messages
    reloading = next(m for m in messages if m.startswith("RELOADING=1"))
    assert "MONOTONIC_USEC=" in reloading
    # systemd waits for the drain, the grace and the stop hooks, whatever TimeoutStopSec= says.
    stopping = next(m for m in messages if m.startswith("STOPPING=1"))
    assert "EXTEND_TIMEOUT_USEC=12300000" in stopping.split("\n"), stopping
    order = [m.split("\n")[0] for m in messages if not m.startswith("WATCHDOG")]
    assert order == ["READY=1", "RELOADING=1", "READY=1", "STOPPING=1"], order


def test_admin_api_status_reload_and_metrics(two_tenants: Daemon) -> None:
    d = two_tenants
    for _ in range(3):
        d.get("a.localhost")
    d.get("nobody.localhost")
    status = subprocess.run([sys.executable, "-m", "mayflyd", "status", "--socket", d.admin_socket],
                            capture_output=True, text=True, timeout=30)
    assert status.returncode == 0, status.stderr
    assert "a" in status.stdout and "ready" in status.stdout
    raw = json.loads(subprocess.run([sys.executable, "-m", "mayflyd", "status", "--socket", d.admin_socket,
                                     "--json"], capture_output=True, text=True, timeout=30).stdout)
    a = raw["tenants"]["a"]
    assert a["requests"]["200"] >= 3 and len(a["version"]) == 12
    assert a["engine_configured"] == "auto" and a["engine"] in ("fork", "reset")
    reload = subprocess.run([sys.executable, "-m", "mayflyd", "reload", "--socket", d.admin_socket],
                            capture_output=True, text=True, timeout=30)
    assert reload.returncode == 0 and "reloaded" in reload.stdout
    code, _ = admin_request(d.admin_socket, "GET", "/tenants/a")
    assert code == 200
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(d.admin_socket)
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    conn.close()
    assert 'mayflyd_requests_total{status="200",tenant="a"}' in metrics
    assert 'mayflyd_reloads_total{kind="config",result="ok"}' in metrics
    assert "mayflyd_sandbox_cost_seconds_count" in metrics
    assert 'mayflyd_hosts_running{tenant="a"} 1.0' in metrics
    assert os.stat(d.admin_socket).st_mode & 0o777 == 0o600


ANSWERS = """
def on_client_request(request):
    if request.path == "/missing":
        return 404, {}, "no such page"
    if request.path == "/raise":
        raise ValueError("boom")
    return "fine"
"""


def test_errors_count_failures_not_the_programs_4xx(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [tenant("s", limits={"max_body": "1KiB", "init_timeout_ms": 1500})],
               {"s.py": ANSWERS}).start()
    try:
        assert d.get("s.localhost").status == 200
        assert [d.get("s.localhost", "/missing").status for _ in range(3)] == [404] * 3  # the program's answer
        assert d.get("s.localhost", "/raise").status == 500                             # a failure
        assert d.request("POST", "/", host="s.localhost", body=b"x" * 2048).status == 413  # refused: a limit
        s = d.status()["tenants"]["s"]
        assert (s["errors"], s["program_4xx"]) == (2, 3), s
        status = subprocess.run([sys.executable, "-m", "mayflyd", "status", "--socket", d.admin_socket],
                                capture_output=True, text=True, timeout=30).stdout
        header = next(line for line in status.splitlines() if line.startswith("TENANT"))
        row = next(line for line in status.splitlines() if line.startswith("s "))
        assert header.split()[5:8] == ["REQUESTS", "ERRORS", "4XX"], header
        assert row.split()[5:8] == ["6", "2", "3"], status
        _, metrics = admin_text(d.admin_socket, "/metrics")
        assert 'mayflyd_request_errors_total{tenant="s"} 2.0' in metrics
    finally:
        assert d.stop() == 0


def admin_text(path: str, url: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(path)
    conn.request("GET", url)
    response = conn.getresponse()
    return response.status, response.read().decode()


def test_stale_cgroups_of_a_crashed_run_are_removed(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [tenant("a")], {"a.py": program("a0")})
    stale = Path("/sys/fs/cgroup/memory") / d.cgroup_prefix / "ghost"
    if os.geteuid() != 0 or not Path("/sys/fs/cgroup/memory").is_dir():
        pytest.skip("needs root and a cgroup v1 memory hierarchy")
    stale.mkdir(parents=True)
    d.start()
    try:
        assert not stale.exists()
        assert "removing the stale cgroup of tenant ghost" in d.log()
    finally:
        assert d.stop() == 0
    assert d.cgroup_dirs() == []


def test_a_flooding_tenant_is_rate_limited_in_the_log(tmp_path: Path) -> None:
    flood = ("import sys\ndef on_client_request(request):\n"
             "    for i in range(20000):\n        print('flood line', i)\n    return 'done'\n")
    d = Daemon(tmp_path, [tenant("f")], {"f.py": flood}, log_format="json").start()
    try:
        assert d.get("f.localhost").text == "done"
        d.wait_for(lambda: "over the rate limit" in d.log(), what="the drop notice")
    finally:
        d.stop()
    lines = d.log().splitlines()
    events = [json.loads(line) for line in lines]  # every line is one JSON event
    flooded = [e for e in events if e.get("msg", "").startswith("flood line")]
    assert 0 < len(flooded) < 2000
    dropped = [e for e in events if "over the rate limit" in e.get("msg", "")]
    assert dropped and dropped[0]["tenant"] == "f" and dropped[0]["stream"] == "stdout"


def test_access_log(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [tenant("a")], {"a.py": program("a0")}, access_log=True).start()
    try:
        d.get("a.localhost", "/x?y=1")
    finally:
        d.stop()
    line = next(line for line in d.log().splitlines() if "logger=mayflyd.access" in line)
    assert "tenant=a" in line and 'msg="GET /x?y=1 200"' in line and " ms=" in line


def test_mayflyd_run_serves_and_reloads_one_program(tmp_path: Path) -> None:
    source = tmp_path / "myprog.py"
    source.write_text(program("v1"))
    runner = DaemonProcess(free_port(), tmp_path / "log")
    runner.spawn(["run", str(source), "--listen", f"127.0.0.1:{runner.port}"])
    try:
        assert runner.request("GET", "/").text == "v1 -"
        source.write_text(program("v2"))
        deadline = time.monotonic() + 5
        while runner.request("GET", "/").text != "v2 -":
            assert time.monotonic() < deadline, runner.log()[-2000:]
            time.sleep(0.05)
    finally:
        assert runner.stop() == 0


def test_mayflyd_run_registers_the_default_admin_socket(tmp_path: Path) -> None:
    """`mayflyd status` with no arguments finds a `mayflyd run`; its socket goes at exit."""
    from mayflyd.cli.admin_socket import default_admin_socket
    from mayflyd.cli.main import SYSTEM_CONFIG
    default = default_admin_socket()
    if SYSTEM_CONFIG.exists() or os.path.exists(default):
        pytest.skip(f"{SYSTEM_CONFIG} or {default} is there: a real mayflyd, not ours to disturb")
    source = tmp_path / "myprog.py"
    source.write_text(program("v1"))
    runner = DaemonProcess(free_port(), tmp_path / "log")
    runner.spawn(["run", str(source), "--listen", f"127.0.0.1:{runner.port}"])
    try:
        status = subprocess.run([sys.executable, "-m", "mayflyd", "status"], capture_output=True, text=True,
                                timeout=30)
        assert status.returncode == 0, status.stderr
        assert any(line.split()[:2] == ["myprog", "ready"] for line in status.stdout.splitlines()), status.stdout
        # A second one does not take it over: it serves with a socket of its own, and says where.
        second = DaemonProcess(free_port(), tmp_path / "log2")
        second.spawn(["run", str(source), "--listen", f"127.0.0.1:{second.port}"])
        try:
            own = os.path.join(os.path.dirname(default), f"run-{second.port}.sock")
            assert f"this one is on {own}" in second.log()
            code, body = admin_request(own, "GET", "/status")
            assert code == 200 and body["listen"] == f"127.0.0.1:{second.port}"
        finally:
            assert second.stop() == 0
        assert not os.path.exists(own) and os.path.exists(default)
    finally:
        assert runner.stop() == 0
    assert not os.path.exists(default)


BIG_HEAP = '''
HEAP = None


def on_init():
    global HEAP
    HEAP = [bytes([i % 256]) * 65536 for i in range({blocks})]  # {blocks} x 64 KiB, touched


def on_client_request(request):
    return "{version} %d" % len(HEAP)
'''


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for the memory cgroup")
def test_a_tenant_using_most_of_its_memory_can_still_reload(tmp_path: Path) -> None:
    # 40 MiB of heap in a 64 MiB tenant: old and new host side by side need
    # more. (The reset engine's workers each keep a snapshot of that heap:
    # they would not fit in 64 MiB at all.)
    big = {"name": "big", "hosts": ["big.localhost"], "program": "programs/big.py", "engine": "fork",
           "limits": {"memory": "64MiB", "init_timeout_ms": 10000}}
    d = Daemon(tmp_path, [big], {"big.py": BIG_HEAP.format(blocks=640, version="v1")}).start()
    try:
        assert d.get("big.localhost").text == "v1 640"
        (d.workdir / "programs" / "big.py").write_text(BIG_HEAP.format(blocks=640, version="v2"))
        wait_for_answer(d, "big.localhost", "v2 640", timeout=10)
        assert d.status()["tenants"]["big"]["last_reload"]["result"] == "ok"
        assert d.status()["tenants"]["big"]["restarts"] == 0
        # Twice the memory only while both hosts lived; back to 64 MiB once the old one drained.
        limit = Path("/sys/fs/cgroup/memory") / d.cgroup_prefix / "big" / "memory.limit_in_bytes"
        d.wait_for(lambda: int(limit.read_text()) == 64 * 1024 * 1024, timeout=10, what="the limit restored")
    finally:
        assert d.stop() == 0
