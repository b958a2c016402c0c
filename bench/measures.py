"""The measures of the benchmark, each a function returning plain data (dicts
of numbers) that report.py renders: throughput/latency per server, the
sandbox's own cost, growth with heap size and tenant count, density, and a
profile breakdown of the daemon."""
from __future__ import annotations

import math
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from pathlib import Path
from typing import Any

import psutil

from bench import admin_metrics, reference_servers, servers, wrk
from bench.common import Pinning, core_count
from bench.latency import measure as sequential_latency
from bench.servers import RunningServer

Row = dict[str, Any]

# The seed's page, answered by every generated program so bench.latency's check holds.
_HEAP_PROGRAM = '''
page = """\tthis is a very
\tlong string if I had the
\tenergy to type more and more ...
"""
heap = []

def on_init():
    # %(mb)d MB of distinct 64 KiB bytes objects: every page really written.
    for i in range(%(mb)d * 16):
        heap.append(b"%%016d" %% i + bytes(65536 - 16))

def on_client_request():
    return lambda: ("text/plain", page)
'''


def _ratio(value: float | None, base: float | None) -> float | None:
    if value is None or base is None or math.isnan(value) or math.isnan(base) or not base:
        return None
    return value / base


Factories = dict[str, Callable[[], ContextManager[RunningServer]]]


def server_factories(pin: Pinning, workers: int = 1) -> Factories:
    """Every server of the throughput tables, by key ("d:<engine>" for
    mayflyd). workers > 1 (the all-cores table): a, g and n in that many
    processes; mayflyd's rows as they are."""
    factories: Factories = {
        "a": ((lambda: servers.baseline(pin)) if workers == 1
              else (lambda: reference_servers.aiohttp_processes(pin, workers))),
        "b": lambda: servers.per_process(pin, bwrap=False),
        "c": lambda: servers.per_process(pin, bwrap=True),
    }
    for engine in servers.ENGINES:
        factories[f"d:{engine}"] = (lambda e=engine: servers.mayflyd(pin, engine=e))  # type: ignore[misc]
    factories["f"] = lambda: servers.hop_floor(pin)
    factories["g"] = lambda: reference_servers.granian(pin, workers)
    factories["n"] = lambda: reference_servers.nginx(pin, workers)
    return factories


def keys_of(kinds: list[str], keys: list[str]) -> list[str]:
    """The server keys a list of row letters selects, in the order given:
    "d" is every mayflyd engine, another engine's letter ("e") that engine."""
    engines = {letter: f"d:{engine}" for engine, letter in servers.ENGINE_LETTERS.items() if letter != "d"}
    chosen = []
    for kind in kinds:
        chosen += [engines[kind]] if kind in engines else [k for k in keys if k == kind or k.startswith(kind + ":")]
    return list(dict.fromkeys(chosen))


def throughput(pin: Pinning, kinds: list[str], connections: list[int], duration_s: float,
               log: Callable[[str], None], workers: int = 1) -> dict[str, Any]:
    """1 + 2. wrk against each server kind at each connection count; ratios to
    the baseline (a) at the same -c. For mayflyd, the sandbox-cost histogram
    observed during each run (metrics diff). A server whose software is not
    installed is skipped with a note."""
    factories = server_factories(pin, workers)
    rows: list[Row] = []
    notes: list[str] = []
    costs: dict[str, Any] = {}
    for key in keys_of(kinds, list(factories)):
        if key.startswith("d:") and key[2:] not in servers.AVAILABLE_ENGINES:
            note = f"{key[2:]} engine: not available yet"
            log(note)
            notes.append(note)
            continue
        try:
            with factories[key]() as server:
                rows += _wrk_runs(pin, server, key, connections, duration_s, costs, log)
        except reference_servers.Unavailable as exc:
            note = f"row {key} skipped: {exc}"
            log(note)
            notes.append(note)
    base = {r["connections"]: r["wrk"]["rps"] for r in rows if r["key"] == "a"}
    base_p50 = {r["connections"]: r["wrk"]["latency"].get("50", math.nan) for r in rows if r["key"] == "a"}
    for r in rows:
        r["rps_ratio"] = _ratio(r["wrk"]["rps"], base.get(r["connections"], math.nan))
        r["p50_ratio"] = _ratio(r["wrk"]["latency"].get("50", math.nan), base_p50.get(r["connections"], math.nan))
    return {"rows": rows, "notes": notes, "sandbox_cost": costs}


