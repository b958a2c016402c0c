"""Render a benchmark run: a Markdown report (every table with ratios to its
baseline), a JSON file with the raw numbers, and PNG charts (matplotlib, a
bench-only extra: skipped with a note when it is missing)."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any


def _f(value: Any, fmt: str = "{:.2f}", none: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return fmt.format(value)


def _ms(seconds: Any) -> str:
    return _f(None if seconds is None else seconds * 1e3, "{:.2f}")


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def throughput_table(result: dict[str, Any]) -> list[str]:
    rows = []
    for r in result["rows"]:
        w = r["wrk"]
        lat = w["latency"]
        sock = w["socket_errors"]
        flag = "**ERRORS**" if w["errors"] else "ok"
        rows.append([r["server"], f"-c{r['connections']}", _f(w["rps"], "{:.0f}"), _f(r.get("rps_ratio"), "{:.3f}"),
                     _ms(lat.get("50")), _ms(lat.get("75")), _ms(lat.get("90")), _ms(lat.get("99")),
                     _f(r.get("p50_ratio"), "{:.1f}x"), str(w["non_2xx"]),
                     "/".join(str(sock.get(k, 0)) for k in ("connect", "read", "write", "timeout")),
                     _f(None if r.get("sandbox_cost_mean_s") is None else r["sandbox_cost_mean_s"] * 1e6, "{:.0f}"),
                     flag])
    return _table(["server", "conns", "req/s", "req/s ratio to a", "p50 ms", "p75 ms", "p90 ms", "p99 ms",
                   "p50 ratio to a", "non-2xx", "socket errors c/r/w/t", "sandbox cost mean us", "run"], rows)


def all_cores_section(result: dict[str, Any]) -> list[str]:
    """1b: the servers on every core, ratios to a on all cores and to the pinned a."""
    n = result["workers"]
    rows = []
    for r in result["rows"]:
        w = r["wrk"]
        lat = w["latency"]
        rows.append([r["server"], f"-c{r['connections']}", _f(w["rps"], "{:.0f}"), _f(r.get("rps_ratio"), "{:.3f}"),
                     _f(r.get("rps_ratio_1core"), "{:.3f}"), _ms(lat.get("50")), _ms(lat.get("99")),
                     str(w["errors"]), "**ERRORS**" if w["errors"] else "ok"])
    out = [f"## 1b. Throughput on all {n} cores", "",
           f"The same rows with the servers on every core: a = aiohttp in {n} processes sharing the port "
           f"(SO_REUSEPORT), g = granian with {n} workers, n = nginx with {n} workers; mayflyd's rows with their "
           f"own config, as in section 1. {result['pinning']}. Ratios to a on all cores (this table) and to the "
           "pinned a of section 1 at the same -c (`-` when section 1 did not run).", ""]
    out += _table(["server", "conns", "req/s", f"ratio to a ({n} cores)", "ratio to a (1 core)", "p50 ms",
                   "p99 ms", "errors", "run"], rows)
    return out + [""] + [f"- {note}" for note in result["notes"]] + server_complaints(result) + [""]


def server_complaints(result: dict[str, Any]) -> list[str]:
    """What the server logged during runs that had errors (or that it logged nothing)."""
    out = []
    for r in result["rows"]:
        if "wrk" in r and r["wrk"]["errors"]:
            lines = r.get("server_log") or ["(nothing logged at warning or error level)"]
            out.append(f"- errors in `{r['key']} -c{r['connections']}`; the server logged:")
            out += [f"  - `{line}`" for line in lines]
    return out


def apps_section(result: dict[str, Any]) -> list[str]:
    """7: each framework's hello world, mayflyd's reset engine against its usual server."""
    target = result["target"]
    rows = []
    for r in result["rows"]:
        if "failed" in r:
            rows.append([r["server"], "-", "**FAILED**: " + r["failed"].replace("|", "/")[:600]] + [""] * 8)
            continue
        w = r["wrk"]
        lat = w["latency"]
        met = "-" if r.get("meets_target") is None else "yes" if r["meets_target"] else "**no**"
        rows.append([r["server"], f"-c{r['connections']}", _f(w["rps"], "{:.0f}"), _f(r.get("rps_ratio"), "{:.3f}"),
                     _ms(lat.get("50")), _ms(lat.get("99")), _f(r.get("p99_ratio"), "{:.2f}x"), met,
                     str(w["errors"]),
                     _f(None if r.get("sandbox_cost_mean_s") is None else r["sandbox_cost_mean_s"] * 1e6, "{:.0f}"),
                     "**ERRORS**" if w["errors"] else "ok"])
    out = ["## 7. Real apps: Flask (WSGI) and FastAPI (ASGI)", "",
           "A hello world in each framework (bench/programs/flask_hello.py, fastapi_hello.py), served by "
           "mayflyd's reset engine as an `app` tenant (all walls, concurrency 64) and, as the baseline in "
           "this run, unsandboxed by gunicorn with one sync worker (Flask; it closes the connection after "
           "each answer) or uvicorn with one worker (FastAPI); both on the server core. Ratios: mayflyd to "
           f"its app's baseline at the same -c. Target: req/s ratio at least {target:g} and p99 ratio at most "
           f"{1 / target:.2f}x.", ""]
    out += _table(["server", "conns", "req/s", "req/s ratio to baseline", "p50 ms", "p99 ms",
                   "p99 ratio to baseline", f"meets {target:g}x", "errors", "sandbox cost mean us", "run"], rows)
    return out + [""] + server_complaints({"rows": result["rows"]}) + [""]


def proxy_section(result: dict[str, Any]) -> list[str]:
    """8: one node directly, and through HAProxy with TLS in front of it."""
    rows = []
    for r in result["rows"]:
        w = r["wrk"]
        lat = w["latency"]
        rows.append([r["server"], f"-c{r['connections']}", _f(w["rps"], "{:.0f}"), _f(r.get("rps_ratio"), "{:.3f}"),
                     _ms(lat.get("50")), _ms(lat.get("99")),
                     _f(None if r.get("added_p50_s") is None else r["added_p50_s"] * 1e3, "{:+.3f}"),
                     _f(None if r.get("added_p99_s") is None else r["added_p99_s"] * 1e3, "{:+.3f}"),
                     str(w["errors"]), "**ERRORS**" if w["errors"] else "ok"])
    out = ["## 8. HAProxy in front of a node", "",
           f"One mayflyd node ({result['engine']} engine, the seed program) served directly over plain HTTP, "
           "then, in the same run, through HAProxy terminating TLS (wrk over HTTPS, keep-alive) and sending "
           "the PROXY v2 header, with the haproxy.cfg of docs/deploy.md. HAProxy runs on the server core "
           "beside the node, so the req/s ratio is a floor; the added p50 and p99 are what a client sees "
           "HAProxy add.", ""]
    out += _table(["server", "conns", "req/s", "req/s ratio to direct", "p50 ms", "p99 ms", "added p50 ms",
                   "added p99 ms", "errors", "run"], rows)
    return out + [""] + [f"- {n}" for n in result["notes"]] + server_complaints(result) + [""]


def histogram_table(hist: dict[str, Any]) -> list[str]:
    rows, previous, prev_le = [], 0, 0.0
    for le, cumulative in hist["buckets"]:
        n = cumulative - previous
        upper = "+Inf" if le == "+Inf" else f"{le * 1e6:g}"
        rows.append([f"{prev_le * 1e6:g} - {upper}", str(n), _f(n / hist["count"] * 100 if hist["count"] else None,
                                                                  "{:.1f}%")])
        previous, prev_le = cumulative, (math.inf if le == "+Inf" else le)
    return _table(["sandbox cost (us)", "requests", "share"], rows)


def _largest_c_keys(hists: dict[str, Any]) -> list[str]:
    """The sandbox-cost keys ("d:fork -c64") of the largest -c, one per engine."""
    top = max(int(k.rsplit("-c", 1)[1]) for k in hists)
    return [k for k in hists if int(k.rsplit("-c", 1)[1]) == top]


def heap_engines(row: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A heap row's per-engine sub-dicts (older results: the row itself is fork)."""
    return row["engines"] if "engines" in row else {"fork": row}


