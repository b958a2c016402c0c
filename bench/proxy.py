"""8. What HAProxy in front of a node costs (docs/deploy.md): one mayflyd
node served directly (plain HTTP) and, in the same run, the same node
through HAProxy terminating TLS and sending the PROXY v2 header, with the
haproxy.cfg of the recipe (tests/haproxy_front.py). wrk speaks HTTPS to
HAProxy (HTTP/1.1, keep-alive: one TLS handshake per connection, not per
request). HAProxy runs on the server core, beside the node, as it would on
a machine of its own only if that machine were this busy: its req/s ratio
is a floor, its added latency the figure to quote.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench import measures, servers
from bench.common import Pinning, free_port
from bench.servers import RunningServer
from tests.haproxy_front import HAPROXY, HAProxy, Node, haproxy_config, make_certificate

# HAProxy connects to the node from this address, the only one the node trusts.
PROXY_SOURCE = "127.0.0.2"


@contextlib.contextmanager
def haproxy_in_front(pin: Pinning, node: RunningServer) -> Iterator[RunningServer]:
    """HAProxy on 127.0.0.1 with a fresh self-signed certificate, its one server `node`."""
    if not Path(HAPROXY).exists():
        raise RuntimeError("haproxy not installed (apt-get install haproxy)")
    with tempfile.TemporaryDirectory(prefix="mfb-haproxy-") as tmp:
        workdir = Path(tmp)
        _, bundle = make_certificate(workdir, ["bench.localhost"], ["127.0.0.1"])
        port = free_port()
        config = haproxy_config(bind=f"127.0.0.1:{port}", certificate=bundle, stats_socket=workdir / "stats.sock",
                                nodes=[Node("node", "127.0.0.1", node.port, None, PROXY_SOURCE)])
        haproxy = HAProxy(config, workdir, workdir / "stats.sock", prefix=list(pin.server)).start()
        try:
            assert haproxy.proc is not None
            yield RunningServer("mayflyd through HAProxy (TLS, PROXY v2)", port, node.host_header, haproxy.proc, 0.0,
                                admin_socket=node.admin_socket, log_path=node.log_path, tenants=node.tenants,
                                scheme="https")
        finally:
            haproxy.stop()


def measure(pin: Pinning, connections: list[int], duration_s: float, log: Callable[[str], None]) -> dict[str, Any]:
    """wrk against the node, then against HAProxy in front of it; the
    differences at each -c."""
    engine = "reset" if "reset" in servers.AVAILABLE_ENGINES else "fork"
    tenants = servers.hello_tenants(1, engine=engine)
    rows: list[measures.Row] = []
    costs: dict[str, Any] = {}
    notes: list[str] = []
    try:
        with servers.mayflyd(pin, tenants, engine=engine, top={"trusted_proxies": [f"{PROXY_SOURCE}/32"]}) as node:
            node.label = f"mayflyd {engine} engine, direct (HTTP)"
            rows += [{**r, "role": "direct"} for r in measures._wrk_runs(pin, node, "direct", connections,
                                                                        duration_s, costs, log)]
            with haproxy_in_front(pin, node) as front:
                rows += [{**r, "role": "haproxy"} for r in measures._wrk_runs(pin, front, "haproxy", connections,
                                                                             duration_s, costs, log)]
    except RuntimeError as exc:
        log(f"proxy step failed: {exc}")
        notes.append(f"failed: {exc}")
    _add_differences(rows)
    return {"rows": rows, "engine": engine, "notes": notes, "sandbox_cost": costs,
            "haproxy": shutil.which("haproxy") or HAPROXY}


def _add_differences(rows: list[measures.Row]) -> None:
    """Each HAProxy row's p50 and p99 over the direct row's at the same -c
    (added_p50_s, added_p99_s) and its req/s ratio to it."""
    direct = {r["connections"]: r["wrk"] for r in rows if r["role"] == "direct"}
    for r in rows:
        base = direct.get(r["connections"])
        if r["role"] != "haproxy" or base is None:
            continue
        lat, base_lat = r["wrk"]["latency"], base["latency"]
        for pct in ("50", "99"):
            added = lat.get(pct, math.nan) - base_lat.get(pct, math.nan)
            r[f"added_p{pct}_s"] = None if math.isnan(added) else added
        r["rps_ratio"] = r["wrk"]["rps"] / base["rps"] if base["rps"] else None
