"""The daemon's Prometheus metrics.

Each Metrics object owns its own CollectorRegistry: the default global
registry would be module-level state shared by every daemon (and every test)
in the process.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

__all__ = ["Metrics"]


class Metrics:
    """The daemon's Prometheus metrics, in a registry of their own.

    The per-request series (requests, durations, limit hits, sandbox costs)
    are the front end's counts in shared memory, added as a collector
    (supervisor/front_metrics.py): the supervisor does no work per request.
    """

    __slots__ = ("registry", "_hosts", "_restarts", "_reloads", "_replacements", "_zygote_starts")

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self._hosts = Gauge("mayflyd_hosts_running", "Sandbox hosts running", ["tenant"], registry=r)
        self._restarts = Counter("mayflyd_host_restarts_total", "Sandbox hosts restarted after an exit",
                                 ["tenant"], registry=r)
        self._replacements = Counter("mayflyd_reset_worker_replacements_total",
                                     "Reset-engine workers replaced because they died or could not be rewound",
                                     ["tenant"], registry=r)
        self._reloads = Counter("mayflyd_reloads_total", "Program and config reloads, by result",
                                ["kind", "result"], registry=r)
        self._zygote_starts = Counter("mayflyd_zygote_starts_total",
                                      "Zygotes started: the first, and one after each that died", registry=r)

    def add_collector(self, collector: Collector) -> None:
        self.registry.register(collector)

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

    def reload(self, kind: str, result: str) -> None:
        """kind is "program" or "config"; result is "ok" or "failed"."""
        self._reloads.labels(kind, result).inc()

    def forget_tenant(self, tenant: str) -> None:
        """Remove every series of a removed tenant, so that it does not linger
        (the collector shows configured tenants only)."""
        for metric in (self._hosts, self._replacements, self._restarts):
            try:
                metric.remove(tenant)
            except KeyError:  # this tenant never produced that series
                pass

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