def _wrk_runs(pin: Pinning, server: RunningServer, key: str, connections: list[int], duration_s: float,
              costs: dict[str, Any], log: Callable[[str], None]) -> list[Row]:
    """A warm-up, then one wrk run per connection count against server."""
    rows: list[Row] = []
    label = server.label
    # warm-up
    wrk.run(pin, server.port, connections=8, duration_s=1, host=server.host_header, scheme=server.scheme)
    for c in connections:
        before = admin_metrics.sandbox_cost(server.admin_socket) if server.admin_socket else None
        log_mark = _log_size(server)
        result = wrk.run(pin, server.port, connections=c, duration_s=duration_s, host=server.host_header,
                         scheme=server.scheme)
        row: Row = {"server": label, "key": key, "connections": c, "wrk": result.to_json()}
        if result.errors:
            row["server_log"] = _complaints_since(server, log_mark)
        if server.admin_socket and before is not None:
            cost = admin_metrics.diff(admin_metrics.sandbox_cost(server.admin_socket), before)
            row["sandbox_cost_mean_s"] = None if math.isnan(cost.mean) else cost.mean
            costs[f"{key} -c{c}"] = cost.to_json()
        rows.append(row)
        log(f"{label} -c{c}: {result.rps:.0f} req/s, p50 {result.latency.get('50', math.nan)*1e3:.2f} ms,"
            f" errors {result.errors}")
    return rows


def all_cores(pin: Pinning, kinds: list[str], connections: list[int], duration_s: float,
              log: Callable[[str], None], single_core: dict[str, Any] | None) -> dict[str, Any]:
    """1c. The throughput step with the servers on every core: a, g and n in
    one process per core, mayflyd as it is. Ratios to a on all cores (a×N)
    and, when the pinned step ran, to its a at the same -c."""
    workers = core_count()
    result = throughput(pin, kinds, connections, duration_s, log, workers=workers)
    result["workers"] = workers
    result["pinning"] = pin.description
    add_single_core_ratios(result, single_core)
    return result


def add_single_core_ratios(result: dict[str, Any], single_core: dict[str, Any] | None) -> None:
    """rps_ratio_1core on every row: its req/s over the pinned a's at the same -c."""
    base = {r["connections"]: r["wrk"]["rps"] for r in (single_core or {}).get("rows", []) if r["key"] == "a"}
    for r in result["rows"]:
        r["rps_ratio_1core"] = _ratio(r["wrk"]["rps"], base.get(r["connections"]))


def headline(result: dict[str, Any], connections: int = 64) -> float | None:
    """Best mayflyd engine's req/s at -c64 over the baseline's."""
    best = [r["rps_ratio"] for r in result["rows"]
            if r["key"].startswith("d:") and r["connections"] == connections and r["rps_ratio"] is not None]
    return max(best) if best else None


