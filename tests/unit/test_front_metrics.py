"""The front end's metrics area: the C writer and the supervisor's reader agree.

A program compiled against wire/front_metrics.h prints the layout Python
assumes; a tiny program linked with csrc/front/metrics.c counts into an area
FrontMetrics made, and the collector's exposition shows those counts; the
real mayflyd-front maps the area given with --metrics-fd (zeroing in_flight)
and refuses one whose head is wrong.
"""
from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest

from mayflyd.supervisor import front_metrics
from mayflyd.supervisor.front_metrics import FrontMetrics, FrontMetricsCollector
from tests.unit.test_front_http import CFLAGS, REPO, _build, c_printed, pytestmark  # noqa: F401  (skips without llhttp)

# Each argument a command: kind:thread:slot:values..., applied in order.
WRITER = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "base/log.h"
#include "front/metrics.h"

int main(int argc, char **argv)
{
    if (!mf_metrics_open(atoi(argv[1]), (unsigned)atoi(argv[2]))) {
        mf_warn_last();
        return 2;
    }
    for (int i = 3; i < argc; i++) {
        char kind = argv[i][0];
        unsigned long long v[6] = {0};
        char *p = argv[i] + 1;
        for (int k = 0; k < 6 && *p == ':'; k++)
            v[k] = strtoull(p + 1, &p, 10);
        struct mf_metrics_record *r = mf_metrics_record((unsigned)v[0], (uint32_t)v[1]);
        if (r == NULL && kind != 'n') {
            fprintf(stderr, "no record %s\n", argv[i]);
            return 1;
        }
        switch (kind) {
        case 'a': mf_metrics_answered(r, (int)v[2], v[3], v[4] != 0, v[5] != 0); break;
        case 'l': mf_metrics_limit(r, (enum mf_metrics_limit)v[2]); break;
        case 's': mf_metrics_sandbox(r, (uint32_t)v[2], (uint32_t)v[3], v[4] != 0); break;
        case 'i': mf_metrics_in_flight(r, (int)(long long)v[2]); break;
        case 'n': if (r != NULL) return 1; break; /* out of range: NULL */
        default: return 1;
        }
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("metrics-writer")
    (out / "writer.c").write_text(WRITER)
    subprocess.run(["gcc", *CFLAGS, "-Wall", "-Wextra", "-Werror", "-o", str(out / "writer"), str(out / "writer.c"),
                    str(REPO / "csrc" / "front" / "metrics.c"), str(REPO / "csrc" / "base" / "log.c")], check=True)
    return out / "writer"


@pytest.fixture(scope="module")
def front_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("front-metrics"), REPO / "csrc" / "front" / "main.c")


def write(writer: Path, area: FrontMetrics, threads: int, *commands: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(writer), str(area.fd()), str(threads), *commands], pass_fds=(area.fd(),),
                          capture_output=True, text=True, timeout=10)


def test_layout_matches_the_c_header(tmp_path: Path) -> None:
    lines = ['printf("head %zu\\n", sizeof(struct mf_metrics_head));',
             'printf("record %zu\\n", sizeof(struct mf_metrics_record));',
             'printf("magic %s\\n", MF_METRICS_MAGIC);']
    for field in ("magic", "version", "threads", "slots", "record_size", "reserved"):
        lines.append(f'printf("head.{field} %zu %zu\\n", offsetof(struct mf_metrics_head, {field}), '
                     f'sizeof(((struct mf_metrics_head *)0)->{field}));')
    for field, _n in front_metrics.RECORD_FIELDS:
        lines.append(f'printf("record.{field} %zu %zu\\n", offsetof(struct mf_metrics_record, {field}), '
                     f'sizeof(((struct mf_metrics_record *)0)->{field}));')
    for name in ("DURATION_BOUNDS_US", "COST_BOUNDS_US", "PAGES_BOUNDS"):
        lines.append(f"{{ unsigned long long b[] = {{MF_METRICS_{name}}}; printf(\"{name}\");")
        lines.append(' for (size_t i = 0; i < sizeof(b) / sizeof(b[0]); i++) { printf(" %llu", b[i]); }')
        lines.append(' puts(""); }')
    for const in ("VERSION", "MAX_SLOTS", "MAX_THREADS"):
        lines.append(f'printf("{const} %llu\\n", (unsigned long long)MF_METRICS_{const});')
    for i, name in enumerate(("MAX_BODY", "REQUEST_TIMEOUT", "CONCURRENCY", "REQUEST_CPU", "MEMORY",
                              "MAX_RESPONSE", "QUEUE", "RESERVED")):
        lines.append(f'printf("limit{i} %d\\n", (int)MF_METRICS_LIMIT_{name});')
    out = c_printed(tmp_path, "wire/front_metrics.h", lines)

    assert int(out["head"]) == front_metrics.HEAD.size
    assert out["magic"].encode() == front_metrics.MAGIC
    offset = 0
    for field, code in zip(("magic", "version", "threads", "slots", "record_size", "reserved"),
                           ("8s", "I", "I", "I", "I", "Q"), strict=True):
        size = struct.calcsize("=" + code)
        assert out[f"head.{field}"] == f"{offset} {size}", field
        offset += size
    assert int(out["record"]) == front_metrics.RECORD_SIZE
    offset = 0
    for field, n in front_metrics.RECORD_FIELDS:
        assert out[f"record.{field}"] == f"{offset} {8 * n}", field
        offset += 8 * n
    assert out["DURATION_BOUNDS_US"] == " ".join(map(str, front_metrics.DURATION_BOUNDS_US))
    assert out["COST_BOUNDS_US"] == " ".join(map(str, front_metrics.COST_BOUNDS_US))
    assert out["PAGES_BOUNDS"] == " ".join(map(str, front_metrics.PAGES_BOUNDS))
    assert int(out["VERSION"]) == front_metrics.VERSION
    assert int(out["MAX_SLOTS"]) == front_metrics.MAX_SLOTS
    assert int(out["MAX_THREADS"]) == front_metrics.MAX_THREADS
    assert [int(out[f"limit{i}"]) for i in range(8)] == list(range(len(front_metrics.LIMITS)))


