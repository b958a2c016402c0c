"""7. Real apps: a hello world in Flask (WSGI) and in FastAPI (ASGI), each
served by mayflyd's reset engine as an `app` tenant and, as its baseline in
the same run, by the server a user would run it with unsandboxed:

- Flask: gunicorn with one sync worker (its master idle beside it)
- FastAPI: uvicorn with one worker (uvloop, and httptools when installed)

Both servers of a pair serve the same file of bench/programs/, pinned to the
server core as the other rows are. A server that fails to start, or whose
first answer is not the app's, is reported as such: the other rows still run.
"""
from __future__ import annotations

import contextlib
import http.client
import importlib.util
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import measures, servers
from bench.common import Pinning, free_port
from bench.reference_servers import Unavailable
from bench.servers import RunningServer, run_server

PROGRAMS_DIR = Path(__file__).resolve().parent / "programs"
ANSWER = b"Hello, World!"
# mayflyd's req/s over the baseline's at the same -c; its p99 over the
# baseline's at most the inverse.
TARGET = 0.7


@dataclass(frozen=True)
class AppBench:
    """One framework's pair of rows."""

    name: str
    module: str           # in bench/programs/; its callable is `app`
    interface: str        # mayflyd's `interface:`
    baseline: str         # the baseline's label
    needs: tuple[str, ...]  # modules the pair imports

    @property
    def path(self) -> Path:
        return PROGRAMS_DIR / f"{self.module}.py"


APPS = (
    AppBench("flask", "flask_hello", "wsgi", "gunicorn, 1 sync worker", ("flask", "gunicorn")),
    AppBench("fastapi", "fastapi_hello", "asgi", "uvicorn, 1 worker", ("fastapi", "uvicorn")),
)


def _require(app: AppBench) -> None:
    missing = [m for m in app.needs if importlib.util.find_spec(m) is None]
    if missing:
        raise Unavailable(f"{', '.join(missing)} not installed (pip install '.[bench]')")


@contextlib.contextmanager
def baseline(pin: Pinning, app: AppBench) -> Iterator[RunningServer]:
    """The app unsandboxed, in gunicorn (WSGI) or uvicorn (ASGI)."""
    _require(app)
    port = free_port()
    if app.interface == "wsgi":
        # A sync worker answers one connection at a time and closes it after
        # each answer (no keep-alive): gunicorn's default, as deployed.
        cmd = ["-m", "gunicorn", "--workers", "1", "--worker-class", "sync", "--bind", f"127.0.0.1:{port}",
               "--log-level", "warning", "--chdir", str(PROGRAMS_DIR), f"{app.module}:app"]
    else:
        cmd = ["-m", "uvicorn", "--workers", "1", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--no-access-log", "--app-dir", str(PROGRAMS_DIR), f"{app.module}:app"]
    with run_server(f"{app.name}: {app.baseline}", [*pin.server, sys.executable, *cmd], port, "x") as server:
        yield server


@contextlib.contextmanager
def mayflyd(pin: Pinning, app: AppBench) -> Iterator[RunningServer]:
    """The app as a reset-engine tenant: `app: "<module>:app"`, `warm_up: ["/"]`
    (a user serving a framework would set it: its first-request work is done
    once, before the seal)."""
    _require(app)
    tenant = servers.TenantSpec(name="t0", program=app.path, hosts=["t0.bench.localhost"], default=True,
                                engine="reset", memory_mib=512, app=f"{app.module}:app", interface=app.interface,
                                warm_up=["/"])
    with servers.mayflyd(pin, [tenant], engine="reset") as server:
        server.label = f"{app.name}: mayflyd reset engine"
        yield server


def _check_answer(server: RunningServer) -> None:
    """One GET /: the app's answer, or RuntimeError with what came instead
    (and the server's log tail): a tenant that failed to load answers 5xx."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request("GET", "/", headers={"Host": server.host_header})
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status == 200 and body == ANSWER:
        return
    why = ""
    if server.log_path and server.log_path.exists():
        lines = server.log_path.read_text(errors="replace").splitlines()
        errors = [line.partition(" msg=")[2] for line in lines if "level=error" in line][-2:]
        why = "; the daemon logged: " + " / ".join(errors) if errors else ""
    raise RuntimeError(f"GET / answered {response.status} {body[:120]!r}{why}")


def measure(pin: Pinning, names: list[str], connections: list[int], duration_s: float,
            log: Callable[[str], None]) -> dict[str, Any]:
    """wrk against both servers of each app in `names`; ratios of mayflyd to
    its baseline at the same -c."""
    rows: list[measures.Row] = []
    costs: dict[str, Any] = {}
    for app in (a for a in APPS if a.name in names):
        servers_of: list[tuple[str, Callable[[], contextlib.AbstractContextManager[RunningServer]]]] = [
            ("baseline", lambda a=app: baseline(pin, a)),  # type: ignore[misc]
            ("mayflyd", lambda a=app: mayflyd(pin, a)),  # type: ignore[misc]
        ]
        for role, factory in servers_of:
            key = f"{app.name}:{role}"
            try:
                with factory() as server:
                    _check_answer(server)
                    for row in measures._wrk_runs(pin, server, key, connections, duration_s, costs, log):
                        rows.append({**row, "app": app.name, "role": role})
            except (Unavailable, RuntimeError) as exc:
                label = f"{app.name}: {app.baseline if role == 'baseline' else 'mayflyd reset engine'}"
                log(f"{label} failed: {exc}")
                rows.append({"app": app.name, "role": role, "key": key, "server": label, "failed": str(exc)})
    _add_ratios(rows)
    return {"rows": rows, "target": TARGET, "sandbox_cost": costs}


def _add_ratios(rows: list[measures.Row]) -> None:
    """rps_ratio and p99_ratio of every mayflyd row to its app's baseline at
    the same -c, and whether both meet the target."""
    base = {(r["app"], r["connections"]): r["wrk"] for r in rows if r["role"] == "baseline" and "wrk" in r}
    for r in rows:
        if r["role"] != "mayflyd" or "wrk" not in r or (r["app"], r["connections"]) not in base:
            continue
        b = base[(r["app"], r["connections"])]
        r["rps_ratio"] = r["wrk"]["rps"] / b["rps"] if b["rps"] else None
        p99, b99 = r["wrk"]["latency"].get("99", math.nan), b["latency"].get("99", math.nan)
        r["p99_ratio"] = None if math.isnan(p99) or math.isnan(b99) or not b99 else p99 / b99
        r["meets_target"] = (r["rps_ratio"] is not None and r["p99_ratio"] is not None
                             and r["rps_ratio"] >= TARGET and r["p99_ratio"] <= 1 / TARGET)