def heap_growth(pin: Pinning, sizes_mb: list[int], requests: int, log: Callable[[str], None],
                engines: list[str] | None = None) -> dict[str, Any]:
    """3a. Each engine's cost against the tenant's heap: sandbox cost (metrics
    mean: fork time or rewind time), sequential median latency and, for the
    reset engine, pages rewound per request. Per heap size, one sub-dict per
    engine under "engines" (ratios to the smallest heap inside it) and the
    reset/fork ratios at the top."""
    engines = engines or [e for e in servers.ENGINES if e in servers.AVAILABLE_ENGINES]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mfb-heap-") as tmp:
        for mb in sizes_mb:
            program = Path(tmp) / f"heap_{mb}mb.py"
            program.write_text(_HEAP_PROGRAM % {"mb": mb})
            row: Row = {"heap_mb": mb, "requests": requests, "engines": {}}
            for engine in engines:
                # Sequential requests need one reset worker; it keeps its own
                # snapshot of the heap, so the tenant needs the heap twice.
                pool = 1 if engine == "reset" else None
                memory = (2 * mb if engine == "reset" else mb) + 256
                tenants = servers.hello_tenants(1, program=program, engine=engine, memory_mib=memory, pool=pool)
                with servers.mayflyd(pin, tenants, engine=engine, start_timeout=180) as server:
                    samples = sequential_latency(server.port, requests, server.host_header)
                    cost = admin_metrics.sandbox_cost(server.admin_socket or "", "t0")
                    pages = (admin_metrics.rewound_pages(server.admin_socket or "", "t0")
                             if engine == "reset" else None)
                    host_pss = _pss_of_tree(_status(server)["tenants"]["t0"]["hosts"][0]["pid"])
                ordered = sorted(samples)
                sub: Row = {"startup_s": server.startup_s, "median_us": statistics.median(ordered),
                            "p99_us": ordered[int(len(ordered) * 0.99) - 1],
                            "sandbox_cost_mean_us": None if math.isnan(cost.mean) else cost.mean * 1e6,
                            "tenant_pss_mb": host_pss / 2**20, "sandbox_cost": cost.to_json()}
                if pages is not None:
                    sub["rewound_pages_mean"] = None if math.isnan(pages.mean) else pages.mean
                    sub["rewound_pages_count"] = pages.count
                row["engines"][engine] = sub
                log(f"heap {mb} MB, {engine}: median {sub['median_us']:.0f} us, sandbox cost mean "
                    f"{_fmt(sub['sandbox_cost_mean_us'])} us"
                    + (f", {_fmt(sub.get('rewound_pages_mean'), '{:.1f}')} pages rewound per request"
                       if pages is not None else ""))
            fork, reset = row["engines"].get("fork"), row["engines"].get("reset")
            if fork and reset:
                row["reset_fork_cost_ratio"] = _ratio(reset["sandbox_cost_mean_us"], fork["sandbox_cost_mean_us"])
                row["reset_fork_median_ratio"] = _ratio(reset["median_us"], fork["median_us"])
                log(f"heap {mb} MB: reset/fork sandbox cost {_fmt(row['reset_fork_cost_ratio'], '{:.2f}')}x,"
                    f" median {_fmt(row['reset_fork_median_ratio'], '{:.2f}')}x")
            rows.append(row)
    for engine in engines:
        first = rows[0]["engines"][engine] if rows else {}
        for r in rows:
            sub = r["engines"][engine]
            sub["median_ratio"] = _ratio(sub["median_us"], first["median_us"])
            sub["cost_ratio"] = _ratio(sub["sandbox_cost_mean_us"], first["sandbox_cost_mean_us"])
    return {"engines": engines, "rows": rows}