def heap_section(heap: dict[str, Any]) -> list[str]:
    rows = heap["rows"]
    engines = list(dict.fromkeys(e for r in rows for e in heap_engines(r)))
    out = ["## 3a. Growth with the tenant's heap (" + " and ".join(f"{e} engine" for e in engines) + ")", "",
           "A tenant whose on_init() allocates N MB of distinct 64 KiB bytes objects; sequential keep-alive "
           "GETs (bench.latency's client), sandbox cost from the metrics (fork time for fork, rewind time "
           "for reset; over the server's life, warm-up included), pages rewound per request from "
           "mayflyd_rewound_pages (_sum/_count). Ratios \"x\" are to the smallest heap of the same engine.", ""]
    header = ["heap MB"]
    for e in engines:
        header += [f"{e} PSS MB", f"{e} median us", f"{e} p99 us", f"{e} median ratio",
                   f"{e} cost mean us", f"{e} cost ratio"]
        if e == "reset":
            header += ["reset pages rewound/request"]
    both = "fork" in engines and "reset" in engines
    if both:
        header += ["reset/fork cost", "reset/fork median"]
    table = []
    for r in rows:
        subs = heap_engines(r)
        line = [str(r["heap_mb"])]
        for e in engines:
            sub = subs.get(e, {})
            line += [_f(sub.get("tenant_pss_mb"), "{:.0f}"), _f(sub.get("median_us"), "{:.0f}"),
                     _f(sub.get("p99_us"), "{:.0f}"), _f(sub.get("median_ratio"), "{:.2f}x"),
                     _f(sub.get("sandbox_cost_mean_us"), "{:.0f}"), _f(sub.get("cost_ratio"), "{:.2f}x")]
            if e == "reset":
                line += [_f(sub.get("rewound_pages_mean"), "{:.1f}")]
        if both:
            line += [_f(r.get("reset_fork_cost_ratio"), "{:.2f}"), _f(r.get("reset_fork_median_ratio"), "{:.2f}")]
        table.append(line)
    return out + _table(header, table) + [""]


