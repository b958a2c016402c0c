"""The channel a reset worker could have to the front end, measured alone:
one request's round trip (300 bytes in, 200 out) in each shape, between two
processes pinned to one core (as the benchmark pins servers), then to two.

    python -m bench.channel_costs [--n 200000] [--runs 5]

Compiles bench/channel_costs.c with gcc into a temp dir and prints a
Markdown table: wall time and CPU (user + system of every process) per
round trip, medians of the runs, and each shape's ratio to (a), today's
shape. The shapes are described in the C file.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

SOURCE = Path(__file__).with_name("channel_costs.c")
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Werror"]

# (row label, shape argument of the C program), (a) first: the ratios' base.
SHAPES = [
    ("a. socketpair per request, SCM_RIGHTS (today)", "pair"),
    ("a2. the same, second SCM_RIGHTS hop via a host", "pair-hop"),
    ("b. persistent SEQPACKET socket", "sock"),
    ("c. shared slot (memfd) + eventfd each way", "shm"),
    ("d. b + per-request socket checks", "sock-chk"),
    ("e. c + per-request shared-memory checks", "shm-chk"),
]


@dataclass(frozen=True)
class Figure:
    us: float
    cpu_us: float


def build(directory: Path) -> Path:
    binary = directory / "channel_costs"
    subprocess.run(["gcc", *CFLAGS, "-o", str(binary), str(SOURCE)], check=True)
    return binary


def run_once(binary: Path, shape: str, n: int, cores: tuple[int, int]) -> Figure:
    out = subprocess.run([str(binary), shape, str(n), str(cores[0]), str(cores[1])],
                         check=True, capture_output=True, text=True, timeout=600).stdout.split()
    if len(out) != 4 or out[0] != shape:
        raise RuntimeError(f"unexpected output of {shape}: {out}")
    if int(out[3]) != 0:
        raise RuntimeError(f"{shape}: {out[3]} checks saw a difference on an untouched channel")
    return Figure(float(out[1]), float(out[2]))


def measure(binary: Path, shape: str, n: int, runs: int, cores: tuple[int, int]) -> Figure:
    figures = [run_once(binary, shape, n, cores) for _ in range(runs)]
    return Figure(statistics.median(f.us for f in figures), statistics.median(f.cpu_us for f in figures))


def table(results: dict[str, dict[str, Figure]], placements: list[str]) -> str:
    head = "| shape |" + "".join(f" {p}: us | {p}: CPU us | {p}: ratio |" for p in placements)
    lines = [head, "|---|" + "---|---|---|" * len(placements)]
    for label, shape in SHAPES:
        cells = []
        for p in placements:
            f, base = results[p][shape], results[p][SHAPES[0][1]]
            cells.append(f" {f.us:.1f} | {f.cpu_us:.1f} | {f.us / base.us:.2f} |")
        lines.append(f"| {label} |" + "".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.channel_costs", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200000, help="round trips per run")
    parser.add_argument("--runs", type=int, default=5, help="runs per figure (the median is kept)")
    args = parser.parse_args(argv)
    if shutil.which("gcc") is None:
        print("gcc not found", file=sys.stderr)
        return 1
    placements = {"1 core": (0, 0)}
    if len(os.sched_getaffinity(0)) >= 2 and {0, 1} <= os.sched_getaffinity(0):
        placements["2 cores"] = (0, 1)
    with tempfile.TemporaryDirectory(prefix="channel_costs.") as tmp:
        binary = build(Path(tmp))
        results = {p: {shape: measure(binary, shape, args.n, args.runs, cores) for _, shape in SHAPES}
                   for p, cores in placements.items()}
    print(f"N={args.n} round trips, median of {args.runs} runs; ratio: wall time to a's")
    print()
    print(table(results, list(placements)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
