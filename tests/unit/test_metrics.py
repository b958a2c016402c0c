from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mayflyd.supervisor.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of render(), keyed by name and label set."""
    body, _ = metrics.render()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def tenants_in(metrics: Metrics) -> set[str]:
    return {dict(labels).get("tenant", "") for _, labels in samples(metrics)} - {""}


def test_render_content_type() -> None:
    body, content_type = Metrics().render()
    assert content_type.startswith("text/plain")
    assert isinstance(body, bytes)


def test_request_done() -> None:
    m = Metrics()
    m.request_done("a", 200, 0.002)
    m.request_done("a", 200, 0.5)
    m.request_done("a", 502, 40.0)
    assert value(m, "mayflyd_requests_total", tenant="a", status="200") == 2
    assert value(m, "mayflyd_requests_total", tenant="a", status="502") == 1
    assert value(m, "mayflyd_request_duration_seconds_count", tenant="a") == 3
    assert value(m, "mayflyd_request_duration_seconds_sum", tenant="a") == pytest.approx(40.502)
    assert value(m, "mayflyd_request_duration_seconds_bucket", tenant="a", le="0.0001") == 0
    assert value(m, "mayflyd_request_duration_seconds_bucket", tenant="a", le="0.0025") == 1
    assert value(m, "mayflyd_request_duration_seconds_bucket", tenant="a", le="30.0") == 2
    assert value(m, "mayflyd_request_duration_seconds_bucket", tenant="a", le="+Inf") == 3


def test_request_failed() -> None:
    m = Metrics()
    m.request_done("a", 404, 0.01)
    assert value(m, "mayflyd_request_errors_total", tenant="a") is None
    m.request_failed("a")
    m.request_failed("a")
    assert value(m, "mayflyd_request_errors_total", tenant="a") == 2


def test_sandbox_cost() -> None:
    m = Metrics()
    m.sandbox_cost("a", 0.00003)
    assert value(m, "mayflyd_sandbox_cost_seconds_count", tenant="a") == 1
    assert value(m, "mayflyd_sandbox_cost_seconds_bucket", tenant="a", le="1e-05") == 0
    assert value(m, "mayflyd_sandbox_cost_seconds_bucket", tenant="a", le="5e-05") == 1
    assert value(m, "mayflyd_sandbox_cost_seconds_bucket", tenant="a", le="0.1") == 1


def test_hosts_gauge_and_restarts() -> None:
    m = Metrics()
    m.host_started("a")
    m.host_started("a")
    m.host_stopped("a")
    m.host_restarted("a")
    assert value(m, "mayflyd_hosts_running", tenant="a") == 1
    assert value(m, "mayflyd_host_restarts_total", tenant="a") == 1


def test_limit_hits_and_reloads() -> None:
    m = Metrics()
    m.limit_hit("a", "max_body")
    m.limit_hit("a", "max_body")
    m.limit_hit("a", "concurrency")
    m.reload("program", "ok")
    m.reload("config", "failed")
    assert value(m, "mayflyd_limit_hits_total", tenant="a", limit="max_body") == 2
    assert value(m, "mayflyd_limit_hits_total", tenant="a", limit="concurrency") == 1
    assert value(m, "mayflyd_reloads_total", kind="program", result="ok") == 1
    assert value(m, "mayflyd_reloads_total", kind="config", result="failed") == 1
    assert value(m, "mayflyd_reloads_total", kind="config", result="ok") is None


def _exercise(m: Metrics, tenant: str) -> None:
    m.request_done(tenant, 200, 0.01)
    m.request_done(tenant, 404, 0.01)
    m.request_failed(tenant)
    m.sandbox_cost(tenant, 0.0001)
    m.host_started(tenant)
    m.host_restarted(tenant)
    m.limit_hit(tenant, "max_body")
    m.limit_hit(tenant, "concurrency")


def test_forget_tenant_removes_every_series() -> None:
    m = Metrics()
    _exercise(m, "gone")
    _exercise(m, "kept")
    m.reload("config", "ok")
    assert tenants_in(m) == {"gone", "kept"}
    m.forget_tenant("gone")
    assert tenants_in(m) == {"kept"}
    assert value(m, "mayflyd_requests_total", tenant="kept", status="404") == 1
    assert value(m, "mayflyd_reloads_total", kind="config", result="ok") == 1
    m.forget_tenant("gone")       # twice is harmless
    m.forget_tenant("never-seen")
    # A tenant added again under the same name starts from zero.
    m.request_done("gone", 200, 0.01)
    assert value(m, "mayflyd_requests_total", tenant="gone", status="200") == 1
    assert value(m, "mayflyd_requests_total", tenant="gone", status="404") is None


def test_forget_tenant_with_partial_series() -> None:
    m = Metrics()
    m.host_started("a")           # only the gauge has a series for "a"
    m.forget_tenant("a")
    assert tenants_in(m) == set()


def test_two_objects_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()
    first.request_done("a", 200, 0.01)
    assert first.registry is not second.registry
    assert value(first, "mayflyd_requests_total", tenant="a", status="200") == 1
    assert value(second, "mayflyd_requests_total", tenant="a", status="200") is None
    assert tenants_in(second) == set()
