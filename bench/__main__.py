"""The benchmark harness of mayflyd: one command, servers started and stopped
on 127.0.0.1 by the harness itself, results under bench/results/.

    python -m bench            # full mode (up to ~15 minutes)
    python -m bench --quick    # a, d, e, g, n at -c1/-c64, all cores at -c64, apps, heap 1/200 MB, 1/10 tenants
    python -m bench --only throughput,allcores,apps,heap,tenants,profile,rewind
    python -m bench --only throughput,allcores --rows g,n --duration 3   # a few rows (a always)
    python -m bench --only apps --apps flask --duration 2   # Flask through mayflyd against gunicorn
    python -m bench --only proxy --quick   # one node directly, then through HAProxy with TLS

Ends with `headline: sandboxed/unsandboxed throughput at -c64 = N.NN`.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Any

from bench import apps, measures, proxy, report, rewind_cost, servers, wrk
from bench.common import RESULTS, all_cores_pinning, core_count, pinning

STEPS = ("throughput", "allcores", "apps", "proxy", "heap", "tenants", "profile", "rewind")
# Row letters of the throughput tables: d is every mayflyd engine, e the reset engine alone.
ROWS = ("a", "b", "c", "d", "e", "f", "g", "n")


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the under-a-minute subset")
    parser.add_argument("--only", default=",".join(STEPS), help=f"comma-separated steps of {STEPS}")
    parser.add_argument("--rows", help=f"throughput rows of {ROWS} (a is always measured: every ratio is to it)")
    parser.add_argument("--apps", default=",".join(a.name for a in apps.APPS),
                        help="frameworks of the apps step (default: all)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 3 quick, 10 full)")
    parser.add_argument("--connections", help="comma-separated wrk -c values (default 1,64 quick, 1,8,64 full)")
    parser.add_argument("--max-tenants", type=int, default=1000, help="largest tenant count (full mode)")
    parser.add_argument("--out", default=str(RESULTS), help="results directory")
    args = parser.parse_args(argv)
    steps = [s for s in args.only.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        parser.error(f"unknown steps: {', '.join(sorted(unknown))}")
    app_names = [a for a in args.apps.split(",") if a]
    if set(app_names) - {a.name for a in apps.APPS}:
        parser.error(f"unknown apps: {', '.join(sorted(set(app_names) - {a.name for a in apps.APPS}))}")
    rows = ["a", *(r for r in args.rows.split(",") if r and r != "a")] if args.rows else None
    if rows and set(rows) - set(ROWS):
        parser.error(f"unknown rows: {', '.join(sorted(set(rows) - set(ROWS)))}")

    quick = args.quick
    pin = pinning()
    duration = args.duration or (3.0 if quick else 10.0)
    connections = ([int(c) for c in args.connections.split(",") if c] if args.connections
                   else [1, 64] if quick else [1, 8, 64])
    kinds = rows or (["a", "d", "g", "n"] if quick else ["a", "b", "c", "d", "f", "g", "n"])
    # One connection keeps one worker busy whatever the cores: not run on all cores.
    all_connections = [c for c in connections if c > 1] or connections
    started = time.time()
    stem = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    data: dict[str, Any] = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started)),
        "mode": "quick" if quick else "full",
        "rows": ",".join(kinds) if rows else None,
        "machine": {"cores": core_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "root": os.geteuid() == 0, "pinning": pin.description},
        "wrk_settings": wrk.settings_text(duration, connections),
        "engines": {"listed": list(servers.ENGINES), "available": sorted(servers.AVAILABLE_ENGINES)},
        "notes": [],
    }
    _log(f"{core_count()} cores; {pin.description}")
    if quick:
        data["notes"].append("quick mode: servers b and c, -c8, the 10, 100 and 500 MB heaps, 100/1000 tenants, "
                             "tenant throughput and the profile are skipped")

    if "throughput" in steps:
        data["throughput"] = measures.throughput(pin, kinds, connections, duration, _log)
        ratio = measures.headline(data["throughput"])
        data["headline"] = ratio
        data["headline_text"] = "n/a" if ratio is None else f"{ratio:.2f}"
    if "allcores" in steps:
        pin_all = all_cores_pinning()
        _log(f"all cores: {pin_all.description}")
        data["all_cores"] = measures.all_cores(pin_all, [k for k in kinds if k not in ("b", "c")], all_connections,
                                               duration, _log, data.get("throughput"))
    if "apps" in steps:
        data["apps"] = apps.measure(pin, app_names, connections, duration, _log)
    if "proxy" in steps:
        data["proxy"] = proxy.measure(pin, connections, duration, _log)
    if "heap" in steps:
        sizes = [1, 200] if quick else [1, 10, 100, 200, 500]
        data["heap"] = measures.heap_growth(pin, sizes, 300 if quick else 1000, _log)
    if "tenants" in steps:
        counts = [1, 10] if quick else [c for c in (1, 10, 100, 1000) if c <= args.max_tenants]
        data["tenants"] = measures.tenants_scaling(pin, counts, None if quick else duration, _log,
                                                   reset_counts=[c for c in counts if c <= 100])
    if "rewind" in steps:
        data["rewind"] = rewind_cost.measure(pin, 200 if quick else 1000, _log)
    if "profile" in steps and not quick:
        try:
            data["cpu"] = measures.cpu_per_request(pin, duration, 64, _log)
            data["profile"] = measures.profile(pin, duration, 64, _log)
        except RuntimeError as exc:
            data["notes"].append(f"profile step failed: {exc}")
            _log(f"profile step failed: {exc}")

    data["elapsed_s"] = time.time() - started
    paths = report.write(data, __import__("pathlib").Path(args.out), stem)
    print(report.markdown(data, data["charts"], None if data["charts"] else "charts skipped"), end="")
    print(f"written: {', '.join(str(p) for p in paths)}")
    print(f"took {data['elapsed_s']:.0f} s")
    print(f"headline: sandboxed/unsandboxed throughput at -c64 = {data.get('headline_text', 'n/a')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
