"""The bench's apps step: the config of an app tenant, the baselines' answers,
ratios to the pair's baseline against the target, and a server that fails
to start reported as a FAILED row while the step goes on. No timing is
asserted."""
from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as cli
from bench import apps, report, servers
from bench.common import Pinning
from bench.reference_servers import Unavailable

NO_PIN = Pinning((), (), "none")


def _row(app: str, role: str, connections: int, rps: float, p99: float) -> dict[str, Any]:
    return {"app": app, "role": role, "key": f"{app}:{role}", "server": f"{app}: {role}", "connections": connections,
            "wrk": {"rps": rps, "latency": {"50": p99 / 2, "99": p99}, "errors": 0, "non_2xx": 0,
                    "socket_errors": {}}}


def test_an_app_tenant_is_written_with_app_and_interface(tmp_path: Path) -> None:
    tenant = servers.TenantSpec(name="t0", program=apps.APPS[1].path, hosts=["t0.bench.localhost"],
                                engine="reset", app="fastapi_hello:app", interface="asgi")
    config = json.loads(servers.write_config(tmp_path, [tenant], 8123, "/tmp/x.sock").read_text())
    (written,) = config["tenants"]
    assert (written["app"], written["interface"], written["engine"]) == ("fastapi_hello:app", "asgi", "reset")
    assert "program" not in written


def test_ratios_are_to_the_same_apps_baseline_at_the_same_connections() -> None:
    rows = [_row("flask", "baseline", 1, 1000, 0.002), _row("flask", "mayflyd", 1, 800, 0.0025),
            _row("flask", "baseline", 64, 1000, 0.100), _row("flask", "mayflyd", 64, 600, 0.100),
            _row("fastapi", "baseline", 1, 4000, 0.001), _row("fastapi", "mayflyd", 1, 3000, 0.002),
            _row("fastapi", "mayflyd", 64, 3000, 0.002)]
    apps._add_ratios(rows)
    mayflyd = [(r["rps_ratio"], r["p99_ratio"], r["meets_target"]) for r in rows[1::2]]
    assert mayflyd == [(0.8, 1.25, True), (0.6, 1.0, False), (0.75, 2.0, False)]
    assert "rps_ratio" not in rows[-1]  # no baseline at -c64: no ratio
    table = [line for line in report.apps_section({"rows": rows, "target": apps.TARGET}) if line.startswith("|")]
    assert table[0].startswith("| server | conns | req/s | req/s ratio to baseline |") and "meets 0.7x" in table[0]
    assert table[3] == "| flask: mayflyd | -c1 | 800 | 0.800 | 1.25 | 2.50 | 1.25x | yes | 0 | - | ok |"
    assert table[5].split(" | ")[7] == "**no**" and table[-1].split(" | ")[3:8] == ["-", "1.00", "2.00", "-", "-"]


def test_a_server_that_fails_is_a_failed_row_and_the_step_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    @contextlib.contextmanager
    def not_installed(pin: Pinning, app: apps.AppBench) -> Iterator[servers.RunningServer]:
        raise Unavailable("gunicorn not installed")
        yield  # pragma: no cover

    @contextlib.contextmanager
    def fails(pin: Pinning, app: apps.AppBench) -> Iterator[servers.RunningServer]:
        raise RuntimeError("GET / answered 503 b'down'")
        yield  # pragma: no cover

    monkeypatch.setattr(apps, "baseline", not_installed)
    monkeypatch.setattr(apps, "mayflyd", fails)
    said: list[str] = []
    result = apps.measure(NO_PIN, ["flask", "fastapi"], [1], 1.0, said.append)
    assert [(r["key"], r["failed"]) for r in result["rows"]] == [
        ("flask:baseline", "gunicorn not installed"), ("flask:mayflyd", "GET / answered 503 b'down'"),
        ("fastapi:baseline", "gunicorn not installed"), ("fastapi:mayflyd", "GET / answered 503 b'down'")]
    assert said[1] == "flask: mayflyd reset engine failed: GET / answered 503 b'down'"
    table = [line for line in report.apps_section(result) if line.startswith("| flask")]
    assert table[1].startswith("| flask: mayflyd reset engine | - | **FAILED**: GET / answered 503")


def test_unknown_apps_are_refused_before_anything_runs() -> None:
    with pytest.raises(SystemExit):
        cli.main(["--only", "apps", "--apps", "flask,bottle", "--out", "/nonexistent"])


@pytest.mark.parametrize("app", apps.APPS, ids=lambda a: a.name)
def test_each_baseline_serves_the_apps_hello(app: apps.AppBench) -> None:
    if any(importlib.util.find_spec(m) is None for m in app.needs):
        pytest.skip(f"{app.needs} not installed (the bench extra)")
    with apps.baseline(NO_PIN, app) as server:
        apps._check_answer(server)
