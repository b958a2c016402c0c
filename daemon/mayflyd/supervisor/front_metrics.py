"""The front end's per-tenant counters, read from the memory area it writes.

mayflyd-front counts every answer into a memfd the supervisor creates here
and passes it as ``--metrics-fd`` (kept across front-end restarts, so the
counters survive one). The layout is csrc/wire/front_metrics.h's: a head,
then one record per (front-end thread, tenant slot), each written by one
thread only; a reader sums a slot's records over the threads. No Python
runs per request: the Prometheus collector below reads the area when
scraped. tests/unit/test_front_metrics.py checks that both sides agree.
"""
from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

# How prometheus_client's own Histogram writes `le` (untyped there).
_le: Callable[[float], str] = floatToGoString

__all__ = [
    "COST_BOUNDS_US",
    "DURATION_BOUNDS_US",
    "HEAD",
    "LIMITS",
    "MAGIC",
    "MAX_SLOTS",
    "MAX_THREADS",
    "PAGES_BOUNDS",
    "RECORD_FIELDS",
    "RECORD_SIZE",
    "VERSION",
    "FrontMetrics",
    "FrontMetricsCollector",
    "Histogram",
    "TenantCounts",
]

MAGIC: Final = b"MFMETRIC"
VERSION: Final = 1
MAX_SLOTS: Final = 4096    # MF_METRICS_MAX_SLOTS: tenant names over the daemon's lifetime
MAX_THREADS: Final = 1024  # MF_METRICS_MAX_THREADS

# struct mf_metrics_head: magic, version, threads, slots, record_size, reserved.
HEAD: Final = struct.Struct("=8sIIIIQ")

# Upper bounds of the histogram buckets; a last bucket, +inf, follows each.
DURATION_BOUNDS_US: Final = (100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000,
                             250000, 500000, 1000000, 2500000, 5000000, 10000000, 30000000)
COST_BOUNDS_US: Final = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000)
PAGES_BOUNDS: Final = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)

# enum mf_metrics_limit, in order: the label values of mayflyd_limit_hits_total.
LIMITS: Final = ("max_body", "request_timeout_ms", "concurrency", "request_cpu_ms", "memory",
                 "max_response", "queue", "reserved")

# struct mf_metrics_record: (field, number of uint64) in order.
RECORD_FIELDS: Final[tuple[tuple[str, int], ...]] = (
    ("status", 500), ("duration_bucket", len(DURATION_BOUNDS_US) + 1), ("duration_sum_us", 1),
    ("duration_count", 1), ("cost_bucket", len(COST_BOUNDS_US) + 1), ("cost_sum_us", 1), ("cost_count", 1),
    ("pages_bucket", len(PAGES_BOUNDS) + 1), ("pages_sum", 1), ("pages_count", 1), ("limit", len(LIMITS)),
    ("errors", 1), ("program_4xx", 1), ("in_flight", 1),
)
_WORD: Final = 8
RECORD_WORDS: Final = sum(n for _, n in RECORD_FIELDS)
RECORD_SIZE: Final = RECORD_WORDS * _WORD


def _field_offsets() -> dict[str, slice]:
    offsets: dict[str, slice] = {}
    at = 0
    for name, n in RECORD_FIELDS:
        offsets[name] = slice(at, at + n)
        at += n
    return offsets


_AT: Final = _field_offsets()  # field -> its words within a record


@dataclass(frozen=True, slots=True, kw_only=True)
class Histogram:
    buckets: tuple[int, ...]  # per bucket, not cumulative; the last one is +inf
    sum: int
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TenantCounts:
    """One slot's counters, summed over the front end's threads."""

    statuses: Mapping[int, int]  # status -> answers (only those seen)
    duration_us: Histogram
    cost_us: Histogram
    pages: Histogram             # reset engine only
    limits: Mapping[str, int]    # LIMITS name -> hits (only those hit)
    errors: int
    program_4xx: int
    in_flight: int


def _histogram(words: list[int], buckets: str, total: str, count: str) -> Histogram:
    return Histogram(buckets=tuple(words[_AT[buckets]]), sum=words[_AT[total].start], count=words[_AT[count].start])