def rewind_section(rewind: dict[str, Any]) -> list[str]:
    """6: the rewind's time and pages per request, and density with one and two workers."""
    programs = rewind["programs"]
    seed = programs[0].get("median_us") if programs else None
    out = ["## 6. The rewind per request (reset engine)", "",
           "One reset tenant, one worker, requests sent one at a time; after each, the daemon's metrics are "
           "read and the differences of `mayflyd_sandbox_cost_seconds` and `mayflyd_rewound_pages` (_sum, "
           "_count) give that request's rewind time and pages (the histograms' buckets are too coarse for a "
           "median). Requests with idle gaps between them: caches may be colder than under load. Ratio: "
           "median rewind time to the seed's.", ""]
    rows = [[p["program"], str(p["requests"]), _f(p.get("median_us"), "{:.0f}"), _f(p.get("p99_us"), "{:.0f}"),
             _f(p.get("mean_us"), "{:.0f}"), _f(p.get("pages_median"), "{:.0f}"), _f(p.get("pages_p99"), "{:.0f}"),
             _f(p.get("median_us") / seed if seed and p.get("median_us") is not None else None),
             _f(p.get("answer_bytes_median"), "{:.0f}"),
             ", ".join(f"{k}: {v}" for k, v in p.get("statuses", {}).items())]
            for p in programs]
    out += _table(["program", "requests", "rewind median us", "p99 us", "mean us", "pages median", "pages p99",
                   "median ratio to seed", "answer bytes", "statuses"], rows)
    d = rewind.get("density")
    if d:
        one, two = d["one_worker"], d["two_workers"]
        out += ["", "Density: an idle reset tenant serving the seed program (pool 2), PSS of its host and "
                "workers (psutil), after one request and after a wrk -c8 load that starts the second worker.", ""]
        out += _table(["live workers", "PSS MiB"], [[str(one["workers"]), _f(one["pss_mb"])],
                                                    [str(two["workers"]), _f(two["pss_mb"])]])
        out += ["", f"- the second worker adds {_f(d['second_worker_mb'])} MiB; two workers / one = "
                f"{_f(d.get('ratio'))}"]
    return out + [""]


