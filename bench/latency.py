"""Sequential latency of the hello tenant: mayflyd (fork engine, then reset
engine) against an unsandboxed aiohttp server calling the same program
in-process.

    python -m bench.latency [--requests N]

All servers run on this machine, one after the other, measured by the same
keep-alive client; the figure that matters is the ratio, not the absolutes.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "config" / "programs" / "hello_pythran.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


def measure(port: int, requests: int, host: str) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port)
    samples = []
    for i in range(requests + 50):
        start = time.perf_counter()
        conn.request("GET", "/", headers={"Host": host})
        response = conn.getresponse()
        body = response.read()
        elapsed = time.perf_counter() - start
        if response.status != 200 or not body.startswith(b"\tthis is"):
            raise SystemExit(f"unexpected answer {response.status}: {body[:100]!r}")
        if i >= 50:  # warm-up
            samples.append(elapsed * 1e6)
    conn.close()
    return samples


BASELINE = textwrap.dedent('''
    import importlib.util, sys
    from aiohttp import web
    spec = importlib.util.spec_from_file_location("hello", sys.argv[1])
    program = importlib.util.module_from_spec(spec); spec.loader.exec_module(program)
    program.on_init()
    async def handle(request):
        content_type, body = program.on_client_request()()
        return web.Response(body=body.encode(), headers={"Content-Type": content_type})
    app = web.Application(); app.router.add_route("*", "/{tail:.*}", handle)
    # With argv[3]: one of several processes on the port (SO_REUSEPORT), which
    # creates the file argv[3] once it listens.
    ready = sys.argv[3] if len(sys.argv) > 3 else None
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), reuse_port=bool(ready), access_log=None,
                print=(lambda _: open(ready, "w").close()) if ready else None)
''')


def _run(cmd: list[str], port: int, requests: int, host: str) -> list[float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port, proc)
        return measure(port, requests, host)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _summary(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.99) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        baseline_script = Path(tmp) / "baseline.py"
        baseline_script.write_text(BASELINE)
        port = _free_port()
        base = _run([sys.executable, str(baseline_script), str(SEED), str(port)], port, args.requests, "x")
        config = Path(tmp) / "config"
        shutil.copytree(REPO / "config", config)
        # The bundled config with every tenant on one engine, then the other.
        bundled = (config / "mayflyd.yaml").read_text()
        if "engine: auto" not in bundled:
            raise SystemExit("bench.latency: the bundled config no longer says 'engine: auto'")
        paths = {}
        for engine in ("fork", "reset"):
            paths[engine] = config / f"mayflyd-{engine}.yaml"
            paths[engine].write_text(bundled.replace("engine: auto", f"engine: {engine}"))
        runs = {}
        for engine, path in paths.items():
            port = _free_port()
            runs[engine] = _run([sys.executable, "-m", "mayflyd", "serve", "--config", str(path),
                                 "--listen", f"127.0.0.1:{port}"], port, args.requests, "hello.localhost")
    (b50, b99), (f50, f99), (r50, r99) = _summary(base), _summary(runs["fork"]), _summary(runs["reset"])
    print(f"machine: {os.cpu_count()} cores; {args.requests} sequential keep-alive GETs of the seed program")
    print(f"{'server':<28}{'median us':>12}{'p99 us':>12}")
    print(f"{'unsandboxed aiohttp':<28}{b50:>12.0f}{b99:>12.0f}")
    print(f"{'mayflyd fork engine':<28}{f50:>12.0f}{f99:>12.0f}")
    print(f"{'mayflyd reset engine':<28}{r50:>12.0f}{r99:>12.0f}")
    print(f"ratio fork/unsandboxed: median {f50 / b50:.1f}x, p99 {f99 / b99:.1f}x; "
          f"sandbox overhead per request (median) {f50 - b50:.0f} us")
    print(f"ratio reset/unsandboxed: median {r50 / b50:.1f}x, p99 {r99 / b99:.1f}x; "
          f"sandbox overhead per request (median) {r50 - b50:.0f} us")
    print(f"ratio reset/fork: median {r50 / f50:.2f}x, p99 {r99 / f99:.2f}x")


if __name__ == "__main__":
    main()
