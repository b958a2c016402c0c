"""The daemon's Prometheus metrics.

Each Metrics object owns its own CollectorRegistry: the default global
registry would be module-level state shared by every daemon (and every test)
in the process.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["Metrics"]

_Metric = Counter | Gauge | Histogram

# A request ranges from a cached answer (~100 us) to the longest timeout a
# tenant may configure (30 s).
_REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Isolating one request (a fork of a warm host) costs tens of microseconds;
# anything near 100 ms means something is badly wrong.
_SANDBOX_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                    0.01, 0.025, 0.05, 0.1)
_PAGE_BUCKETS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own."""

    __slots__ = ("registry", "_requests", "_errors", "_duration", "_sandbox_cost", "_hosts", "_restarts",
                 "_limit_hits", "_reloads", "_statuses", "_limits", "_pages", "_replacements", "_zygote_starts",
                 "_children")

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._requests = Counter("mayflyd_requests_total", "Requests answered, by tenant and HTTP status",
                                 ["tenant", "status"], registry=r)
        self._errors = Counter("mayflyd_request_errors_total", "Requests a tenant failed to serve: 5xx answers "
                               "and the daemon's refusals for a limit (not the 4xx its program returned)",
                               ["tenant"], registry=r)
        self._duration = Histogram("mayflyd_request_duration_seconds", "Time to answer a request",
                                   ["tenant"], buckets=_REQUEST_BUCKETS, registry=r)
        self._sandbox_cost = Histogram("mayflyd_sandbox_cost_seconds",
                                       "The host's own cost of isolating one request (its fork, or its rewind)",
                                       ["tenant"], buckets=_SANDBOX_BUCKETS, registry=r)
        self._hosts = Gauge("mayflyd_hosts_running", "Sandbox hosts running", ["tenant"], registry=r)
        self._restarts = Counter("mayflyd_host_restarts_total", "Sandbox hosts restarted after an exit",
                                 ["tenant"], registry=r)
        self._limit_hits = Counter("mayflyd_limit_hits_total", "Requests stopped by a tenant limit",
                                   ["tenant", "limit"], registry=r)
        self._pages = Histogram("mayflyd_rewound_pages", "Pages copied back after one request (reset engine)",
                                ["tenant"], buckets=_PAGE_BUCKETS, registry=r)
        self._replacements = Counter("mayflyd_reset_worker_replacements_total",
                                     "Reset-engine workers replaced because they died or could not be rewound",
                                     ["tenant"], registry=r)
        self._reloads = Counter("mayflyd_reloads_total", "Program and config reloads, by result",
                                ["kind", "result"], registry=r)
        self._zygote_starts = Counter("mayflyd_zygote_starts_total",
                                      "Zygotes started: the first, and one after each that died", registry=r)
        # The second label values seen per tenant, so that forget_tenant can
        # remove every series without reading prometheus_client's private fields.
        self._statuses: dict[str, set[str]] = {}
        self._limits: dict[str, set[str]] = {}
        # The labelled series the per-request calls update: labels() costs
        # more than the update itself.
        self._children: dict[tuple[_Metric, tuple[str, ...]], _Metric] = {}

    def _child(self, metric: _Metric, *labels: str) -> _Metric:
        child = self._children.get((metric, labels))
        if child is None:
            child = self._children[(metric, labels)] = metric.labels(*labels)
        return child

    def request_done(self, tenant: str, status: int, seconds: float) -> None:
        code = str(status)
        requests = self._children.get((self._requests, (tenant, code)))
        if requests is None:
            self._statuses.setdefault(tenant, set()).add(code)
            requests = self._child(self._requests, tenant, code)
        requests.inc()  # type: ignore[union-attr]
        self._child(self._duration, tenant).observe(seconds)  # type: ignore[union-attr]

    def request_failed(self, tenant: str) -> None:
        """One request the tenant failed to serve (Tenant.request_done says which)."""
        self._child(self._errors, tenant).inc()  # type: ignore[union-attr]

    def sandbox_cost(self, tenant: str, seconds: float) -> None:
        self._child(self._sandbox_cost, tenant).observe(seconds)  # type: ignore[union-attr]

    def pages_rewound(self, tenant: str, pages: int) -> None:
        self._child(self._pages, tenant).observe(pages)  # type: ignore[union-attr]

    def zygote_started(self) -> None:
        self._zygote_starts.inc()

    def worker_replaced(self, tenant: str) -> None:
        self._replacements.labels(tenant).inc()

    def host_started(self, tenant: str) -> None:
        self._hosts.labels(tenant).inc()

    def host_stopped(self, tenant: str) -> None:
        self._hosts.labels(tenant).dec()

    def host_restarted(self, tenant: str) -> None:
        self._restarts.labels(tenant).inc()

    def limit_hit(self, tenant: str, limit: str) -> None:
        self._limits.setdefault(tenant, set()).add(limit)
        self._limit_hits.labels(tenant, limit).inc()

    def reload(self, kind: str, result: str) -> None:
        """kind is "program" or "config"; result is "ok" or "failed"."""
        self._reloads.labels(kind, result).inc()

    def forget_tenant(self, tenant: str) -> None:
        """Remove every series of a removed tenant, so that it does not linger."""
        self._children = {key: child for key, child in self._children.items() if key[1][0] != tenant}
        label_sets: list[tuple[_Metric, tuple[str, ...]]] = [
            (self._errors, (tenant,)), (self._duration, (tenant,)), (self._sandbox_cost, (tenant,)),
            (self._hosts, (tenant,)), (self._pages, (tenant,)), (self._replacements, (tenant,)),
            (self._restarts, (tenant,))]
        label_sets += [(self._requests, (tenant, code)) for code in self._statuses.pop(tenant, set())]
        label_sets += [(self._limit_hits, (tenant, limit)) for limit in self._limits.pop(tenant, set())]
        for metric, labels in label_sets:
            try:
                metric.remove(*labels)
            except KeyError:  # this tenant never produced that series
                pass

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