def cpu_section(cpu: dict[str, Any]) -> list[str]:
    """5a: CPU per request by process, one column per server."""
    runs = cpu["servers"]
    roles = list(dict.fromkeys(r["role"] for run in runs for r in run["rows"]))
    kernel = [role for role in roles if role.startswith("kernel threads")]
    roles = [role for role in roles if role not in kernel] + kernel
    base = next((run["server_us_per_request"] for run in runs if run["key"] == "a"), None)
    table = []
    for role in roles:
        cells = [next((r["us_per_request"] for r in run["rows"] if r["role"] == role), None) for run in runs]
        table.append([role] + [_f(c, "{:.1f}") for c in cells])
    table.append(["**all of the server's processes**"]
                 + [f"**{run['server_us_per_request']:.1f}**" for run in runs])
    table.append(["ratio to a"] + [_f(run["server_us_per_request"] / base if base else None, "{:.2f}x")
                                   for run in runs])
    table.append(["req/s during the run"] + [f"{run['rps']:.0f}" for run in runs])
    return ["## 5a. Where a request's CPU goes, by process", "",
            f"User and system CPU time of each process (from /proc, psutil) over a wrk -c{cpu['connections']} "
            f"{cpu['duration_s']:g} s run, divided by the requests answered, in microseconds. The servers run "
            "on one core, so a server's total per request bounds its throughput there. Kernel threads are "
            "counted machine-wide, wrk's core included.", ""] \
        + _table(["process", *(run["server"] for run in runs)], table) + [""]


