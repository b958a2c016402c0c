"""The rewind step of the benchmark (bench/rewind_cost.py) and the page
classifier of bench/request_pages.py: their pure parts."""
from __future__ import annotations

from collections import Counter

import pytest
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import generate_latest

from bench import report, request_pages, rewind_cost
from bench.request_pages import PAGE, Landmarks, ObjectIndex, Symbols

MAPS = """\
55d0c0000000-55d0c0001000 r--p 00000000 fd:01 11 /opt/py/bin/python3.11
55d0c0002000-55d0c0003000 rw-p 00001000 fd:01 11 /opt/py/bin/python3.11
55d0c1000000-55d0c1100000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 r--p 00000000 fd:01 12 /opt/py/lib/libpython3.11.so.1.0
7f0000200000-7f0000210000 rw-p 00100000 fd:01 12 /opt/py/lib/libpython3.11.so.1.0
7f0000210000-7f0000260000 rw-p 00000000 00:00 0
7f0000300000-7f0000301000 rw-p 00003000 fd:01 13 /opt/py/lib/python3.11/_mayfly.cpython-311-x86_64-linux-gnu.so
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
7ffd00100000-7ffd00102000 r-xp 00000000 00:00 0                          [vdso]
7ffd00200000-7ffd00201000 rw-s 00000000 00:05 9 /memfd:slot (deleted)
"""


def test_maps_are_labelled_and_only_writable_private_ones_tracked() -> None:
    maps = request_pages.parse_maps(MAPS)
    labels = [m.label for m in maps]
    assert labels[:3] == ["python executable", "python executable", "[heap] (glibc brk)"]
    assert labels[3] == request_pages.ANONYMOUS
    assert labels[4] == labels[5] == "libpython .data/.bss"
    assert labels[7:9] == ["_mayfly .so data", "[stack]"]
    assert [m.tracked for m in maps] == [False, True, True, True, False, True, True, True, True, False, False]


def test_a_library_bss_merged_with_an_arena_is_split_by_the_library_extent() -> None:
    maps = request_pages.parse_maps(MAPS)
    # libpython's image ends 0x12f800 past its base (0x7f0000100000): its
    # .bss is the first 0x20000 of the anonymous mapping after it.
    spans = {"/opt/py/lib/libpython3.11.so.1.0": (0, 0x12F800)}
    extents = request_pages.library_extents(maps, lambda path: spans.get(path))
    assert extents == [(0x7F0000100000, 0x7F0000230000, "libpython .data/.bss")]
    assert request_pages.label_of(maps, extents, 0x7F0000228000) == "libpython .data/.bss"
    assert request_pages.label_of(maps, extents, 0x7F0000230000) == request_pages.ANONYMOUS
    assert request_pages.label_of(maps, extents, 0x7F0000000000) == request_pages.ANONYMOUS
    assert request_pages.label_of(maps, extents, 0x1000) == "unmapped"


def test_symbols_overlapping_a_page_include_a_large_one_that_began_earlier() -> None:
    symbols = Symbols(starts=[0x1000, 0x9000, 0x9800], ends=[0x80000, 0x9010, 0x9810],
                      names=["_PyRuntime", "PyLong_Type", "usedpools"])
    assert symbols.in_range(0x9000, 0xA000) == ["_PyRuntime", "usedpools", "PyLong_Type"]
    assert symbols.in_range(0x90000, 0x91000) == []


def _index() -> ObjectIndex:
    return ObjectIndex(starts=[0x10000, 0x10100, 0x20000], ends=[0x10100, 0x10180, 0x20040],
                       groups=["code objects", "strings", "functions, methods"], mortal=[True, True, False])


