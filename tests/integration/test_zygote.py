"""Hosts forked from the zygote (the default), and the fresh interpreters of zygote: false."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil

from mayflyd.cli.admin_client import UnixHTTPConnection
from tests.daemon_harness import Daemon
from tests.integration.conftest import needs_root

ENVIRONMENT = '''
import json, os


def on_client_request(request):
    return json.dumps(dict(os.environ), sort_keys=True)
'''


def tenant(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "program": f"programs/{name}.py",
            "engine": "fork", **extra}


def two_tenants(tmp_path: Path, **top: Any) -> Daemon:
    programs = {"a.py": "def on_client_request(request):\n    return 'a'\n",
                "b.py": ENVIRONMENT}
    return Daemon(tmp_path, [tenant("a"), tenant("b", env={"GREETING": "hi", "PATH": "/bin"})], programs, **top)


def metrics_text(d: Daemon) -> str:
    conn = UnixHTTPConnection(d.admin_socket, 10)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def pid_namespace_pids(pid: int) -> list[int]:
    """A process's pid in each pid namespace it is in, outermost first."""
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("NSpid:"))
    return [int(p) for p in line.split()[1:]]


@needs_root
def test_each_host_is_a_child_of_the_zygote_and_pid_1_of_its_namespace(tmp_path: Path) -> None:
    with two_tenants(tmp_path) as d:
        assert d.proc is not None
        zygote = d.status()["zygote"]
        assert zygote["starts"] == 1
        assert psutil.Process(zygote["pid"]).ppid() == d.proc.pid
        hosts = {d.host_pid("a"), d.host_pid("b")}
        # No stub: the zygote itself is the parent of each host's pid namespace.
        assert {child.pid for child in psutil.Process(zygote["pid"]).children()} == hosts
        for pid in hosts:
            assert pid_namespace_pids(pid) == [pid, 1]
        assert d.get("a.localhost").text == "a"
        assert f"zygote {zygote['pid']} started" in d.log()
        assert "mayflyd_zygote_starts_total 1.0" in metrics_text(d)


def test_a_forked_host_has_its_own_environment_and_nothing_else(tmp_path: Path) -> None:
    with two_tenants(tmp_path) as d:
        assert json.loads(d.get("b.localhost").text) == {"GREETING": "hi", "LANG": "C.UTF-8", "PATH": "/bin"}
        # The zygote's own environment is the hosts' base, untouched by b's.
        assert d.status()["zygote"] is not None
        assert d.get("a.localhost").text == "a"


def test_without_the_zygote_each_host_is_a_fresh_interpreter(tmp_path: Path) -> None:
    with two_tenants(tmp_path, zygote=False) as d:
        assert d.proc is not None
        assert d.status()["zygote"] is None
        for name in ("a", "b"):
            host = psutil.Process(d.host_pid(name))
            assert host.ppid() == d.proc.pid
            assert "from mayflyd.host.sandbox_host import main" in " ".join(host.cmdline())
        assert json.loads(d.get("b.localhost").text) == {"GREETING": "hi", "LANG": "C.UTF-8", "PATH": "/bin"}
        assert "logger=mayflyd.host.zygote" not in d.log()


def test_a_dead_zygote_takes_its_hosts_and_a_new_one_serves(tmp_path: Path) -> None:
    with two_tenants(tmp_path) as d:
        old = d.status()["zygote"]["pid"]
        hosts_before = {d.host_pid("a"), d.host_pid("b")}
        os.kill(old, signal.SIGKILL)
        d.wait_for(lambda: "the zygote is gone" in d.log(), what="the zygote's death noticed")

        def both_back() -> bool:
            status = d.status()
            return (status["zygote"]["starts"] == 2
                    and all(t["state"] == "ready" and t["hosts"] for t in status["tenants"].values()))
        d.wait_for(both_back, timeout=20, what="a new zygote and both tenants ready again")
        assert d.status()["zygote"]["pid"] != old
        assert {d.host_pid("a"), d.host_pid("b")}.isdisjoint(hosts_before)
        for pid in hosts_before:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        assert d.get("a.localhost").text == "a"
        assert json.loads(d.get("b.localhost").text)["GREETING"] == "hi"
        assert "mayflyd_zygote_starts_total 2.0" in metrics_text(d)


def test_a_host_killed_from_outside_is_reported_by_the_zygote_and_restarted(tmp_path: Path) -> None:
    with two_tenants(tmp_path) as d:
        host = d.host_pid("a")
        os.kill(host, signal.SIGKILL)
        d.wait_for(lambda: f"host {host} killed by signal 9 (SIGKILL)" in d.log(), what="the host's end reported")
        # The dead host may still be listed for a moment, next to its successor.
        d.wait_for(lambda: [h["pid"] for h in d.status()["tenants"]["a"]["hosts"]] not in ([], [host])
                   and len(d.status()["tenants"]["a"]["hosts"]) == 1, timeout=20, what="a new host, alone")
        assert d.get("a.localhost").text == "a"
        assert d.status()["zygote"]["starts"] == 1


def test_the_zygote_setting_waits_for_a_restart(tmp_path: Path) -> None:
    with two_tenants(tmp_path) as d:
        assert d.proc is not None
        zygote = d.status()["zygote"]["pid"]
        d.write_config([tenant("a"), tenant("b", env={"GREETING": "hi", "PATH": "/bin"})], zygote=False)
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda: "zygote changed in the configuration: it takes effect at the next restart" in d.log(),
                   what="the warning")
        assert d.status()["zygote"]["pid"] == zygote
        assert d.get("a.localhost").text == "a"


def test_hundreds_of_tenants_start_at_once(tmp_path: Path) -> None:
    # More spawn messages at once than the zygote's socket queue holds: the
    # supervisor must wait for room, one sender at a time, and lose none.
    count = 200
    tenants = [tenant(f"t{i}", uid=310000 + i) for i in range(count)]
    programs = {f"t{i}.py": f"def on_client_request(request):\n    return 't{i}'\n" for i in range(count)}
    with Daemon(tmp_path, tenants, programs) as d:
        d.wait_for(lambda: all(t["state"] == "ready" for t in d.status()["tenants"].values()), timeout=60,
                   what="every tenant ready")
        assert "cannot reach the zygote" not in d.log()
        assert d.log().count("ready, serving") == count
        assert {d.get(f"t{i}.localhost").text for i in (0, 99, 199)} == {"t0", "t99", "t199"}