def markdown(data: dict[str, Any], charts: list[str], chart_note: str | None) -> str:
    """The whole report as Markdown."""
    m = data["machine"]
    only = f", rows {data['rows']} only" if data.get("rows") else ""
    out = [f"# mayflyd benchmark, {data['started_utc']} ({data['mode']} mode{only})", "",
           f"- machine: {m['cores']} cores, {m['platform']}, Python {m['python']}, root: {m['root']}",
           f"- pinning: {m['pinning']}",
           f"- wrk: {data['wrk_settings']}",
           f"- run took {data['elapsed_s']:.0f} s; every ratio is against a baseline measured in this run", ""]
    if "throughput" in data:
        t = data["throughput"]
        out += ["## 1. Throughput and latency", "",
                "Baseline a = unsandboxed aiohttp calling the seed program in-process. mayflyd runs its own config: "
                "one tenant with the seed program, concurrency 64, all walls; d = fork engine, e = reset engine. "
                "f = mayflyd's front end and one persistent hop to a plain worker running the program, with no "
                "sandbox (bench/hop_floor.py): the most any sandbox in another process behind this front end "
                "can reach. g = granian (Rust HTTP server, RSGI) calling the program in-process: the fastest "
                "unsandboxed Python server. n = nginx answering `return 200 \"hello\"`: the front-end limit "
                "of this machine, no Python at all. a, g and n run one worker process.", ""]
        out += throughput_table(t)
        out += [""] + [f"- {n}" for n in t["notes"]] + server_complaints(t)
        if data.get("headline") is not None:
            out += [f"- headline: sandboxed/unsandboxed throughput at -c64 = {data['headline_text']}"]
        ceiling = [r for r in t["rows"] if r["key"] == "f" and r["connections"] == 64 and r.get("rps_ratio")]
        if ceiling:
            out += [f"- ceiling of this shape (f, no sandbox) at -c64 = {ceiling[0]['rps_ratio']:.2f} of a; "
                    f"the best engine reaches {_f(data.get('headline'))} of a, "
                    f"{_f(data['headline'] / ceiling[0]['rps_ratio'] if data.get('headline') else None)} of f"]
        out += [""]
        hists = t.get("sandbox_cost", {})
        if hists:
            out += ["## 2. The sandbox's own cost per request (mayflyd_sandbox_cost_seconds)", "",
                    "The host's cost of isolating one request: fork time (fork engine), rewind time "
                    "(reset engine). Prometheus buckets, so coarse.", ""]
            for key in _largest_c_keys(hists):
                h = hists[key]
                out += [f"During the wrk run `{key}`: {h['count']} sandboxes, mean "
                        f"{_f(None if h['mean'] is None else h['mean'] * 1e6, '{:.0f}')} us.", ""]
                out += histogram_table(h) + [""]
            means = ", ".join(f"{k}: {_f(None if v['mean'] is None else v['mean'] * 1e6, '{:.0f}')} us"
                              for k, v in hists.items())
            out += [f"Means per run: {means}.", ""]
    if "all_cores" in data:
        out += all_cores_section(data["all_cores"])
    if "apps" in data:
        out += apps_section(data["apps"])
    if "proxy" in data:
        out += proxy_section(data["proxy"])
    if "heap" in data:
        out += heap_section(data["heap"])
    if "tenants" in data:
        out += ["## 3b/4. Tenants: density, start-up and throughput", "",
                "Each tenant serves the seed program. Fork-engine hosts forked from the zygote (the default) "
                "and, as the baseline, started as fresh interpreters (`zygote: false`); and reset-engine "
                "tenants with their one idle worker, and again once it has retired (`pool_idle_ms`); all in the "
                "same run. PSS per idle tenant = its processes "
                "(host, stub, workers), psutil; the zygote's own PSS is listed apart. "
                "Start-up = daemon start to listening / tenants (all tenants start before the "
                "daemon listens). Ratios: zygote over fresh at the same count. Throughput: wrk -c64 with a "
                "random Host among the tenants per request (Lua), ratio to the 1-tenant case.", ""]
        rows = []
        for r in data["tenants"]["rows"]:
            mode = f'{r.get("engine", "fork")}, {r.get("mode", "fresh")}'
            if "error" in r:
                rows.append([str(r["tenants"]), mode, "FAILED: " + r["error"], "", "", "", "", "", "", "", "", "", ""])
                continue
            if "pss_retired_mb" in r:
                mode += f" (worker retired: {r['pss_retired_mb']:.2f} MiB)"
            rows.append([str(r["tenants"]), mode, _f(r["startup_s"]), _f(r["startup_per_tenant_ms"], "{:.1f}"),
                         _f(r.get("startup_ratio"), "{:.2f}"), _f(r["pss_per_tenant_mb"], "{:.2f}"),
                         _f(r.get("pss_ratio"), "{:.2f}"), _f(r["daemon_pss_mb"], "{:.0f}"),
                         _f(r.get("daemon_idle_cpu_pct"), "{:.1f}%"),
                         _f(r.get("zygote_pss_mb") or None, "{:.1f}"),
                         _f(r.get("rps"), "{:.0f}"), _f(r.get("rps_ratio"), "{:.2f}")])
        out += _table(["tenants", "engine, hosts", "start-up s", "per tenant ms", "zygote/fresh", "PSS/tenant MiB",
                       "zygote/fresh", "daemon PSS MiB", "daemon idle CPU", "zygote PSS MiB",
                       "req/s -c64 random host", "ratio"], rows) + [""]
    if "rewind" in data:
        out += rewind_section(data["rewind"])
    if "cpu" in data:
        out += cpu_section(data["cpu"])
    if "profile" in data:
        p = data["profile"]
        out += ["## 5b. Where the supervisor's time goes (cProfile)", "",
                f"The supervisor process under cProfile for a wrk -c{p['wrk']['connections']} "
                f"{p['wrk']['duration_s']:g} s load ({p['wrk']['rps']:.0f} req/s under the profiler); own time "
                f"(tottime) grouped by area, over the daemon's life. The rewind happens in the tenant's "
                f"worker (another process): from the metrics, {p['sandbox_cost_mean_us']:.0f} us per request, "
                f"against {p['daemon_cpu_per_request_us']:.0f} us of the daemon's non-waiting profiled time per "
                "request. cProfile counts wall time, and all processes share one core: a call that wakes "
                "another process (the `sendmsg` that hands a request to the host) also counts the time the "
                "supervisor then waits for the core, so 5a is the measure of CPU.", ""]
        out += _table(["area", "seconds", "share"],
                      [[r["area"], _f(r["seconds"], "{:.3f}"), _f(r["share"] * 100, "{:.1f}%")] for r in p["rows"]])
        if p.get("top_other"):
            out += ["", "Largest items of \"other\": " + ", ".join(
                f"`{o['function']}` {o['seconds']:.3f} s" for o in p["top_other"]) + "."]
        out += [""]
    for note in data.get("notes", []):
        out.append(f"- note: {note}")
    out += ["", "## Charts", ""]
    out += [f"- `{c}`" for c in charts] if charts else []
    if chart_note:
        out.append(f"- {chart_note}")
    return "\n".join(out) + "\n"


