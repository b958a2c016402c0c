"""Start and stop each kind of server the benchmark compares, on 127.0.0.1.

a. ``baseline``: unsandboxed aiohttp calling the program in-process
b. ``process``: aiohttp running the program in a fresh ``python3`` per request
c. ``bwrap``: as b, each process wrapped in a bubblewrap sandbox
d. ``mayflyd`` fork engine: the host forks a sandbox per request
e. ``mayflyd`` reset engine: a pool of workers, each rewound after every request
f. ``hop_floor``: mayflyd-front and its hop (a reset host's data channels and
   persistent worker channels) to a plain process, no sandbox (bench/hop_floor.py):
   the most a sandbox in another process can reach in the daemon's shape

Every server is a context manager that yields a RunningServer and always
stops what it started (SIGTERM, wait; SIGKILL only as a last resort).
"""
from __future__ import annotations

import contextlib
import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import REPO, SEED, Pinning, free_port, mayflyd_env, wait_listening
from bench.latency import BASELINE

# mayflyd's engines, in the order the benchmark tries them. An engine listed
# here but not in AVAILABLE_ENGINES is reported as "not available yet".
ENGINES: tuple[str, ...] = ("fork", "reset")
AVAILABLE_ENGINES: frozenset[str] = frozenset({"fork", "reset"})
# The report's row letter of each engine (keys stay "d:<engine>").
ENGINE_LETTERS: dict[str, str] = {"fork": "d", "reset": "e"}

# Loads the program, runs on_init() (its output to stderr), answers once on stdout.
_RUN_ONCE = textwrap.dedent('''
    import importlib.util, sys, contextlib
    spec = importlib.util.spec_from_file_location("program", sys.argv[1])
    program = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(sys.stderr):
        spec.loader.exec_module(program)
        if hasattr(program, "on_init"):
            program.on_init()
    content_type, body = program.on_client_request()()
    sys.stdout.write(content_type + "\\n" + body)
''')

# An aiohttp server that runs argv[3:] + [_RUN_ONCE, program] per request.
_PER_PROCESS = textwrap.dedent('''
    import asyncio, json, sys
    from aiohttp import web
    program, port, prefix = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    run_once = sys.argv[4]
    async def handle(request):
        proc = await asyncio.create_subprocess_exec(*prefix, "-c", run_once, program,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
        out, _ = await proc.communicate()
        if proc.returncode != 0:
            return web.Response(status=502, text="program failed")
        content_type, _, body = out.decode().partition("\\n")
        return web.Response(body=body.encode(), headers={"Content-Type": content_type})
    app = web.Application(); app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
''')

