"""Read mayflyd's Prometheus metrics from its admin socket (GET /metrics,
HTTP over a Unix socket, standard library only) and summarise a histogram."""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from mayflyd.cli.admin_client import UnixHTTPConnection


def fetch(socket_path: str, timeout: float = 30.0) -> str:
    """The text of GET /metrics."""
    conn = UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        body = response.read().decode()
        if response.status != 200:
            raise RuntimeError(f"GET /metrics answered {response.status}: {body[:200]}")
        return body
    finally:
        conn.close()


@dataclass
class Histogram:
    """One Prometheus histogram series: cumulative bucket counts by upper bound."""

    name: str
    labels: dict[str, str]
    buckets: list[tuple[float, int]] = field(default_factory=list)  # (le, cumulative count)
    count: int = 0
    total: float = 0.0

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def per_bucket(self) -> list[tuple[str, int]]:
        """Non-cumulative counts with readable ranges ("50-100 us")."""
        out: list[tuple[str, int]] = []
        previous_le, previous_count = 0.0, 0
        for le, cumulative in self.buckets:
            upper = "inf" if math.isinf(le) else f"{le * 1e6:g} us"
            out.append((f"{previous_le * 1e6:g} us - {upper}", cumulative - previous_count))
            previous_le, previous_count = le, cumulative
        return out

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding quantile q (Prometheus-style, coarse)."""
        target = q * self.count
        for le, cumulative in self.buckets:
            if cumulative >= target:
                return le
        return math.inf

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["buckets"] = [["+Inf" if math.isinf(le) else le, n] for le, n in self.buckets]
        data["mean"] = None if math.isnan(self.mean) else self.mean
        return data


_LINE = re.compile(r'^(\w+)\{([^}]*)\}\s+(\S+)$')


def _labels(text: str) -> dict[str, str]:
    return dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', text))


def histogram(text: str, name: str, **match: str) -> Histogram:
    """Sum the series of histogram `name` whose labels include `match` (so
    several tenants can be summed by matching nothing)."""
    result = Histogram(name, dict(match))
    buckets: dict[float, int] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if not m or not m.group(1).startswith(name):
            continue
        labels = _labels(m.group(2))
        if any(labels.get(k) != v for k, v in match.items()):
            continue
        suffix, value = m.group(1)[len(name):], float(m.group(3))
        if suffix == "_bucket":
            le = math.inf if labels["le"] == "+Inf" else float(labels["le"])
            buckets[le] = buckets.get(le, 0) + int(value)
        elif suffix == "_count":
            result.count += int(value)
        elif suffix == "_sum":
            result.total += value
    result.buckets = sorted(buckets.items())
    return result


def sandbox_cost(socket_path: str, tenant: str | None = None) -> Histogram:
    """mayflyd_sandbox_cost_seconds for one tenant (or all tenants summed)."""
    match = {"tenant": tenant} if tenant else {}
    return histogram(fetch(socket_path), "mayflyd_sandbox_cost_seconds", **match)


def diff(after: Histogram, before: Histogram) -> Histogram:
    """after - before: the observations made between two reads."""
    prior = dict(before.buckets)
    return Histogram(after.name, after.labels, [(le, n - prior.get(le, 0)) for le, n in after.buckets],
                     after.count - before.count, after.total - before.total)


def rewound_pages(socket_path: str, tenant: str | None = None) -> Histogram:
    """mayflyd_rewound_pages (reset engine only) for one tenant (or all summed);
    its mean is the pages copied back per request."""
    match = {"tenant": tenant} if tenant else {}
    return histogram(fetch(socket_path), "mayflyd_rewound_pages", **match)
