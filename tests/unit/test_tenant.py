"""A Tenant's own bookkeeping, without hosts: its backoff and its counts."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mayflyd.config import parse_config
from mayflyd.supervisor.metrics import Metrics
from mayflyd.supervisor.tenant import BACKOFF_MAX, Tenant, TenantState, Walls


@pytest.fixture
def tenant(tmp_path: Path) -> Tenant:
    (tmp_path / "p.py").write_text("def on_client_request(request):\n    return 'x'\n")
    config = parse_config("tenants:\n  - {name: t, hosts: [t], program: p.py}\n", source="test", base_dir=tmp_path)
    walls = Walls(mode="none", cgroup_version=0, cgroup_base="", cgroup_prefix="test", seccomp=False)
    return Tenant(config.tenants[0], walls, Metrics())


async def test_back_off_waits_says_why_and_doubles_up_to_the_ceiling(
        tenant: Tenant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with caplog.at_level(logging.WARNING, logger="mayflyd.tenant"):
        assert await tenant._back_off(0.1, "the host died", logging.WARNING, "host died") == 0.2
        assert await tenant._back_off(20.0, "boom", logging.ERROR, "the program failed to load: boom") == BACKOFF_MAX
    assert waited == [0.1, 20.0]
    assert (tenant.state, tenant.last_error) == (TenantState.BACKOFF, "boom")
    assert [r.getMessage() for r in caplog.records] == ["host died; restarting in 0.1s",
                                                        "the program failed to load: boom; restarting in 20.0s"]


def test_errors_are_failures_and_refusals_not_the_programs_4xx(tenant: Tenant) -> None:
    for status, by_program in [(200, True), (404, True), (400, True), (500, True), (503, True),
                               (502, False), (504, False), (413, False), (408, False), (431, False)]:
        tenant.request_done(status, 0.01, by_program=by_program)
    assert (tenant.errors, tenant.program_4xx) == (7, 2)
    status = tenant.status()
    assert (status["errors"], status["program_4xx"]) == (7, 2)
    assert sum(status["requests"].values()) == 10  # type: ignore[attr-defined]
