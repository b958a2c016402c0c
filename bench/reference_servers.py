"""The servers mayflyd is measured against that are not of its shape: what a
user would run instead, and the front-end limit of the machine.

g. ``granian``: granian (a Rust HTTP server) calling the program in-process
   through its native RSGI interface, the fastest unsandboxed Python server
n. ``nginx``: ``return 200 "hello"``, no Python at all
a×N. ``aiohttp_processes``: server a's script in N processes on one port
   (SO_REUSEPORT), for the all-cores table

Each takes a worker count (1 for the pinned rows, one per core for the
all-cores table) and raises Unavailable, before starting anything, if its
software is not installed; the harness then skips the row and says why.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import SEED, Pinning, free_port
from bench.latency import BASELINE
from bench.servers import RunningServer, run_server, stop

# An RSGI application answering every request with the program's handler.
_GRANIAN_APP = textwrap.dedent('''
    import importlib.util, os
    spec = importlib.util.spec_from_file_location("hello", os.environ["MFB_PROGRAM"])
    program = importlib.util.module_from_spec(spec); spec.loader.exec_module(program)
    program.on_init()
    async def app(scope, proto):
        content_type, body = program.on_client_request()()
        proto.response_str(200, [("content-type", content_type)], body)
''')

# nginx in the foreground on its own prefix: every path it writes is in the temp dir.
_NGINX_CONF = textwrap.dedent('''
    daemon off;
    worker_processes %(workers)d;
    pid %(tmp)s/nginx.pid;
    error_log %(tmp)s/error.log warn;
    events { worker_connections 1024; }
    http {
        access_log off;
        client_body_temp_path %(tmp)s/body;
        proxy_temp_path %(tmp)s/proxy;
        fastcgi_temp_path %(tmp)s/fastcgi;
        uwsgi_temp_path %(tmp)s/uwsgi;
        scgi_temp_path %(tmp)s/scgi;
        server {
            listen 127.0.0.1:%(port)d;
            location / {
                default_type text/plain;
                return 200 "hello";
            }
        }
    }
''')

NGINX_INSTALL = "apt-get install nginx-light"


class Unavailable(RuntimeError):
    """The server's software is not installed: the row is skipped."""


def _plural(workers: int, noun: str) -> str:
    return f"{workers} {noun}" + ("" if workers == 1 else "es" if noun.endswith("s") else "s")


@contextlib.contextmanager
def granian(pin: Pinning, workers: int = 1, program: Path = SEED) -> Iterator[RunningServer]:
    """g. granian, RSGI, `workers` worker processes (plus its idle main one)."""
    if importlib.util.find_spec("granian") is None:
        raise Unavailable("granian is not installed (pip install '.[bench]')")
    with tempfile.TemporaryDirectory(prefix="mfb-") as tmp:
        (Path(tmp) / "granian_app.py").write_text(_GRANIAN_APP)
        port = free_port()
        cmd = [*pin.server, sys.executable, "-m", "granian", "--interface", "rsgi", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--no-ws", "--no-access-log",
               "--log-level", "warning", "--working-dir", tmp, "granian_app:app"]
        env = {**os.environ, "MFB_PROGRAM": str(program)}
        with run_server(f"g. granian RSGI, {_plural(workers, 'worker')}", cmd, port, "x", env=env) as server:
            yield server


@contextlib.contextmanager
def nginx(pin: Pinning, workers: int = 1) -> Iterator[RunningServer]:
    """n. nginx answering `return 200 "hello"`, `workers` worker processes."""
    exe = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")  # sbin: off a user's PATH
    if exe is None:
        raise Unavailable(f"nginx is not installed ({NGINX_INSTALL})")
    with tempfile.TemporaryDirectory(prefix="mfb-") as tmp:
        port = free_port()
        conf = Path(tmp) / "nginx.conf"
        conf.write_text(nginx_config(tmp, port, workers))
        cmd = [*pin.server, exe, "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"]
        with run_server(f"n. nginx return 200, {_plural(workers, 'worker')}", cmd, port, "x") as server:
            yield server


def nginx_config(tmp: str, port: int, workers: int) -> str:
    """The whole nginx.conf: foreground, no access log, paths under tmp."""
    return _NGINX_CONF % {"tmp": tmp, "port": port, "workers": workers}


@contextlib.contextmanager
def aiohttp_processes(pin: Pinning, processes: int, program: Path = SEED) -> Iterator[RunningServer]:
    """a×N. Server a's script in `processes` processes sharing the port with
    SO_REUSEPORT; yields once every one of them listens."""
    with tempfile.TemporaryDirectory(prefix="mfb-") as tmp, contextlib.ExitStack() as stack:
        script = Path(tmp) / "baseline.py"
        script.write_text(BASELINE)
        port = free_port()
        started = time.monotonic()
        procs = []
        for i in range(processes):
            ready = Path(tmp) / f"ready{i}"
            proc = subprocess.Popen([*pin.server, sys.executable, str(script), str(program), str(port), str(ready)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            stack.callback(stop, proc)
            procs.append((proc, ready))
        for proc, ready in procs:
            _wait_file(ready, proc)
        yield RunningServer(f"a. aiohttp, {_plural(processes, 'process')} (SO_REUSEPORT)", port, "x", procs[0][0],
                            time.monotonic() - started)


def _wait_file(path: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not listen within {timeout:g} s")
        time.sleep(0.02)
