"""6. The reset engine's rewind, measured through the daemon: its time and
the pages it copies back per request, for three programs, and an idle
reset tenant's memory with one and with two live workers.

The daemon's metrics are histograms whose buckets (10, 25, 50, 100, 250
us; 32, 64, 128 pages) are too coarse for a median, and no other
per-request source exists (the access log has no rewind cost). Their
_sum and _count are exact, though (integer microseconds and pages), so
requests are sent one at a time and the metrics read after each: the
differences are that one request's rewind time and pages. A rewind
between idle gaps can run with colder caches than one under load.
"""
from __future__ import annotations

import http.client
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import admin_metrics, servers, wrk
from bench.common import SEED, Pinning
from bench.measures import _pss_of_tree, _status

PROGRAMS_DIR = Path(__file__).resolve().parent / "programs"
# The router's requests: every route once, and a miss (404).
ROUTER_TARGETS = ("/", "/health", "/users", "/users/42", "/users/42/posts", "/users/42/posts/7", "/items/lamp",
                  "/items/lamp/reviews", "/search/rewind", "/version", "/missing")


@dataclass(frozen=True)
class BenchProgram:
    name: str
    path: Path
    targets: tuple[str, ...]


PROGRAMS = (
    BenchProgram("seed (hello)", SEED, ("/",)),
    BenchProgram("json, imports in the handler, 2 KB answer", PROGRAMS_DIR / "json_lazy.py", ("/",)),
    BenchProgram("router, 10 routes (re), JSON body", PROGRAMS_DIR / "router.py", ROUTER_TARGETS),
)


@dataclass(frozen=True)
class Totals:
    """A tenant's rewinds so far: how many, their time, their pages."""

    count: int
    cost_s: float
    pages: float


def totals(text: str, tenant: str) -> Totals:
    """The rewind totals of one tenant in a /metrics text."""
    cost = admin_metrics.histogram(text, "mayflyd_sandbox_cost_seconds", tenant=tenant)
    pages = admin_metrics.histogram(text, "mayflyd_rewound_pages", tenant=tenant)
    return Totals(cost.count, cost.total, pages.total)


def one_request(before: Totals, after: Totals) -> tuple[float, float] | None:
    """(rewind us, pages) of the one request between two reads; None when
    not exactly one rewind happened in between."""
    if after.count - before.count != 1:
        return None
    return round((after.cost_s - before.cost_s) * 1e6, 1), after.pages - before.pages


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summarize(samples: list[tuple[float, float]]) -> dict[str, Any]:
    """Median, p99 and mean of the rewind times; median and p99 of the pages."""
    if not samples:
        return {"requests": 0}
    costs = [c for c, _ in samples]
    pages = [p for _, p in samples]
    return {"requests": len(samples), "median_us": statistics.median(costs), "p99_us": percentile(costs, 99),
            "mean_us": statistics.mean(costs), "pages_median": statistics.median(pages),
            "pages_p99": percentile(pages, 99)}


# Left to the rewind, which starts once the answer has gone, before the
# metrics are read: reading them wakes the supervisor, which shares the
# server's core and would otherwise preempt the rewind it is timing.
REWIND_ROOM_S = 0.003


def _next_totals(admin_socket: str, tenant: str, before: Totals, timeout: float = 5.0) -> Totals:
    """The totals once the rewind of the request just answered is counted
    (the worker reports it after the answer has gone)."""
    time.sleep(REWIND_ROOM_S)
    deadline = time.monotonic() + timeout
    while True:
        now = totals(admin_metrics.fetch(admin_socket), tenant)
        if now.count > before.count or time.monotonic() > deadline:
            return now
        time.sleep(0.001)


def per_request(pin: Pinning, program: BenchProgram, requests: int, log: Callable[[str], None]) -> dict[str, Any]:
    """One reset tenant with one worker serving program; requests sent one
    at a time, the metrics read after each."""
    tenants = servers.hello_tenants(1, program=program.path, engine="reset", pool=1)
    with servers.mayflyd(pin, tenants, engine="reset") as server:
        admin = server.admin_socket or ""
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        statuses: dict[int, int] = {}
        sizes: list[int] = []

        def get(i: int) -> None:
            conn.request("GET", program.targets[i % len(program.targets)], headers={"Host": server.host_header})
            response = conn.getresponse()
            sizes.append(len(response.read()))
            statuses[response.status] = statuses.get(response.status, 0) + 1

        for i in range(20):  # warm-up: the front end's and the host's first requests
            get(i)
        samples: list[tuple[float, float]] = []
        skipped = 0
        before = _next_totals(admin, "t0", Totals(0, 0.0, 0.0), timeout=1.0)
        for i in range(requests):
            get(i)
            after = _next_totals(admin, "t0", before)
            sample = one_request(before, after)
            if sample is None:
                skipped += 1
            else:
                samples.append(sample)
            before = after
        conn.close()
    result = {"program": program.name, "file": program.path.name, **summarize(samples), "skipped": skipped,
              "statuses": {str(k): v for k, v in sorted(statuses.items())},
              "answer_bytes_median": statistics.median(sizes) if sizes else None}
    log(f"rewind, {program.name}: median {result.get('median_us', math.nan):.0f} us, "
        f"p99 {result.get('p99_us', math.nan):.0f} us, {result.get('pages_median', math.nan):.0f} pages")
    return result


def _workers(host_pid: int) -> int:
    import psutil
    try:
        return len(psutil.Process(host_pid).children())
    except psutil.Error:
        return 0


def density(pin: Pinning, log: Callable[[str], None], load_s: float = 1.0) -> dict[str, Any]:
    """An idle reset tenant (seed program, pool 2)'s PSS: its host and
    workers, after one request (one worker), then after a concurrent load
    that makes the host start the second."""
    tenants = servers.hello_tenants(1, engine="reset", pool=2)
    with servers.mayflyd(pin, tenants, engine="reset") as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/", headers={"Host": server.host_header})
        conn.getresponse().read()
        conn.close()
        time.sleep(0.5)
        host = _status(server)["tenants"]["t0"]["hosts"][0]["pid"]
        one = {"workers": _workers(host), "pss_mb": _pss_of_tree(host) / 2**20}
        wrk.run(pin, server.port, connections=8, duration_s=load_s, host=server.host_header)
        time.sleep(0.5)
        two = {"workers": _workers(host), "pss_mb": _pss_of_tree(host) / 2**20}
    result = {"one_worker": one, "two_workers": two, "second_worker_mb": two["pss_mb"] - one["pss_mb"],
              "ratio": two["pss_mb"] / one["pss_mb"] if one["pss_mb"] else None}
    log(f"rewind density: {one['pss_mb']:.2f} MiB with {one['workers']} worker(s), "
        f"{two['pss_mb']:.2f} MiB with {two['workers']}")
    return result


def measure(pin: Pinning, requests: int, log: Callable[[str], None]) -> dict[str, Any]:
    return {"programs": [per_request(pin, p, requests, log) for p in PROGRAMS], "density": density(pin, log)}