def test_the_collector_shows_what_the_c_writer_counted(writer: Path) -> None:
    area = FrontMetrics(threads=2, slots=8)
    try:
        done = write(writer, area, 2,
                     # shop (slot 3), on both threads
                     "a:0:3:200:80:1:0", "a:1:3:200:3000:1:0", "a:1:3:404:150:1:0",
                     "a:0:3:503:40000000:0:0", "a:0:3:413:120:0:1",
                     "l:0:3:0", "l:1:3:2", "l:1:3:2",
                     "s:0:3:30:0:0", "s:1:3:120000:7:1",
                     "i:0:3:1", "i:0:3:1", "i:1:3:1", "i:0:3:-1",
                     # blog (slot 5): one in flight on thread 1, and one thread 0 took back
                     "i:1:5:1", "i:0:5:-1",
                     # out of range: no record, nothing written
                     "n:2:0", "n:0:8")
        assert done.returncode == 0, done.stderr
        shop = area.snapshot(3)
        assert dict(shop.statuses) == {200: 2, 404: 1, 503: 1, 413: 1}
        assert shop.errors == 2 and shop.program_4xx == 1
        assert dict(shop.limits) == {"max_body": 1, "concurrency": 2}
        assert shop.duration_us.count == 5 and shop.duration_us.sum == 40003350
        assert shop.duration_us.buckets[0] == 1 and shop.duration_us.buckets[-1] == 1  # 80 us; 40 s: +inf
        assert shop.cost_us.count == 2 and shop.pages.count == 1 and shop.pages.sum == 7
        assert shop.in_flight == 2
        assert area.snapshot(5).in_flight == 0
        with pytest.raises(IndexError):
            area.snapshot(8)

        registry = CollectorRegistry()
        registry.register(FrontMetricsCollector(area, lambda: {"shop": 3, "blog": 5}))
        text = generate_latest(registry).decode()
        for line in ['mayflyd_requests_total{status="200",tenant="shop"} 2.0',
                     'mayflyd_requests_total{status="413",tenant="shop"} 1.0',
                     'mayflyd_request_errors_total{tenant="shop"} 2.0',
                     'mayflyd_request_errors_total{tenant="blog"} 0.0',
                     'mayflyd_request_duration_seconds_bucket{le="0.0001",tenant="shop"} 1.0',
                     'mayflyd_request_duration_seconds_bucket{le="0.00025",tenant="shop"} 3.0',
                     'mayflyd_request_duration_seconds_bucket{le="30.0",tenant="shop"} 4.0',
                     'mayflyd_request_duration_seconds_bucket{le="+Inf",tenant="shop"} 5.0',
                     'mayflyd_request_duration_seconds_count{tenant="shop"} 5.0',
                     'mayflyd_request_duration_seconds_sum{tenant="shop"} 40.00335',
                     'mayflyd_sandbox_cost_seconds_bucket{le="5e-05",tenant="shop"} 1.0',
                     'mayflyd_sandbox_cost_seconds_bucket{le="0.1",tenant="shop"} 1.0',
                     'mayflyd_sandbox_cost_seconds_bucket{le="+Inf",tenant="shop"} 2.0',
                     'mayflyd_rewound_pages_bucket{le="0.0",tenant="shop"} 0.0',
                     'mayflyd_rewound_pages_bucket{le="8.0",tenant="shop"} 1.0',
                     'mayflyd_limit_hits_total{limit="max_body",tenant="shop"} 1.0',
                     'mayflyd_limit_hits_total{limit="concurrency",tenant="shop"} 2.0',
                     'mayflyd_requests_in_flight{tenant="shop"} 2.0',
                     'mayflyd_requests_in_flight{tenant="blog"} 0.0']:
            assert line in text.splitlines(), line
        assert 'mayflyd_rewound_pages_count{tenant="blog"}' not in text  # it rewound nothing
        # A tenant no longer in the map has no series.
        registry = CollectorRegistry()
        registry.register(FrontMetricsCollector(area, lambda: {"blog": 5}))
        assert 'tenant="shop"' not in generate_latest(registry).decode()
    finally:
        area.close()


