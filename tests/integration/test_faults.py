"""Faults the client never sees: a killed host or worker costs no GET, a
program that cannot load is a prompt 503 (docs/design.md, "The front end")."""
from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.daemon_harness import Daemon, reset_engine_missing
from tests.load import Load

needs_reset = pytest.mark.skipif(bool(reset_engine_missing()), reason="the kernel cannot run the reset engine")

PROGRAM = '''
def on_client_request(request):
    if request.path == "/slow":
        import time
        time.sleep(0.5)
    return "ok"
'''

CANNOT_LOAD = '''
raise ImportError("this program cannot load")
'''

ENGINES = ["fork", pytest.param("reset", marks=needs_reset)]


def tenant(name: str, engine: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "program": f"programs/{name}.py", "engine": engine,
            "limits": {"concurrency": 32, "request_timeout_ms": 5000, "init_timeout_ms": 3000}, **extra}


def host_pid(d: Daemon, name: str) -> int:
    """The tenant's serving host, once it has one."""
    pids: list[int] = []

    def serving() -> bool:
        hosts = d.status()["tenants"][name]["hosts"]
        pids[:] = [int(h["pid"]) for h in hosts]
        return len(pids) == 1

    d.wait_for(serving, what=f"{name}'s host")
    return pids[0]


@pytest.mark.parametrize("engine", ENGINES)
def test_gets_survive_hosts_killed_under_load(tmp_path: Path, engine: str) -> None:
    with Daemon(tmp_path, [tenant("a", engine)], {"a.py": PROGRAM}) as d:
        with Load(d, ["a.localhost"], connections=4) as load:
            for _ in range(5):
                time.sleep(2)
                os.kill(host_pid(d, "a"), signal.SIGKILL)
            host_pid(d, "a")
            time.sleep(0.5)
        assert d.status()["tenants"]["a"]["restarts"] == 5
    assert load.errors == [], load.errors[:5]
    assert set(load.statuses) == {200}, (load.statuses, d.log()[-3000:])
    assert load.statuses[200] > 100


def workers_of(d: Daemon, name: str) -> list[psutil.Process]:
    """A reset tenant's workers: the parents of the deepest processes in its
    cgroup (host, its stub if any > worker > the worker's template)."""
    procs = Path("/sys/fs/cgroup/memory") / d.cgroup_prefix / name / "cgroup.procs"
    inside = {int(pid) for pid in procs.read_text().split()}
    workers = []
    for pid in inside:
        try:
            chain = [psutil.Process(pid)]
            while len(chain) < 3 and (parent := chain[-1].parent()) is not None and parent.pid in inside:
                chain.append(parent)
            if len(chain) == 3 and not any(c.pid in inside for c in chain[0].children()):
                workers.append(chain[1])
        except psutil.NoSuchProcess:
            continue  # a worker being replaced
    return workers


@needs_reset
def test_a_killed_workers_get_is_retried_and_its_post_is_a_502(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("a", "reset", pool=1)], {"a.py": PROGRAM}) as d:
        assert d.get("a.localhost").status == 200
        for method, expected in (("GET", 200), ("POST", 502)):
            (worker,) = workers_of(d, "a")
            with ThreadPoolExecutor(1) as pool:
                body = b"x" if method == "POST" else None
                asked = pool.submit(d.request, method, "/slow", host="a.localhost", body=body)
                time.sleep(0.25)  # in the worker's handler now
                worker.kill()
                reply = asked.result()
            assert reply.status == expected, (method, reply.text, d.log()[-2000:])
            if expected == 200:
                assert reply.text == "ok"
            d.wait_for(lambda: d.get("a.localhost").status == 200, what="the replacement worker")
        assert d.log().count("the sandbox was killed under the request; retrying once") == 1


def test_a_program_that_cannot_load_is_a_prompt_503(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("a", "fork"), tenant("broken", "fork")],
                {"a.py": PROGRAM, "broken.py": CANNOT_LOAD}) as d:
        d.wait_for(lambda: "this program cannot load" in d.log(), what="the load failure")
        started = time.monotonic()
        reply = d.get("broken.localhost")
        assert reply.status == 503 and time.monotonic() - started < 1.0, reply.text
        assert d.get("a.localhost").status == 200


@needs_reset
def test_gets_survive_workers_killed_under_load(tmp_path: Path) -> None:
    with Daemon(tmp_path, [tenant("a", "reset", pool=2)], {"a.py": PROGRAM}) as d:
        with Load(d, ["a.localhost"], connections=4) as load:
            for _ in range(10):
                time.sleep(0.5)
                workers = workers_of(d, "a")
                if workers:
                    workers[0].kill()
            time.sleep(0.5)
    assert load.errors == [], load.errors[:5]
    assert set(load.statuses) == {200}, (load.statuses, d.log()[-3000:])