@pytest.mark.parametrize(("page", "label", "changed", "cause", "objects"), [
    (0x7000, "[stack]", [], request_pages.FRAMES, ""),
    (0x30000, request_pages.ANONYMOUS, [], request_pages.FRAMES, ""),         # the data stack chunk
    (0x40000, "libpython .data/.bss", [], request_pages.TSTATE, ""),
    (0x10000, request_pages.ANONYMOUS, [0x10010], request_pages.CODE, "code objects"),
    (0x10000, request_pages.ANONYMOUS, [0x10108], request_pages.CHANGED, "strings"),
    (0x10000, request_pages.ANONYMOUS, [], request_pages.REFCOUNT, "code objects"),
    (0x20000, request_pages.ANONYMOUS, [], request_pages.NEW, ""),            # immortal objects only
    (0x50000, "[heap] (glibc brk)", [0x50008], request_pages.NEW, ""),
    (0x60000, "other .so data", [], request_pages.CLIB, ""),
])
def test_page_causes(page: int, label: str, changed: list[int], cause: str, objects: str) -> None:
    marks = Landmarks(tstate=0x40100, interp=0x80000, datastack=(0x30000, 0x34000))
    symbols = Symbols([0x40000], [0x40000 + PAGE], ["_PyRuntime"])
    assert request_pages.page_cause(page, label, changed, _index(), symbols, marks) == (cause, objects)


def test_page_table_has_totals_and_who_wrote_first() -> None:
    rows = [{"cause": "a", "mapping": "x"}, {"cause": "a", "mapping": "y"}, {"cause": "b", "mapping": "x"}]
    text = request_pages.table(rows, "cause", "mapping", "cause")
    assert text.splitlines()[0] == "| cause | x | y | total |"
    assert text.splitlines()[-1] == "| total | 2 | 1 | 3 |"
    assert request_pages.who(5, [{1}, {5}, {5, 6}]) == request_pages.PHASES[1]
    assert request_pages.who(9, [{1}, {5}]) == request_pages.PHASES[-1]
    assert Counter(r["cause"] for r in rows) == {"a": 2, "b": 1}


def _metrics(costs: list[float], pages: list[int]) -> str:
    registry = CollectorRegistry()
    cost = Histogram("mayflyd_sandbox_cost_seconds", "cost", ["tenant"], registry=registry, buckets=(0.0001,))
    rewound = Histogram("mayflyd_rewound_pages", "pages", ["tenant"], registry=registry, buckets=(64,))
    for c, p in zip(costs, pages, strict=True):
        cost.labels("t0").observe(c)
        rewound.labels("t0").observe(p)
    cost.labels("t1").observe(1.0)
    return generate_latest(registry).decode()


def test_one_request_is_the_difference_of_two_reads_of_the_metrics() -> None:
    before = rewind_cost.totals(_metrics([0.000120, 0.000130], [120, 121]), "t0")
    after = rewind_cost.totals(_metrics([0.000120, 0.000130, 0.000125], [120, 121, 119]), "t0")
    assert before.count == 2 and after.count == 3
    assert rewind_cost.one_request(before, after) == (pytest.approx(125.0), 119)
    assert rewind_cost.one_request(before, before) is None
    assert rewind_cost.one_request(rewind_cost.Totals(0, 0.0, 0.0), after) is None  # three at once


def test_summary_of_per_request_samples() -> None:
    samples = [(float(us), 100.0 + us % 3) for us in range(1, 101)]
    summary = rewind_cost.summarize(samples)
    assert summary["requests"] == 100
    assert summary["median_us"] == 50.5 and summary["p99_us"] == 99.0
    assert summary["pages_median"] == 101.0 and summary["pages_p99"] == 102.0
    assert rewind_cost.percentile([3.0], 99) == 3.0
    assert rewind_cost.summarize([]) == {"requests": 0}


def test_the_report_labels_the_rewind_section_with_ratios_to_the_seed() -> None:
    programs = [{"program": "seed", "requests": 10, "median_us": 100.0, "p99_us": 300.0, "mean_us": 120.0,
                 "pages_median": 120.0, "pages_p99": 121.0, "answer_bytes_median": 76, "statuses": {"200": 10}},
                {"program": "router", "requests": 10, "median_us": 150.0, "p99_us": 400.0, "mean_us": 160.0,
                 "pages_median": 170.0, "pages_p99": 180.0, "answer_bytes_median": 42, "statuses": {"200": 10}}]
    density = {"one_worker": {"workers": 1, "pss_mb": 18.0}, "two_workers": {"workers": 2, "pss_mb": 30.0},
               "second_worker_mb": 12.0, "ratio": 30 / 18}
    text = "\n".join(report.rewind_section({"programs": programs, "density": density}))
    assert "## 6. The rewind per request (reset engine)" in text
    assert "| router | 10 | 150 | 400 | 160 | 170 | 180 | 1.50 | 42 | 200: 10 |" in text
    assert "the second worker adds 12.00 MiB; two workers / one = 1.67" in text
