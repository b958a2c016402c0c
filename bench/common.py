"""Shared helpers of the benchmark harness: paths, ports, CPU pinning, how to
run mayflyd (installed or from the source tree), and waiting for a listener."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "config" / "programs" / "hello_pythran.py"
RESULTS = Path(__file__).resolve().parent / "results"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    """Wait until 127.0.0.1:port accepts connections; the seconds it took.

    Raises RuntimeError if the process exits first or the timeout passes."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.monotonic() - start
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"server did not listen on port {port} within {timeout:g} s")


@dataclass(frozen=True)
class Pinning:
    """Where the server and the load generator run: `taskset -c` prefixes."""

    server: tuple[str, ...]
    client: tuple[str, ...]
    description: str


def pinning() -> Pinning:
    """Server on core 0 and wrk on core 1 when there are at least 2 usable
    cores and taskset exists; otherwise no pinning (and say so)."""
    cores = sorted(os.sched_getaffinity(0))
    taskset = shutil.which("taskset")
    if len(cores) >= 2 and taskset:
        s, c = cores[0], cores[1]
        return Pinning((taskset, "-c", str(s)), (taskset, "-c", str(c)),
                       f"server processes pinned to core {s}, wrk to core {c} (taskset -c)")
    why = "only 1 core" if len(cores) < 2 else "taskset not found"
    return Pinning((), (), f"not pinned ({why}): server and wrk share the CPU")


def all_cores_pinning() -> Pinning:
    """Servers and wrk both on every usable core (the all-cores table): wrk
    pinned to one core would leave the server process on that core half a
    core and the one on the other a whole one, so the kernel places both."""
    cores = ",".join(str(c) for c in sorted(os.sched_getaffinity(0)))
    taskset = shutil.which("taskset")
    if not taskset:
        return Pinning((), (), "not pinned (taskset not found): servers and wrk share every core")
    prefix = (taskset, "-c", cores)
    return Pinning(prefix, prefix, f"servers and wrk on cores {cores} (taskset -c), placed by the kernel")


def mayflyd_env() -> dict[str, str]:
    """The environment to run `sys.executable -m mayflyd` in: unchanged if
    mayflyd is importable, else with the repo's daemon/ on PYTHONPATH."""
    env = dict(os.environ)
    probe = subprocess.run([sys.executable, "-c", "import mayflyd"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe.returncode != 0:
        daemon = str(REPO / "daemon")
        env["PYTHONPATH"] = daemon + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def core_count() -> int:
    """Cores this process may run on."""
    return len(os.sched_getaffinity(0))
