"""Hosts forked from the zygote (the default), and the fresh interpreters of zygote: false."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import psutil

from mayflyd.cli.admin_client import UnixHTTPConnection
from tests.daemon_harness import Daemon
from tests.integration.conftest import needs_root
from tests.load import Load

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


def zygote_forked(pid: int) -> bool:
    """Whether a host was forked by a zygote (its command line is the zygote's)."""
    return "from mayflyd.host.zygote import main" in " ".join(psutil.Process(pid).cmdline())


@needs_root
def test_each_host_is_a_child_of_the_supervisor_and_pid_1_of_its_namespace(tmp_path: Path) -> None:
    with two_tenants(tmp_path) as d:
        assert d.proc is not None
        zygote = d.status()["zygote"]
        assert zygote["starts"] == 1
        assert psutil.Process(zygote["pid"]).ppid() == d.proc.pid
        hosts = {d.host_pid("a"), d.host_pid("b")}
        # Forked by the zygote as its sibling: no stub, the supervisor is the parent.
        assert psutil.Process(zygote["pid"]).children() == []
        for pid in hosts:
            assert zygote_forked(pid) and psutil.Process(pid).ppid() == d.proc.pid
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


def zygote_killed_and_back(d: Daemon) -> int:
    """SIGKILL the running zygote; the next one's pid, once it runs."""
    old = d.status()["zygote"]
    os.kill(old["pid"], signal.SIGKILL)
    d.wait_for(lambda: d.status()["zygote"]["starts"] == old["starts"] + 1 and d.status()["zygote"]["pid"] != 0,
               timeout=20, what="a new zygote")
    return int(d.status()["zygote"]["pid"])


@needs_root
def test_hosts_outlive_the_zygote_and_serve_through_its_deaths(tmp_path: Path) -> None:
    programs = {"a.py": "def on_client_request(request):\n    return 'a'\n",
                "r.py": "def on_client_request(request):\n    return 'r'\n"}
    with Daemon(tmp_path, [tenant("a"), tenant("r", engine="reset", pool=2)], programs) as d:
        hosts = {name: d.host_pid(name) for name in ("a", "r")}
        with Load(d, ["a.localhost", "r.localhost"], connections=4) as load:
            zygotes = []
            for _ in range(3):
                time.sleep(2)
                zygotes.append(zygote_killed_and_back(d))
            time.sleep(1)
        assert load.errors == [], load.errors[:10]
        assert set(load.statuses) == {200}, load.statuses
        assert load.statuses[200] > 100
        assert {name: d.host_pid(name) for name in ("a", "r")} == hosts
        assert len(set(zygotes)) == 3 and d.status()["zygote"]["starts"] == 4
        assert psutil.Process(zygotes[-1]).is_running()
        assert d.log().count("the zygote is gone; its hosts keep serving") == 3
        assert "mayflyd_zygote_starts_total 4.0" in metrics_text(d)


def test_a_reload_after_the_zygote_died_forks_from_the_new_one(tmp_path: Path) -> None:
    with two_tenants(tmp_path) as d:
        assert d.proc is not None
        old_host = d.host_pid("a")
        zygote = zygote_killed_and_back(d)
        (Path(d.workdir) / "programs" / "a.py").write_text("def on_client_request(request):\n    return 'a2'\n")
        d.proc.send_signal(signal.SIGHUP)
        d.wait_for(lambda: d.get("a.localhost").text == "a2", timeout=20, what="the reloaded program serving")
        d.wait_for(lambda: len(d.status()["tenants"]["a"]["hosts"]) == 1, what="the old host gone")
        new_host = d.host_pid("a")
        assert new_host != old_host and zygote_forked(new_host)
        # Forked after the new zygote started: from it, the only zygote since.
        assert psutil.Process(new_host).create_time() >= psutil.Process(zygote).create_time()
        assert d.status()["zygote"] == {"pid": zygote, "starts": 2}
        assert json.loads(d.get("b.localhost").text)["GREETING"] == "hi"


@needs_root
def test_a_killed_supervisor_leaves_no_zygote_host_or_sandbox(tmp_path: Path) -> None:
    programs = {"a.py": "def on_client_request(request):\n    return 'a'\n",
                "r.py": "def on_client_request(request):\n    return 'r'\n"}
    d = Daemon(tmp_path, [tenant("a"), tenant("r", engine="reset", pool=2)], programs)
    with d:
        assert d.proc is not None
        zygote_killed_and_back(d)  # hosts forked from the first zygote, their zygote a later one
        pids = {d.status()["zygote"]["pid"], d.host_pid("a"), d.host_pid("r"), *d.tenant_processes()}
        assert len(pids) >= 5  # a zygote, two hosts, r's two workers
        d.proc.kill()
        d.proc.wait()

        def all_gone() -> bool:
            return not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                           for p in pids)
        try:
            d.wait_for(all_gone, timeout=10, what="every process of the daemon gone")
            assert d.tenant_processes() == []
        finally:
            for pid in pids:  # whatever a failure left running
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    # The next run removes what the killed one could not (cgroups), and stops clean.
    with d:
        assert d.get("a.localhost").text == "a"
        assert "removing the stale cgroup of tenant a" in d.log()
    assert d.cgroup_dirs() == []


def test_a_host_killed_from_outside_is_reaped_by_the_supervisor_and_restarted(tmp_path: Path) -> None:
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