BWRAP_ARGS: tuple[str, ...] = ("--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                               "--unshare-all", "--die-with-parent", "--new-session")


@dataclass
class TenantSpec:
    """One tenant of a generated mayflyd config."""

    name: str
    program: Path  # with `app`: the app's module, a file next to the config
    hosts: list[str]
    default: bool = False
    engine: str = "fork"
    memory_mib: int = 128
    concurrency: int = 64
    uid: int | None = None
    pool: int | None = None  # reset engine: workers (None: the daemon's default, one per core)
    pool_idle_ms: int | None = None  # reset engine: idle workers retire after this (None: the default)
    app: str = ""  # "module:attribute" of a WSGI/ASGI app in `program` instead of the program contract
    interface: str = "auto"
    warm_up: list[str] = field(default_factory=list)  # targets the host sends itself before the seal


@dataclass
class RunningServer:
    """A started server: where to send requests and how to inspect it."""

    label: str
    port: int
    host_header: str
    proc: subprocess.Popen[bytes]
    startup_s: float
    admin_socket: str | None = None
    log_path: Path | None = None
    tenants: list[str] = field(default_factory=list)
    scheme: str = "http"  # "https": wrk speaks TLS to it


def stop(proc: subprocess.Popen[bytes], grace: float = 60.0) -> None:
    """SIGTERM and wait; SIGKILL if it does not exit within grace seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"warning: pid {proc.pid} ignored SIGTERM for {grace:g} s; killed", file=sys.stderr)
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def run_server(label: str, cmd: list[str], port: int, host: str, **kwargs: object) -> Iterator[RunningServer]:
    """Start cmd, wait until it listens on port, stop it on exit."""
    stderr = kwargs.pop("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, **kwargs)  # type: ignore[call-overload]
    try:
        startup = wait_listening(port, proc)
        yield RunningServer(label, port, host, proc, startup)
    finally:
        stop(proc)


@contextlib.contextmanager
def baseline(pin: Pinning, program: Path = SEED) -> Iterator[RunningServer]:
    """a. The unsandboxed aiohttp server of bench/latency.py, in-process."""
    with tempfile.TemporaryDirectory(prefix="mfb-") as tmp:
        script = Path(tmp) / "baseline.py"
        script.write_text(BASELINE)
        port = free_port()
        with run_server("a. unsandboxed aiohttp", [*pin.server, sys.executable, str(script), str(program), str(port)],
                    port, "x") as server:
            yield server


@contextlib.contextmanager
def hop_floor(pin: Pinning, program: Path = SEED) -> Iterator[RunningServer]:
    """f. mayflyd-front and its hop to an unsandboxed plain process."""
    port = free_port()
    cmd = [*pin.server, sys.executable, "-m", "bench.hop_floor", str(program), str(port)]
    with run_server("f. C front end + hop, no sandbox", cmd, port, "x", env=mayflyd_env(), cwd=REPO) as server:
        yield server


@contextlib.contextmanager
def per_process(pin: Pinning, *, bwrap: bool, program: Path = SEED) -> Iterator[RunningServer]:
    """b. a new python3 process per request; c. the same inside bwrap."""
    prefix = [sys.executable]
    label = "b. new python3 per request"
    if bwrap:
        exe = shutil.which("bwrap")
        if not exe:
            raise RuntimeError("bwrap not found")
        prefix = [exe, *BWRAP_ARGS, sys.executable]
        label = "c. bwrap sandbox per request"
    with tempfile.TemporaryDirectory(prefix="mfb-") as tmp:
        script = Path(tmp) / "per_process.py"
        script.write_text(_PER_PROCESS)
        port = free_port()
        cmd = [*pin.server, sys.executable, str(script), str(program), str(port), json.dumps(prefix), _RUN_ONCE]
        with run_server(label, cmd, port, "x") as server:
            yield server


def write_config(directory: Path, tenants: list[TenantSpec], port: int, admin_socket: str,
                 zygote: bool = True, top: dict[str, Any] | None = None) -> Path:
    """A mayflyd config of our own (JSON is YAML) with a unique cgroup prefix;
    `top`: more top-level keys."""
    config = {
        **(top or {}),
        "listen": f"127.0.0.1:{port}",
        "admin_socket": admin_socket,
        "zygote": zygote,
        "cgroup_prefix": f"mayflyd-bench-{secrets.token_hex(4)}",
        "shutdown_grace_ms": 5000,
        "tenants": [
            {"name": t.name, "hosts": t.hosts, "default": t.default,
             **({"app": t.app, "interface": t.interface} if t.app else {"program": str(t.program)}),
             "engine": t.engine,
             **({"uid": t.uid} if t.uid is not None else {}),
             **({"pool": t.pool} if t.pool is not None else {}),
             **({"pool_idle_ms": t.pool_idle_ms} if t.pool_idle_ms is not None else {}),
             **({"warm_up": t.warm_up} if t.warm_up else {}),
             "limits": {"memory": f"{t.memory_mib}MiB", "concurrency": t.concurrency,
                        "request_timeout_ms": 10000, "init_timeout_ms": 120000}}
            for t in tenants
        ],
    }
    path = directory / "mayflyd.yaml"
    path.write_text(json.dumps(config, indent=1))
    return path


def hello_tenants(count: int, program: Path = SEED, engine: str = "fork",
                  memory_mib: int = 128, pool: int | None = None,
                  pool_idle_ms: int | None = None) -> list[TenantSpec]:
    """count tenants t0..t{count-1} serving program, t0 the default; explicit
    uids so that 1000 names cannot collide on crc32-derived ones."""
    return [TenantSpec(name=f"t{i}", program=program, hosts=[f"t{i}.bench.localhost"], default=(i == 0),
                       engine=engine, memory_mib=memory_mib, uid=300000 + i, pool=pool,
                       pool_idle_ms=pool_idle_ms)
            for i in range(count)]


@contextlib.contextmanager
def mayflyd(pin: Pinning, tenants: list[TenantSpec] | None = None, *, engine: str = "fork",
            profile_to: Path | None = None, start_timeout: float = 120.0,
            zygote: bool = True, top: dict[str, Any] | None = None) -> Iterator[RunningServer]:
    """d./e. mayflyd serving the given tenants (default: one tenant t0 with the
    seed program, concurrency 64) on its own port, admin socket and cgroups;
    zygote=False starts each host as a fresh interpreter. An `app` tenant's
    module is copied next to the config, where the daemon looks for it.
    `top`: more top-level keys of the config."""
    if engine not in AVAILABLE_ENGINES:
        raise RuntimeError(f"{engine} engine: not available yet")
    tenants = tenants if tenants is not None else hello_tenants(1, engine=engine)
    tmp = Path(tempfile.mkdtemp(prefix="mfb-", dir="/tmp"))  # short: the admin socket path
    try:
        tmp.chmod(0o700)
        port = free_port()
        admin = str(tmp / "admin.sock")
        for t in tenants:
            if t.app:
                shutil.copy(t.program, tmp / t.program.name)
        config = write_config(tmp, tenants, port, admin, zygote, top)
        log_path = tmp / "mayflyd.log"
        profile = ["-m", "cProfile", "-o", str(profile_to)] if profile_to else []
        cmd = [*pin.server, sys.executable, *profile, "-m", "mayflyd", "serve", "--config", str(config)]
        with open(log_path, "wb") as log:
            started = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=mayflyd_env())
            try:
                try:
                    wait_listening(port, proc, start_timeout)
                except RuntimeError as exc:
                    log.flush()
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"mayflyd did not start ({exc}); log tail:\n{tail}") from None
                startup = time.monotonic() - started
                letter = ENGINE_LETTERS.get(engine, "d")
                yield RunningServer(f"{letter}. mayflyd {engine} engine", port, tenants[0].hosts[0], proc, startup,
                                    admin_socket=admin, log_path=log_path, tenants=[t.name for t in tenants])
            finally:
                stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
