"""GET /healthz's verdict, from tenants' states (supervisor/health.py and Tenant.health)."""
from __future__ import annotations

from typing import Any

import pytest

from mayflyd.supervisor.health import TenantHealth, evaluate

READY = TenantHealth(name="shop", state="ready", critical=False, ready=True)


def down(critical: bool, why: str = "ImportError: no module named 'x'", retry_in: float | None = 1.6) -> TenantHealth:
    return TenantHealth(name="blog", state="backoff", critical=critical, ready=False, down=why, retry_in=retry_in)


def starting(critical: bool = False) -> TenantHealth:
    return TenantHealth(name="blog", state="starting", critical=critical, ready=False,
                        reason="its host is starting (the host died)")


def body_of(**kwargs: Any) -> tuple[int, dict[str, Any]]:
    health = evaluate(**{"draining": False, "front_end": "running", "tenants": [READY], **kwargs})
    return health.http_status, health.body


def test_every_tenant_ready_is_200_with_nothing_to_say() -> None:
    assert body_of() == (200, {"status": "ok", "draining": False, "front_end": "running",
                               "tenants": {"shop": {"ready": True, "state": "ready", "critical": False}},
                               "problems": []})


def test_no_tenant_at_all_is_healthy() -> None:
    assert body_of(tenants=[])[0] == 200


def test_a_critical_tenant_down_fails_the_node_and_says_why() -> None:
    status, body = body_of(tenants=[READY, down(critical=True)])
    assert status == 503 and body["status"] == "unhealthy"
    assert body["tenants"]["blog"] == {"ready": False, "state": "backoff", "critical": True,
                                       "reason": "ImportError: no module named 'x', next try in 1.6 s"}
    assert body["problems"] == ["tenant 'blog' (critical) has no ready host: "
                                "ImportError: no module named 'x', next try in 1.6 s"]


def test_a_tenant_down_that_is_not_critical_is_reported_only() -> None:
    status, body = body_of(tenants=[READY, down(critical=False, retry_in=None)])
    assert status == 200 and body["status"] == "ok"
    assert body["tenants"]["blog"]["reason"] == "ImportError: no module named 'x'"
    assert body["problems"] == ["tenant 'blog' has no ready host: ImportError: no module named 'x'"
                                " (not critical: the node stays in service)"]


@pytest.mark.parametrize("critical", [False, True])
def test_a_tenant_starting_its_host_fails_the_node_critical_or_not(critical: bool) -> None:
    status, body = body_of(tenants=[READY, starting(critical)])
    assert status == 503 and body["status"] == "unhealthy"
    assert "its host is starting" in body["problems"][0]


@pytest.mark.parametrize("front_end", ["restarting", "starting", "stopped"])
def test_a_front_end_that_does_not_serve_fails_the_node(front_end: str) -> None:
    status, body = body_of(front_end=front_end)
    assert (status, body["status"], body["front_end"]) == (503, "unhealthy", front_end)
    assert body["problems"] == [f"the front end is {front_end}"]


def test_a_down_tenant_says_when_it_tries_again() -> None:
    assert down(critical=False, retry_in=0.04).why() == "ImportError: no module named 'x', trying again now"
    assert down(critical=False, retry_in=12.34).why() == "ImportError: no module named 'x', next try in 12.3 s"


def test_draining_is_503_whatever_else() -> None:
    status, body = body_of(draining=True)
    assert (status, body["status"], body["draining"]) == (503, "draining", True)
    assert body["problems"] == ["the daemon is draining before it stops"]
    assert body_of(draining=True, tenants=[down(critical=True)])[1]["status"] == "draining"