def test_the_writer_refuses_an_area_it_cannot_trust(writer: Path) -> None:
    area = FrontMetrics(threads=2, slots=4)
    try:
        done = write(writer, area, 3)  # records for 2 threads, 3 wanted
        assert done.returncode == 2 and "records for 2 threads, the front end runs 3" in done.stderr
    finally:
        area.close()


def start_front(binary: Path, fd: int, threads: int = 2) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(binary), "--listen", "127.0.0.1:0", "--threads", str(threads), "--allow-root",
                             "--metrics-fd", str(fd)],
                            pass_fds=(fd,), stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_the_front_end_opens_the_area_and_zeroes_in_flight(front_binary: Path, writer: Path) -> None:
    area = FrontMetrics(threads=2, slots=4)
    try:
        # What a front end that died left in flight.
        assert write(writer, area, 2, "i:0:1:1", "i:1:1:1", "i:1:3:1", "a:0:1:200:5:1:0").returncode == 0
        assert area.snapshot(1).in_flight == 2
        proc = start_front(front_binary, area.fd())
        try:
            assert proc.stdout is not None
            assert b"listening on" in proc.stdout.readline()
            assert area.snapshot(1).in_flight == 0 and area.snapshot(3).in_flight == 0
            assert area.snapshot(1).statuses == {200: 1}  # counters survive a restart
            # The front end closed its copy of the fd.
            assert not any(os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith("/memfd:mayflyd-front-metrics")
                           for fd in os.listdir(f"/proc/{proc.pid}/fd"))
        finally:
            proc.terminate()
            assert proc.wait(5) == 0
    finally:
        area.close()


def test_unused_slots_take_no_memory(front_binary: Path, writer: Path) -> None:
    """The whole area is 36 MiB for 2 threads; a front end that starts
    (zeroing in_flight) allocates only the pages that hold counts."""
    area = FrontMetrics(threads=2, slots=front_metrics.MAX_SLOTS)
    try:
        # Counts in the last slot of the last thread: at the very end of the file.
        assert write(writer, area, 2, f"i:1:{front_metrics.MAX_SLOTS - 1}:3").returncode == 0
        proc = start_front(front_binary, area.fd())
        try:
            assert proc.stdout is not None
            assert b"listening on" in proc.stdout.readline()
            assert area.snapshot(front_metrics.MAX_SLOTS - 1).in_flight == 0
            assert os.fstat(area.fd()).st_blocks * 512 <= 64 * 1024
        finally:
            proc.terminate()
            assert proc.wait(5) == 0
    finally:
        area.close()


@pytest.mark.parametrize("case", ["zeros", "fewer_threads", "not_a_file"])
def test_the_front_end_refuses_a_bad_area(front_binary: Path, case: str) -> None:
    expected = {"zeros": "not a metrics area (no MFMETRIC magic)",
                "fewer_threads": "records for 1 threads, the front end runs 2",
                "not_a_file": "not a metrics area"}[case]
    area = FrontMetrics(threads=1, slots=4)
    if case == "zeros":
        fd = os.memfd_create("zeros")
        os.ftruncate(fd, 1 << 20)
    elif case == "not_a_file":
        fd = os.open("/dev/null", os.O_RDWR)
    else:
        fd = os.dup(area.fd())
    try:
        proc = start_front(front_binary, fd)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == 2, err
        assert "--metrics-fd" in err.decode() and expected in err.decode()
    finally:
        os.close(fd)
        area.close()
