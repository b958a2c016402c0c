"""The bench's proxy step: what HAProxy adds is taken against the direct row
at the same -c, and the report shows it. No timing is asserted."""
from __future__ import annotations

from typing import Any

from bench import proxy, report


def _row(role: str, connections: int, rps: float, p50: float, p99: float) -> dict[str, Any]:
    return {"role": role, "key": role, "server": role, "connections": connections,
            "wrk": {"rps": rps, "latency": {"50": p50, "99": p99}, "errors": 0, "non_2xx": 0, "socket_errors": {}}}


def test_haproxy_rows_get_added_latency_and_ratio_at_the_same_connections() -> None:
    rows = [_row("direct", 1, 1000, 0.001, 0.002), _row("direct", 64, 8000, 0.008, 0.012),
            _row("haproxy", 1, 800, 0.0013, 0.0026), _row("haproxy", 64, 4000, 0.016, 0.030)]
    proxy._add_differences(rows)
    one, many = rows[2], rows[3]
    assert round(one["added_p50_s"], 6) == 0.0003 and round(one["added_p99_s"], 6) == 0.0006
    assert one["rps_ratio"] == 0.8 and many["rps_ratio"] == 0.5
    assert "added_p50_s" not in rows[0]
    text = "\n".join(report.proxy_section({"rows": rows, "engine": "reset", "notes": []}))
    assert "## 8. HAProxy in front of a node" in text
    assert "+0.300" in text and "+0.600" in text and "0.800" in text