def _fmt(value: float | None, fmt: str = "{:.0f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def _status(server: RunningServer) -> dict[str, Any]:
    from mayflyd.cli.admin_client import admin_request
    code, body = admin_request(server.admin_socket, "GET", "/status")
    if code != 200:
        raise RuntimeError(f"GET /status answered {code}")
    return body


def _pss_of_tree(pid: int) -> int:
    """PSS of a process and all its descendants (a tenant: stub, host, workers)."""
    total = 0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    for proc in procs:
        try:
            total += proc.memory_full_info().pss
        except psutil.Error:
            pass
    return total


# Reset-engine tenants in the density step: how long an idle worker lives.
RETIRE_AFTER_MS = 2000


def tenants_scaling(pin: Pinning, counts: list[int], duration_s: float | None, log: Callable[[str], None],
                    start_timeout: float = 300.0, fresh_counts: list[int] | None = None,
                    reset_counts: list[int] | None = None) -> dict[str, Any]:
    """3b + 4. For each tenant count, fork-engine hosts forked from the zygote
    and (for fresh_counts) started as fresh interpreters, and (for
    reset_counts) reset-engine tenants with one worker, in the same run:
    start-up time per tenant, PSS per idle tenant (its processes: host,
    stub, workers), daemon and zygote PSS; and, if duration_s is given, wrk
    -c64 throughput with a random Host per request (fork, zygote)."""
    rows: list[Row] = []
    fresh_counts = counts if fresh_counts is None else fresh_counts
    reset_counts = [] if reset_counts is None else reset_counts
    variants = [("fork", True, counts), ("fork", False, fresh_counts), ("reset", True, reset_counts)]
    for n in counts:
        for engine, zygote, wanted in variants:
            if n not in wanted:
                continue
            mode = "zygote" if zygote else "fresh"
            reset = engine == "reset"
            tenants = servers.hello_tenants(n, engine=engine, pool=1 if reset else None,
                                            pool_idle_ms=RETIRE_AFTER_MS if reset else None)
            try:
                with servers.mayflyd(pin, tenants, start_timeout=start_timeout, zygote=zygote,
                                     engine=engine) as server:
                    time.sleep(0.5)  # idle
                    status = _status(server)
                    pss = [_pss_of_tree(t["hosts"][0]["pid"]) for t in status["tenants"].values() if t["hosts"]]
                    if len(pss) != n:
                        raise RuntimeError(f"{n - len(pss)} of {n} tenants have no host")
                    zygote_pid = (status.get("zygote") or {}).get("pid") or 0
                    zygote_pss = psutil.Process(zygote_pid).memory_full_info().pss if zygote_pid else 0
                    daemon_pss = psutil.Process(server.proc.pid).memory_full_info().pss
                    idle_cpu = _cpu_share(server.proc.pid, 1.0)
                    row: Row = {"tenants": n, "engine": engine, "mode": mode, "startup_s": server.startup_s,
                                "daemon_idle_cpu_pct": idle_cpu * 100,
                                "startup_per_tenant_ms": server.startup_s / n * 1e3,
                                "pss_per_tenant_mb": statistics.mean(pss) / 2**20,
                                "pss_min_mb": min(pss) / 2**20, "pss_max_mb": max(pss) / 2**20,
                                "daemon_pss_mb": daemon_pss / 2**20, "zygote_pss_mb": zygote_pss / 2**20,
                                "ready_lines": _ready_lines(server)}
                    if reset:  # and once its worker has retired
                        time.sleep(RETIRE_AFTER_MS / 1000 + 1.0)
                        retired = [_pss_of_tree(t["hosts"][0]["pid"]) for t in status["tenants"].values()]
                        row["pss_retired_mb"] = statistics.mean(retired) / 2**20
                    if duration_s and zygote and engine == "fork":
                        hosts = [h for t in tenants for h in t.hosts]
                        result = wrk.run(pin, server.port, connections=64, duration_s=duration_s, hosts=hosts)
                        row["wrk"] = result.to_json()
                        row["rps"] = result.rps
                log(f"{n} tenants ({engine}, {mode}): started in {row['startup_s']:.2f} s, "
                    f"{row['pss_per_tenant_mb']:.2f} MiB PSS per tenant"
                    + (f", {row['pss_retired_mb']:.2f} MiB once the worker retired" if "pss_retired_mb" in row
                       else "")
                    + (f", {row['rps']:.0f} req/s" if "rps" in row else ""))
            except RuntimeError as exc:
                row = {"tenants": n, "engine": engine, "mode": mode, "error": str(exc).splitlines()[0]}
                log(f"{n} tenants ({engine}, {mode}): FAILED: {row['error']}")
            rows.append(row)
    ok = [r for r in rows if "error" not in r]
    for r in ok:
        fresh = next((f for f in ok if f["mode"] == "fresh" and f["tenants"] == r["tenants"]
                      and f["engine"] == r["engine"]), None)
        if fresh is not None:
            r["pss_ratio"] = _ratio(r["pss_per_tenant_mb"], fresh["pss_per_tenant_mb"])
            r["startup_ratio"] = _ratio(r["startup_per_tenant_ms"], fresh["startup_per_tenant_ms"])
    first = next((r for r in ok if "rps" in r), None)
    for r in ok:
        if "rps" in r and first is not None:
            r["rps_ratio"] = _ratio(r["rps"], first["rps"])
    return {"rows": rows}


def _cpu_share(pid: int, seconds: float) -> float:
    """The share of one core a process used over the next `seconds`."""
    proc = psutil.Process(pid)
    before = proc.cpu_times()
    time.sleep(seconds)
    after = proc.cpu_times()
    return ((after.user - before.user) + (after.system - before.system)) / seconds


def _log_size(server: RunningServer) -> int:
    return server.log_path.stat().st_size if server.log_path and server.log_path.exists() else 0


def _complaints_since(server: RunningServer, offset: int, limit: int = 5) -> list[str]:
    """The server's warnings and errors logged since offset: why a run had errors."""
    if not server.log_path or not server.log_path.exists():
        return []
    with open(server.log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    return [line[:400] for line in text.splitlines() if "level=warning" in line or "level=error" in line][:limit]


def _ready_lines(server: RunningServer) -> int:
    if not server.log_path or not server.log_path.exists():
        return 0
    return sum(1 for line in server.log_path.read_text(errors="replace").splitlines() if "ready, serving" in line)


def _process_roles(server: RunningServer) -> dict[int, str]:
    """Each process of a server by what it does: for mayflyd from its status
    API (supervisor, zygote, tenant host, reset workers), otherwise the
    front end and the processes it started."""
    root = psutil.Process(server.proc.pid)
    roles = {p.pid: "child processes" for p in root.children(recursive=True)}
    roles[root.pid] = "main process"
    if server.admin_socket:
        roles = {pid: "other daemon processes" for pid in roles}
        roles[root.pid] = "supervisor (control plane)"
        status = _status(server)
        if status.get("front"):
            roles[status["front"]["pid"]] = "front end (HTTP, routing, the hop)"
        if status.get("zygote"):
            roles[status["zygote"]["pid"]] = "zygote"
        for tenant in status["tenants"].values():
            for host in tenant["hosts"]:
                roles[host["pid"]] = "tenant host (dispatch, timers)"
                for worker in psutil.Process(host["pid"]).children():
                    roles[worker.pid] = "reset workers (handler and rewind)"
    return roles


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    out = {}
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = times.user + times.system
    return out


def cpu_per_request(pin: Pinning, duration_s: float, connections: int,
                    log: Callable[[str], None]) -> dict[str, Any]:
    """5a. CPU time per request of every process of the baseline (a), the hop
    floor (f) and mayflyd's reset engine (e) under the same wrk load, from
    /proc; kernel threads (kthreadd's children) machine-wide, apart."""
    kinds: list[tuple[str, Callable[[], ContextManager[RunningServer]]]] = [
        ("a", lambda: servers.baseline(pin)), ("f", lambda: servers.hop_floor(pin)),
        ("e", lambda: servers.mayflyd(pin, engine="reset"))]
    results = []
    for key, start in kinds:
        with start() as server:
            wrk.run(pin, server.port, connections=8, duration_s=1, host=server.host_header)  # warm-up
            roles = _process_roles(server)
            kernel = [p.pid for p in psutil.Process(2).children()]
            before = _cpu_seconds([*roles, *kernel])
            result = wrk.run(pin, server.port, connections=connections, duration_s=duration_s,
                             host=server.host_header)
            roles.update({pid: role for pid, role in _process_roles(server).items() if pid not in roles})
            after = _cpu_seconds([*roles, *kernel])
        per_role: dict[str, float] = {}
        for pid, seconds in after.items():
            role = roles.get(pid, "kernel threads (machine-wide: wrk's core too)")
            per_role[role] = per_role.get(role, 0.0) + seconds - before.get(pid, 0.0)
        requests = max(1, result.requests)
        rows: list[Row] = [{"role": role, "us_per_request": seconds / requests * 1e6}
                           for role, seconds in sorted(per_role.items(), key=lambda kv: -kv[1]) if seconds > 0]
        own = sum(r["us_per_request"] for r in rows if not r["role"].startswith("kernel threads"))
        results.append({"key": key, "server": server.label, "rps": result.rps, "requests": result.requests,
                        "rows": rows, "server_us_per_request": own})
        log(f"{server.label}: {own:.0f} us of CPU per request in its processes at {result.rps:.0f} req/s")
    return {"connections": connections, "duration_s": duration_s, "servers": results}


# Areas of the daemon's profile, first match wins: (name, test on (file, function)).
_AREAS: list[tuple[str, Callable[[str, str], bool]]] = [
    # uvloop's loop is compiled code cProfile does not see: its waiting is the
    # own time of asyncio's Runner.run, which calls it.
    ("waiting (event loop select/epoll)", lambda f, fn: "select.epoll" in fn or "'poll' of" in fn
     or "select.select" in fn or (f.endswith("asyncio/runners.py") and fn == "run")),
    ("aiohttp (admin API, metrics)", lambda f, fn: "/aiohttp/" in f or "aiohttp" in fn),
    ("other mayflyd", lambda f, fn: "/mayflyd/" in f),
    ("asyncio machinery", lambda f, fn: "/asyncio/" in f),
]


def profile(pin: Pinning, duration_s: float, connections: int, log: Callable[[str], None]) -> dict[str, Any]:
    """5b. Run the daemon (reset engine) under cProfile for a fixed wrk load
    and group its own time (tottime) by area; the rewind's cost comes from
    the metrics."""
    with tempfile.TemporaryDirectory(prefix="mfb-prof-") as tmp:
        out = Path(tmp) / "mayflyd.prof"
        with servers.mayflyd(pin, engine="reset", profile_to=out) as server:
            wrk.run(pin, server.port, connections=8, duration_s=1, host=server.host_header)
            before = admin_metrics.sandbox_cost(server.admin_socket or "", "t0")
            result = wrk.run(pin, server.port, connections=connections, duration_s=duration_s,
                             host=server.host_header)
            lifetime = admin_metrics.sandbox_cost(server.admin_socket or "", "t0")
            cost = admin_metrics.diff(lifetime, before)
        if not out.exists():
            raise RuntimeError("cProfile wrote no file (did mayflyd exit 0?)")
        stats = pstats.Stats(str(out))
    areas: dict[str, float] = {name: 0.0 for name, _ in _AREAS}
    areas["other"] = 0.0
    total = 0.0
    others: list[tuple[float, str]] = []
    for (filename, _line, function), (_cc, _nc, tottime, _ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        total += tottime
        for name, test in _AREAS:
            if test(filename, function):
                areas[name] += tottime
                break
        else:
            areas["other"] += tottime
            others.append((tottime, f"{Path(filename).name}:{function}"))
    # The profile covers the daemon's whole life (start-up, warm-up, shutdown): shares, not absolutes.
    rows = [{"area": name, "seconds": s, "share": s / total if total else 0.0}
            for name, s in sorted(areas.items(), key=lambda kv: -kv[1])]
    log(f"profile: {result.rps:.0f} req/s under cProfile, {total:.1f} s profiled")
    top_other = [{"function": f, "seconds": t} for t, f in sorted(others, reverse=True)[:6]]
    return {"rows": rows, "profiled_s": total, "top_other": top_other, "wrk": result.to_json(),
            "sandbox_cost_mean_us": cost.mean * 1e6, "sandbox_cost_total_s": cost.total,
            "requests": result.requests,
            "daemon_cpu_per_request_us":
                (total - areas["waiting (event loop select/epoll)"]) / max(1, lifetime.count) * 1e6}
