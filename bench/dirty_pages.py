"""Microbenchmark of the dirty-page tracker (csrc/rewind/dirty_pages.c) through
mayflyd._mayfly.DirtyTracker, on one 32 MiB private anonymous region:

    python -m bench.dirty_pages [--rounds 200]

Medians over the rounds of: the first write to a write-protected page (net
of the same Python loop over unprotected pages), a collect with nothing
dirty, the one joined scan the rewind makes with nothing dirty (what its
walk of the page tables costs), and a full rewind cycle (write N distinct pages, scan, copy each
range back from a snapshot with ctypes.memmove, protect) for N = 10 and
100. Every figure except the per-write one includes the Python binding's
own overhead, printed as "binding call" (DirtyTracker.protect([]), which
parses its arguments and makes no syscall). Reference figures are those of
the throwaway prototype (docs/design.md section 5) and the tracker's targets.
"""
from __future__ import annotations

import argparse
import ctypes
import mmap
import statistics
import sys
import time
from collections.abc import Callable

from mayflyd import _mayfly as M  # bench/__init__.py finds it in a source checkout

PAGE = mmap.PAGESIZE
SIZE = 32 << 20
WRITES = 1000
STRIDE = 3  # distinct, non-adjacent pages: one region each, the worst case

# Reference figures in microseconds (docs/design.md section 5, and the tracker's targets).
REFERENCE = {"first write": 0.9, "empty collect": 10.0, "empty joined scan": 10.0, "cycle N=10": 27.0,
             "cycle N=100": 74.0}


def _median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000.0


def _time(fn: Callable[[], object]) -> int:
    start = time.perf_counter_ns()
    fn()
    return time.perf_counter_ns() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dirty_pages", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)

    tracker = M.DirtyTracker()
    region = mmap.mmap(-1, SIZE, flags=mmap.MAP_PRIVATE)
    view = memoryview(region)
    base = ctypes.addressof(ctypes.c_char.from_buffer(region))
    snapshot = ctypes.create_string_buffer(SIZE)
    snap = ctypes.addressof(snapshot)
    tracker.track(base, SIZE)
    offsets = [i * STRIDE * PAGE for i in range(WRITES)]

    def write(offs: list[int]) -> None:
        for off in offs:
            view[off] = 1

    # Populate the pages once, so every round measures the write-protect
    # fault on a present page, not the allocation of a zero page.
    write(offsets)
    tracker.collect()

    protected, unprotected, binding = [], [], []
    for _ in range(args.rounds):
        tracker.collect()
        protected.append(_time(lambda: write(offsets)))
        unprotected.append(_time(lambda: write(offsets)))
        binding.append(_time(lambda: tracker.protect([])))
    tracker.collect()

    empty = [_time(tracker.collect) for _ in range(args.rounds)]
    # What the rewind pays on every request for its one joined scan: the
    # kernel's walk of the region's page tables, nothing written.
    joined = [_time(lambda: tracker.scan(joined=True)) for _ in range(args.rounds)]

    cycles: dict[int, list[int]] = {}
    for n in (10, 100):
        offs = offsets[:n]

        def cycle() -> None:
            write(offs)
            ranges = tracker.scan()
            for s, e in ranges:
                ctypes.memmove(s, snap + (s - base), e - s)
            tracker.protect(ranges)

        cycles[n] = []
        for _ in range(args.rounds):
            cycles[n].append(_time(cycle))
            if len(tracker.scan()) != 0:
                raise SystemExit("a cycle left dirty pages behind")

    first_write = (statistics.median(protected) - statistics.median(unprotected)) / WRITES / 1000.0
    results = {
        "first write": first_write,
        "empty collect": _median_us(empty),
        "empty joined scan": _median_us(joined),
        "cycle N=10": _median_us(cycles[10]),
        "cycle N=100": _median_us(cycles[100]),
    }
    print(f"dirty-page tracker, 32 MiB region, median of {args.rounds} rounds")
    print(f"  binding call (protect([]), no syscall): {_median_us(binding):.2f} us; "
          f"included in every figure below except the first write")
    print(f"  Python write loop over {WRITES} unprotected pages: "
          f"{statistics.median(unprotected) / WRITES:.0f} ns per write (subtracted)")
    for name, value in results.items():
        unit = "us per write" if name == "first write" else "us"
        print(f"  {name:17s} {value:8.2f} {unit:13s} reference {REFERENCE[name]:6.1f} us  "
              f"ratio {value / REFERENCE[name]:.2f}")
    tracker.close()
    view.release()
    region.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
