from __future__ import annotations

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








def test_hosts_gauge_and_restarts() -> None:
    m = Metrics()
    m.host_started("a")
    m.host_started("a")
    m.host_stopped("a")
    m.host_restarted("a")
    assert value(m, "mayflyd_hosts_running", tenant="a") == 1
    assert value(m, "mayflyd_host_restarts_total", tenant="a") == 1


def test_reloads() -> None:
    m = Metrics()
    m.reload("program", "ok")
    m.reload("config", "failed")
    assert value(m, "mayflyd_reloads_total", kind="program", result="ok") == 1
    assert value(m, "mayflyd_reloads_total", kind="config", result="failed") == 1
    assert value(m, "mayflyd_reloads_total", kind="config", result="ok") is None


def _exercise(m: Metrics, tenant: str) -> None:
    m.host_started(tenant)
    m.host_restarted(tenant)
    m.worker_replaced(tenant)


def test_forget_tenant_removes_every_series() -> None:
    m = Metrics()
    _exercise(m, "gone")
    _exercise(m, "kept")
    m.reload("config", "ok")
    assert tenants_in(m) == {"gone", "kept"}
    m.forget_tenant("gone")
    assert tenants_in(m) == {"kept"}
    assert value(m, "mayflyd_host_restarts_total", tenant="kept") == 1
    assert value(m, "mayflyd_reloads_total", kind="config", result="ok") == 1
    m.forget_tenant("gone")       # twice is harmless
    m.forget_tenant("never-seen")
    # A tenant added again under the same name starts from zero.
    m.host_restarted("gone")
    assert value(m, "mayflyd_host_restarts_total", tenant="gone") == 1
    assert value(m, "mayflyd_reset_worker_replacements_total", tenant="gone") is None


def test_forget_tenant_with_partial_series() -> None:
    m = Metrics()
    m.host_started("a")           # only the gauge has a series for "a"
    m.forget_tenant("a")
    assert tenants_in(m) == set()


def test_two_objects_do_not_share_state() -> None:
    first, second = Metrics(), Metrics()
    first.host_restarted("a")
    assert first.registry is not second.registry
    assert value(first, "mayflyd_host_restarts_total", tenant="a") == 1
    assert value(second, "mayflyd_host_restarts_total", tenant="a") is None
    assert tenants_in(second) == set()
