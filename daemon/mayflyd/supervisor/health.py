"""Whether this node should get traffic: the answer of GET /healthz.

A load balancer polls it (admin socket and metrics_listen alike). The node
is healthy while it is not draining, its front end runs, and every tenant
that should serve has a ready host. A tenant that is down (its program
cannot load, or its host is in a crash loop) will not serve soon wherever
it runs: it fails the node only if its config says `critical: true`, so
that one broken tenant does not take every node out of the balancer. A
tenant starting or restarting its host will serve soon, on this node only
once it has: not ready. Computed from the tenants' state on each call,
without I/O.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Health", "TenantHealth", "evaluate"]


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantHealth:
    """One tenant as the health check sees it."""

    name: str
    state: str         # TenantState's value
    critical: bool
    ready: bool        # a running host able to take requests
    down: str = ""     # why no host will come soon (load failure, crash loop); "" otherwise
    reason: str = ""   # why not ready, when not down
    retry_in: float | None = None  # seconds until a down tenant's next start; 0: trying now

    def why(self) -> str:
        why = self.down or self.reason or f"state {self.state}"
        if self.retry_in is not None:
            why += f", next try in {self.retry_in:.1f} s" if self.retry_in >= 0.05 else ", trying again now"
        return why

    def fails_node(self) -> bool:
        return not self.ready and (self.critical or not self.down)


@dataclass(frozen=True, slots=True, kw_only=True)
class Health:
    healthy: bool
    body: dict[str, object]

    @property
    def http_status(self) -> int:
        return 200 if self.healthy else 503


def evaluate(*, draining: bool, front_end: str, tenants: Iterable[TenantHealth]) -> Health:
    """The node's health; front_end is FrontProcess.state ("running" when it serves)."""
    problems: list[str] = []
    if draining:
        problems.append("the daemon is draining before it stops")
    if front_end != "running":
        problems.append(f"the front end is {front_end}")
    shown: dict[str, object] = {}
    failing = False
    for tenant in tenants:
        entry: dict[str, object] = {"ready": tenant.ready, "state": tenant.state, "critical": tenant.critical}
        if not tenant.ready:
            entry["reason"] = tenant.why()
            fails = tenant.fails_node()
            failing = failing or fails
            kind = " (critical)" if tenant.critical else ""
            tail = "" if fails else " (not critical: the node stays in service)"
            problems.append(f"tenant {tenant.name!r}{kind} has no ready host: {tenant.why()}{tail}")
        shown[tenant.name] = entry
    healthy = not draining and front_end == "running" and not failing
    status = "draining" if draining else "ok" if healthy else "unhealthy"
    return Health(healthy=healthy, body={"status": status, "draining": draining, "front_end": front_end,
                                         "tenants": shown, "problems": problems})