def charts(data: dict[str, Any], directory: Path, stem: str) -> tuple[list[str], str | None]:
    """PNG charts next to the report; (file names, note if skipped)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "charts skipped: matplotlib is not installed (pip install matplotlib)"
    names: list[str] = []
    t = data.get("throughput")
    if t and t["rows"]:
        conns = sorted({r["connections"] for r in t["rows"]})
        servers = list(dict.fromkeys(r["server"] for r in t["rows"]))
        fig, ax = plt.subplots(figsize=(8, 4))
        width = 0.8 / len(conns)
        for i, c in enumerate(conns):
            values = [next((r["wrk"]["rps"] for r in t["rows"] if r["server"] == s and r["connections"] == c), 0)
                      for s in servers]
            ax.bar([x + i * width for x in range(len(servers))], values, width, label=f"-c{c}")
        ax.set_xticks([x + width * (len(conns) - 1) / 2 for x in range(len(servers))],
                      [textwrap.fill(s, 16) for s in servers], fontsize=8)  # side by side, not overlapping
        ax.set_yscale("log")
        ax.set_ylabel("requests/s (log)")
        ax.set_title("Throughput (wrk)")
        ax.legend()
        fig.tight_layout()
        names.append(f"{stem}-throughput.png")
        fig.savefig(directory / names[-1], dpi=100)
        plt.close(fig)
        hists = t.get("sandbox_cost", {})
        for key in (_largest_c_keys(hists) if hists else []):
            h = hists[key]
            labels, counts, previous = [], [], 0
            for le, cumulative in h["buckets"]:
                labels.append("+Inf" if le == "+Inf" else f"{le * 1e6:g}")
                counts.append(cumulative - previous)
                previous = cumulative
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.bar(range(len(labels)), counts)
            ax.set_xticks(range(len(labels)), [f"<={x}" for x in labels], rotation=45, fontsize=8)
            ax.set_xlabel("sandbox cost (fork or rewind) bucket, us")
            ax.set_ylabel("requests")
            ax.set_title(f"mayflyd_sandbox_cost_seconds, {key}")
            fig.tight_layout()
            engine = key.split(" ", 1)[0].split(":")[-1]
            names.append(f"{stem}-sandbox-cost-{engine}.png")
            fig.savefig(directory / names[-1], dpi=100)
            plt.close(fig)
    heap = data.get("heap")
    if heap and heap["rows"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        engines = list(dict.fromkeys(e for r in heap["rows"] for e in heap_engines(r)))
        for e in engines:
            pts = [(r["heap_mb"], heap_engines(r)[e]) for r in heap["rows"] if e in heap_engines(r)]
            xs = [x for x, _ in pts]
            ax.plot(xs, [sub["median_us"] for _, sub in pts], "o-", label=f"{e}: median latency")
            ax.plot(xs, [math.nan if sub.get("sandbox_cost_mean_us") is None else sub["sandbox_cost_mean_us"]
                         for _, sub in pts], "s--", label=f"{e}: sandbox cost mean")
        ax.set_xscale("log")
        ax.set_xlabel("tenant heap MB")
        ax.set_ylabel("us")
        ax.set_title("Per-request cost vs heap, by engine")
        ax.legend()
        fig.tight_layout()
        names.append(f"{stem}-heap.png")
        fig.savefig(directory / names[-1], dpi=100)
        plt.close(fig)
    return names, None


def write(data: dict[str, Any], directory: Path, stem: str) -> list[Path]:
    """Write <stem>.json, charts, <stem>.md and latest.md; the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    chart_names, chart_note = charts(data, directory, stem)
    data["charts"] = chart_names
    json_path = directory / f"{stem}.json"
    json_path.write_text(json.dumps(data, indent=1, default=str))
    text = markdown(data, chart_names, chart_note)
    md_path = directory / f"{stem}.md"
    md_path.write_text(text)
    (directory / "latest.md").write_text(text)
    return [md_path, json_path, *(directory / n for n in chart_names)]
