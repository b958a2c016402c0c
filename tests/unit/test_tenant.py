"""A Tenant's own bookkeeping, without hosts: its backoff and what it tells the front end."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from mayflyd.config import parse_config
from mayflyd.supervisor.front_metrics import Histogram, TenantCounts
from mayflyd.supervisor.host_handle import SandboxHost
from mayflyd.supervisor.metrics import Metrics
from mayflyd.supervisor.tenant import Tenant, TenantState, Walls


class FakeDataPlane:
    """What the tenant tells the front end, recorded."""

    def __init__(self) -> None:
        self.told: list[tuple[str, ...]] = []
        nothing = Histogram(buckets=(), sum=0, count=0)
        self.answered: TenantCounts | None = TenantCounts(
            statuses={}, duration_us=nothing, cost_us=nothing, pages=nothing, limits={}, errors=0,
            program_4xx=0, in_flight=0)

    def host_ready(self, tenant: str, host: SandboxHost) -> None:
        self.told.append(("ready", tenant))

    async def host_retired(self, host: SandboxHost, grace: float) -> None:
        self.told.append(("retired",))

    def host_gone(self, host: SandboxHost) -> None:
        self.told.append(("gone",))

    def tenant_starting(self, tenant: str) -> None:
        self.told.append(("starting", tenant))

    def tenant_down(self, tenant: str, reason: str) -> None:
        self.told.append(("down", tenant, reason))

    loops = 1

    def counts(self, tenant: str) -> TenantCounts:
        if self.answered is None:
            raise ValueError("operation forbidden on released memoryview object")  # a closed area
        return self.answered


@pytest.fixture
def tenant(tmp_path: Path) -> Tenant:
    (tmp_path / "p.py").write_text("def on_client_request(request):\n    return 'x'\n")
    config = parse_config("tenants:\n  - {name: t, hosts: [t], program: p.py}\n", source="test", base_dir=tmp_path)
    walls = Walls(mode="none", cgroup_version=0, cgroup_base="", cgroup_prefix="test", seccomp=False)
    return Tenant(config.tenants[0], walls, Metrics(), FakeDataPlane())


async def test_back_off_waits_and_says_why(
        tenant: Tenant, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    with caplog.at_level(logging.WARNING, logger="mayflyd.tenant"):
        await tenant._back_off(0.1, "the host died", logging.WARNING, "host died")
        await tenant._back_off(20.0, "boom", logging.ERROR, "the program failed to load: boom")
    assert waited == [0.1, 20.0]
    assert (tenant.state, tenant.last_error) == (TenantState.BACKOFF, "boom")
    assert [r.getMessage() for r in caplog.records] == ["host died; restarting in 0.1s",
                                                        "the program failed to load: boom; restarting in 20.0s"]


def test_answers_are_the_programs_and_none_once_the_counters_are_closed(tenant: Tenant) -> None:
    plane = tenant._data_plane
    assert isinstance(plane, FakeDataPlane)
    nothing = Histogram(buckets=(), sum=0, count=0)
    plane.answered = TenantCounts(statuses={200: 5, 304: 1, 404: 2, 413: 1, 502: 3, 503: 4}, duration_us=nothing,
                                  cost_us=nothing, pages=nothing, limits={"max_body": 1}, errors=8,
                                  program_4xx=2, in_flight=0)
    assert tenant._answers() == 8  # 2xx, 3xx and the program's own 4xx
    plane.answered = None
    assert tenant._answers() == 0


async def test_health_while_starting_and_backing_off(tenant: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    tenant.state = TenantState.STARTING
    starting = tenant.health()
    assert (starting.ready, starting.down, starting.reason) == (False, "", "its host is starting")
    assert starting.fails_node()
    seen = []

    async def sleep(seconds: float) -> None:
        seen.append(tenant.health())

    monkeypatch.setattr(asyncio, "sleep", sleep)
    tenant._down = "the program failed: boom"
    await tenant._back_off(1.6, "boom", logging.ERROR, "the program failed to load: boom")
    (backing_off,) = seen
    assert (backing_off.state, backing_off.down) == ("backoff", "the program failed: boom")
    assert backing_off.retry_in is not None and 1.5 < backing_off.retry_in <= 1.6
    assert not backing_off.fails_node()  # not critical: reported only
    assert tenant.health().retry_in == 0.0  # the next try has begun
    assert tenant.health().why() == "the program failed: boom, trying again now"
