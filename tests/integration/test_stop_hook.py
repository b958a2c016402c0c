"""A program's on_stop(): run once, in a sandbox with the request walls, when its host stops."""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_harness import HOST_VARIANTS, Daemon, host_variant, skip_without_reset_engine
from tests.integration.conftest import limits, needs_root

pytestmark = needs_root

# Says what on_stop() sees (the sealed host's state, not a request's) and
# what the request walls let it do.
STOPS = '''
import os
import threading

VERSION = "{version}"
STATE = {{"init": "unset", "request": "unset"}}


def on_init():
    STATE["init"] = "set-in-init"


def on_client_request(request):
    STATE["request"] = "set-by-request"
    return "%s %s" % (VERSION, STATE["request"])


def _try_fork():
    try:
        pid = os.fork()
    except OSError as exc:
        return "refused-%s" % exc.errno
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return "allowed"


def _try_thread():
    try:
        thread = threading.Thread(target=lambda: None)
        thread.start()
        thread.join()
    except RuntimeError:
        return "refused"
    return "allowed"


def on_stop():
    print("on_stop %s init=%s request=%s fork=%s thread=%s pid=%d" % (
        VERSION, STATE["init"], STATE["request"], _try_fork(), _try_thread(), os.getpid()))
'''

RAISES = '''
def on_client_request(request):
    return "raises"


def on_stop():
    print("on_stop about to raise")
    raise ValueError("boom-in-on-stop")
'''

HANGS = '''
import signal
import time


def on_client_request(request):
    return "hangs"


def on_stop():
    print("on_stop hangs", flush=True)
    time.sleep(3600)
'''

PLAIN = '''
def on_client_request(request):
    return "plain"

on_stop = "not callable: ignored"
'''

HANG_TIMEOUT_MS = 1000


def tenant(name: str, **overrides: object) -> dict[str, Any]:
    return {"name": name, "hosts": [f"{name}.localhost"], "program": f"programs/{name}.py",
            "limits": limits(**overrides)}


def stopping_daemon(workdir: Path, param: str) -> Daemon:
    engine, zygote = host_variant(param)
    skip_without_reset_engine(engine)
    tenants = [tenant("stops"), tenant("raises"), tenant("hangs", request_timeout_ms=HANG_TIMEOUT_MS),
               tenant("plain")]
    for t in tenants:
        t["engine"] = engine
    sources = {"stops.py": STOPS.format(version="v1"), "raises.py": RAISES, "hangs.py": HANGS, "plain.py": PLAIN}
    d = Daemon(workdir, tenants, sources, zygote=zygote)
    d.engine = engine
    return d


@pytest.fixture(params=HOST_VARIANTS)
def daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Daemon]:
    d = stopping_daemon(tmp_path, request.param)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def tenant_lines(d: Daemon, name: str) -> list[str]:
    return [line for line in d.log().splitlines() if f"tenant={name} " in line]


def test_on_stop_runs_in_a_sandbox_when_the_daemon_stops(daemon: Daemon) -> None:
    d = daemon
    for name in ("stops", "raises", "hangs", "plain"):
        reply = d.get(f"{name}.localhost")
        assert reply.status == 200, (name, reply.text)
    assert d.get("stops.localhost").text == "v1 set-by-request"

    started = time.monotonic()
    assert d.stop() == 0, d.log()
    took = time.monotonic() - started

    stops = " ".join(tenant_lines(d, "stops"))
    # The sealed host's state: on_init()'s global, none of a request's.
    assert "on_stop v1 init=set-in-init request=unset" in stops, d.log()[-4000:]
    # The request filter: no new process, no thread.
    assert "fork=refused-1 thread=refused" in stops, stops
    # Not the host (pid 1 of the tenant's pid namespace): a sandbox of its own.
    assert "pid=1 " not in stops
    raises = "\n".join(tenant_lines(d, "raises"))
    assert "on_stop about to raise" in raises
    assert "Traceback" in raises and "ValueError: boom-in-on-stop" in raises, raises
    hangs = "\n".join(tenant_lines(d, "hangs"))
    assert "on_stop hangs" in hangs
    assert f"the stop hook ran for over {HANG_TIMEOUT_MS} ms; killed" in hangs, hangs
    # A program without a callable on_stop: no sandbox, nothing said.
    assert [line for line in tenant_lines(d, "plain") if "stream=" in line] == []
    # Every host stopped by itself (SHUTDOWN), none had to be killed.
    assert "did not stop in" not in d.log()
    # Hosts stop side by side: the one that hangs sets the pace.
    assert took < HANG_TIMEOUT_MS / 1000 + 8, took
    assert d.cgroup_dirs() == [], "cgroups left behind"


def test_a_reload_runs_the_old_hosts_on_stop(daemon: Daemon) -> None:
    d = daemon
    assert d.get("stops.localhost").text == "v1 set-by-request"
    (d.workdir / "programs" / "stops.py").write_text(STOPS.format(version="v2"))
    d.wait_for(lambda: d.get("stops.localhost").text == "v2 set-by-request", what="the reload")
    # The old host drained, then stopped: its on_stop ran, while the daemon serves on.
    d.wait_for(lambda: "on_stop v1 init=set-in-init" in d.log(), what="the old host's on_stop")
    assert "on_stop v2" not in d.log()
    assert d.get("plain.localhost").text == "plain"


def test_a_second_signal_cuts_the_stop_hooks_short(tmp_path: Path) -> None:
    d = Daemon(tmp_path, [tenant("hangs", request_timeout_ms=60_000)], {"hangs.py": HANGS})
    with d:
        assert d.get("hangs.localhost").text == "hangs"
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for(lambda: "on_stop hangs" in d.log(), what="on_stop")
        started = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert time.monotonic() - started < 3  # not the hook's 5 s bound
    assert "SIGTERM again: stopping the hosts at once" in d.log()
    assert d.cgroup_dirs() == [], "cgroups left behind"