class FrontMetrics:
    """The supervisor's side of the area: creates, heads and reads it."""

    __slots__ = ("threads", "slots", "_fd", "_map", "_words")

    def __init__(self, threads: int, slots: int = MAX_SLOTS) -> None:
        if not 1 <= threads <= MAX_THREADS or not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"{threads} threads and {slots} slots: 1..{MAX_THREADS} and 1..{MAX_SLOTS}")
        self.threads = threads
        self.slots = slots
        size = HEAD.size + threads * slots * RECORD_SIZE
        # Unwritten pages of a memfd cost nothing: only slots in use take memory.
        self._fd = os.memfd_create("mayflyd-front-metrics", os.MFD_CLOEXEC)
        try:
            os.ftruncate(self._fd, size)
            os.pwrite(self._fd, HEAD.pack(MAGIC, VERSION, threads, slots, RECORD_SIZE, 0), 0)
            # Read only here: only the front end writes the counters.
            self._map = mmap.mmap(self._fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except BaseException:
            os.close(self._fd)
            raise
        self._words = memoryview(self._map).cast("Q")

    def fd(self) -> int:
        """The memfd, for the front end's --metrics-fd (pass_fds)."""
        return self._fd

    def snapshot(self, slot: int) -> TenantCounts:
        """The slot's counters, summed over the threads."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"slot {slot} is not in 0..{self.slots - 1}")
        words = [0] * RECORD_WORDS
        for thread in range(self.threads):
            start = HEAD.size // _WORD + (thread * self.slots + slot) * RECORD_WORDS
            words = [a + b for a, b in zip(words, self._words[start:start + RECORD_WORDS].tolist(), strict=True)]
        # in_flight is two's complement: each thread adds and subtracts its own.
        in_flight = words[_AT["in_flight"].start] % 2**64
        statuses = words[_AT["status"]]
        limits = words[_AT["limit"]]
        return TenantCounts(
            statuses={100 + i: n for i, n in enumerate(statuses) if n},
            duration_us=_histogram(words, "duration_bucket", "duration_sum_us", "duration_count"),
            cost_us=_histogram(words, "cost_bucket", "cost_sum_us", "cost_count"),
            pages=_histogram(words, "pages_bucket", "pages_sum", "pages_count"),
            limits={name: n for name, n in zip(LIMITS, limits, strict=True) if n},
            errors=words[_AT["errors"].start], program_4xx=words[_AT["program_4xx"].start],
            in_flight=in_flight - 2**64 if in_flight >= 2**63 else in_flight)

    def clear(self, slot: int) -> None:
        """Zero a slot for its next tenant (the front end no longer writes it: no table names it)."""
        zeros = bytes(RECORD_SIZE)
        for thread in range(self.threads):
            os.pwrite(self._fd, zeros, HEAD.size + (thread * self.slots + slot) * RECORD_SIZE)

    def close(self) -> None:
        self._words.release()
        self._map.close()
        os.close(self._fd)


def _buckets(histogram: Histogram, bounds: tuple[int, ...], scale: float) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs, as prometheus_client's own Histogram labels them."""
    out: list[tuple[str, float]] = []
    total = 0
    for bound, n in zip((*bounds, None), histogram.buckets, strict=True):
        total += n
        out.append(("+Inf" if bound is None else _le(bound / scale), float(total)))
    return out


class FrontMetricsCollector:
    """A prometheus_client collector of the front end's per-tenant series.

    Register it on Metrics.registry; `tenants` gives the current tenant ->
    slot map (a removed tenant's series vanish with it). The names and
    labels are those the Python front end's per-request series had, plus
    mayflyd_requests_in_flight.
    """

    __slots__ = ("_area", "_tenants")

    def __init__(self, area: FrontMetrics, tenants: Callable[[], Mapping[str, int]]) -> None:
        self._area = area
        self._tenants = tenants

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily("mayflyd_requests", "Requests answered, by tenant and HTTP status",
                                       labels=["tenant", "status"])
        errors = CounterMetricFamily("mayflyd_request_errors", "Requests a tenant failed to serve: 5xx answers "
                                     "and the daemon's refusals for a limit (not the 4xx its program returned)",
                                     labels=["tenant"])
        duration = HistogramMetricFamily("mayflyd_request_duration_seconds", "Time to answer a request",
                                         labels=["tenant"])
        cost = HistogramMetricFamily("mayflyd_sandbox_cost_seconds",
                                     "The host's own cost of isolating one request (its fork, or its rewind)",
                                     labels=["tenant"])
        pages = HistogramMetricFamily("mayflyd_rewound_pages", "Pages copied back after one request (reset engine)",
                                      labels=["tenant"])
        limits = CounterMetricFamily("mayflyd_limit_hits", "Requests stopped by a tenant limit",
                                     labels=["tenant", "limit"])
        in_flight = GaugeMetricFamily("mayflyd_requests_in_flight", "Requests the front end is serving",
                                      labels=["tenant"])
        for tenant, slot in sorted(self._tenants().items()):
            counts = self._area.snapshot(slot)
            for status, n in sorted(counts.statuses.items()):
                requests.add_metric([tenant, str(status)], n)
            errors.add_metric([tenant], counts.errors)
            duration.add_metric([tenant], _buckets(counts.duration_us, DURATION_BOUNDS_US, 1e6),
                                counts.duration_us.sum / 1e6)
            cost.add_metric([tenant], _buckets(counts.cost_us, COST_BOUNDS_US, 1e6), counts.cost_us.sum / 1e6)
            if counts.pages.count:  # fork-engine tenants rewind nothing
                pages.add_metric([tenant], _buckets(counts.pages, PAGES_BOUNDS, 1), counts.pages.sum)
            for name, n in counts.limits.items():
                limits.add_metric([tenant, name], n)
            in_flight.add_metric([tenant], counts.in_flight)
        yield from (requests, errors, duration, cost, pages, limits, in_flight)
