"""The stop sandbox (csrc/engine/stop_sandbox.c) under both engines, with
a sealed host in a forked child and the test as its supervisor."""
from __future__ import annotations

import gc
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mayflyd import _mayfly as M
from tests.daemon_harness import reset_engine_missing
from tests.unit.test_c_helper import Host, echo_runner, frame

NOFILE = 64


def start(engine: str, stop: Callable[[], object] | None, **serve_kw: Any) -> Host:
    """A sealed host whose load() gives echo_runner and stop."""
    def load() -> tuple[Any, Callable[[], object] | None]:
        return echo_runner, stop
    seal = {"load": load, "gc_freeze": gc.freeze, "nofile": NOFILE, **serve_kw}
    if engine == "reset":
        missing = reset_engine_missing()
        if missing:
            pytest.skip(missing)
        from tests.unit.test_reset_engine_c import ResetHost
        return ResetHost(**seal)
    return Host(runner=None, **seal)  # type: ignore[arg-type]


def shutdown(h: Host) -> int:
    """SHUTDOWN, then the host's exit code (the data channel closed meanwhile: it does not end the host)."""
    h.ctrl.send(frame(M.MSG_SHUTDOWN, 0))
    return h.close("data")


def finish(h: Host) -> None:
    """Closes the control channel (after the host exited) and the reset host's front thread."""
    h.ctrl.close()
    stopping = getattr(h, "stopping", None)
    if stopping is not None:
        stopping.set()


def wait_for_file(path: Path, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text():
            return path.read_text()
        time.sleep(0.01)
    raise AssertionError(f"{path} never written")


def sleeping_stop(out: Path) -> Callable[[], None]:
    """A stop hook that writes its pid to out and never returns."""
    def stop() -> None:
        out.write_text(str(os.getpid()))
        time.sleep(3600)
    return stop


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


ENGINES = ["fork", "reset"]


@pytest.mark.parametrize("engine", ENGINES)
def test_shutdown_runs_the_stop_hook_once_in_a_sandbox(engine: str, tmp_path: Path) -> None:
    out = tmp_path / "stopped"

    def stop() -> None:
        with open(out, "a") as f:
            f.write(f"{os.getpid()} {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}\n")
    h = start(engine, stop)
    assert shutdown(h) == 0
    (line,) = out.read_text().splitlines()
    pid, nofile = map(int, line.split())
    assert pid != h.pid and nofile == NOFILE  # a sandbox of its own, with the request limits
    finish(h)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_control_channels_end_alone_runs_no_stop_hook(engine: str, tmp_path: Path) -> None:
    """A supervisor that died sent no SHUTDOWN: the host ends at once."""
    out = tmp_path / "stopped"
    h = start(engine, lambda: out.write_text("ran"))
    assert h.close() == 0
    assert not out.exists()
    finish(h)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stop_hook_past_its_bound_is_killed(engine: str, tmp_path: Path) -> None:
    out = tmp_path / "stopping"
    h = start(engine, sleeping_stop(out), stop_timeout_ms=300)
    started = time.monotonic()
    assert shutdown(h) == 0
    assert time.monotonic() - started < 3
    assert gone(int(wait_for_file(out)))
    finish(h)


@pytest.mark.parametrize("engine", ENGINES)
def test_the_supervisors_end_cuts_the_stop_hook_short(engine: str, tmp_path: Path) -> None:
    out = tmp_path / "stopping"
    h = start(engine, sleeping_stop(out), stop_timeout_ms=60_000)
    h.ctrl.send(frame(M.MSG_SHUTDOWN, 0))
    pid = int(wait_for_file(out))
    started = time.monotonic()
    assert h.close() == 0
    assert time.monotonic() - started < 3
    assert gone(pid)
    finish(h)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_stop_hook_that_raises_leaves_the_hosts_exit_alone(engine: str) -> None:
    def stop() -> None:
        raise RuntimeError("raised in the stop hook")
    h = start(engine, stop)
    assert shutdown(h) == 0
    finish(h)


def test_load_must_give_a_callable_stop_hook() -> None:
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            M.serve_fork(-1, None, [], load=lambda: (echo_runner, "not callable"), gc_freeze=gc.freeze)
        except TypeError as exc:
            code = 0 if "the stop hook must be callable, not str" in str(exc) else 4
        except BaseException:  # noqa: BLE001 - reported through the exit status
            code = 5
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
